"""Baseline: a bare PyTorch training loop on synthetic batches (optionally DDP under torchrun).

Same model, batch and optimizer as our trainer; no data loading, checkpoints or logging.
Prints one JSON line: tokens/s over the timed steps.
"""

import argparse
import json
import time

import torch

from llm_pipeline.train.model_config import preset_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="demo")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ddp", action="store_true")
    a = p.parse_args()
    from llm_pipeline.train.model import CausalLM

    world, rank = 1, 0
    if a.ddp:
        torch.distributed.init_process_group("gloo")
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    torch.manual_seed(0)
    model = CausalLM(preset_config(a.preset, a.vocab))
    if a.ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, a.vocab, (a.micro_batch, a.seq_len + 1), generator=g) for _ in range(8)]
    start = time.perf_counter()
    for step in range(a.steps):
        if step == 1:  # the first step (allocations, thread pools warming up) is not timed: nor is ours (steady_tokens_per_s)
            start = time.perf_counter()
        b = batches[step % len(batches)]
        _, loss = model(b[:, :-1], b[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(json.dumps({"tokens_per_s": (a.steps - 1) * a.micro_batch * a.seq_len * world / elapsed, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
