"""The trainer program: `python -m llm_pipeline.train.trainer --config train.json`.

Run it under `deepspeed --num_gpus N --module ...`, `torchrun --nproc_per_node N -m ...`, or as a
single process. It reads token shards, trains with DeepSpeed ZeRO, checkpoints through the
storage root, resumes from the newest complete checkpoint, and at the end writes
`final/model.safetensors`, `final/model_config.json` and, last, `final/summary.json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time

import torch


def _set_up_world() -> tuple[int, int, bool]:
    """Environment for DeepSpeed; returns (rank, world_size, on_gpu)."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a hand-made world of one process
        from llm_pipeline.train.launch import free_port

        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), on_gpu


def _init_distributed(on_gpu: bool):
    import deepspeed

    if not on_gpu:
        # The CPU accelerator JIT-builds a shared-memory all-reduce op (used only for inference)
        # on every start: ~45 s cold. Patch the function on the module object DeepSpeed calls it from.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    return deepspeed


def lr_lambda(cfg):
    from llm_pipeline.train.schedule import lr_factor

    return lambda step: lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.lr_schedule, cfg.decay_fraction)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No decay on norms and other 1-D parameters.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(cfg, reporter) -> dict:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from llm_pipeline.storage import Storage
    from llm_pipeline.tokenize.shards import load_split_tokens
    from llm_pipeline.train.config import resolve_dtype
    from llm_pipeline.train.checkpoints import CheckpointStore, consolidated_fp32_state_dict, tag_for
    from llm_pipeline.train.data import TokenWindows
    from llm_pipeline.train.model import CausalLM

    rank, world, on_gpu = _set_up_world()
    deepspeed = _init_distributed(on_gpu)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if on_gpu else torch.device("cpu")
    is_rank0 = rank == 0
    t_start = time.time()

    run = Storage(cfg.run_uri)
    store = CheckpointStore(run)
    tokens, _ = load_split_tokens(Storage(cfg.shards_uri), "train", cfg.tokenizer_sha256 or None)
    loader = TokenWindows(tokens, cfg.seq_len, cfg.micro_batch, rank, world, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = CausalLM(cfg.model)
    if cfg.activation_checkpointing:
        from llm_pipeline.train.activation_checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    dtype = resolve_dtype(cfg.dtype, on_gpu)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg.deepspeed_config(world, dtype)
    )

    step, micro_step, tokens_seen, losses = 0, 0, 0, []
    resume_tag = store.newest()
    if resume_tag:
        if is_rank0:
            store.fetch(resume_tag)
        dist.barrier()
        if not is_rank0:
            store.fetch(resume_tag)
        _, client = engine.load_checkpoint(store.local_dir, tag=resume_tag)
        step, micro_step, tokens_seen = client["step"], client["micro_step"], client["tokens_seen"]
        losses = client["losses"]
        torch.set_rng_state(client["rng_state"])
        reporter.info(f"resumed from checkpoint {resume_tag}: step {step}, {tokens_seen} tokens seen")

    n_params = cfg.model.num_params()
    tokens_per_step = cfg.tokens_per_step(world)
    reporter.info(
        f"training {n_params / 1e6:.2f}M params ({cfg.model.flops_per_token(cfg.seq_len) / 1e6:.1f} MFLOP/token), ZeRO-{cfg.zero_stage}, {dtype}, world size {world} on "
        f"{'GPU' if on_gpu else 'CPU'}, {tokens_per_step} tokens/step, steps {step}->{cfg.steps}"
    )
    loop_start, loop_start_step = time.time(), step
    while step < cfg.steps:
        step_loss = torch.zeros((), device=device)
        for _ in range(cfg.grad_accum):
            x, y = loader.batch(micro_step)
            micro_step += 1
            _, loss = engine(x.to(device), y.to(device))
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().float() / cfg.grad_accum
        dist.all_reduce(step_loss)
        step += 1
        tokens_seen += tokens_per_step
        loss_value = step_loss.item() / world
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step}")
        losses.append([step, loss_value])
        if is_rank0 and (step % cfg.log_every == 0 or step == cfg.steps):
            elapsed = time.time() - loop_start
            tok_s = (step - loop_start_step) * tokens_per_step / max(elapsed, 1e-9)
            eta = (cfg.steps - step) * tokens_per_step / max(tok_s, 1e-9)
            lr = scheduler.get_last_lr()[0]
            reporter.info(f"step {step}/{cfg.steps} loss {loss_value:.4f} lr {lr:.2e} {tok_s:,.0f} tok/s elapsed {elapsed:.0f}s eta {eta:.0f}s")
            reporter.progress({"step": step, "steps": cfg.steps, "loss": loss_value, "lr": lr, "tokens_per_s": tok_s, "eta_s": eta})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            tag = tag_for(step)
            state = {"step": step, "micro_step": micro_step, "tokens_seen": tokens_seen, "losses": losses,
                     "rng_state": torch.get_rng_state()}
            engine.save_checkpoint(store.local_dir, tag=tag, client_state=state, save_latest=False)
            dist.barrier()
            if is_rank0:
                store.mark_complete(tag, {"step": step, "tokens_seen": tokens_seen, "time": time.time()})
                store.prune(cfg.keep_last)
            dist.barrier()

    wall = time.time() - loop_start
    summary = None
    if is_rank0:
        tag = tag_for(step)
        final = run.child("final")
        state_dict = consolidated_fp32_state_dict(store.local_dir, tag, cfg.zero_stage)
        local_final = os.path.join(store.local_dir, "_final")
        os.makedirs(local_final, exist_ok=True)
        save_file(state_dict, os.path.join(local_final, "model.safetensors"), metadata={"format": "pt"})
        final.put_file(os.path.join(local_final, "model.safetensors"), "model.safetensors")
        final.write_json("model_config.json", cfg.model.to_dict())
        trained_steps = step - loop_start_step
        summary = {
            "steps": step,
            "checkpoint": tag,
            "tokens_seen": tokens_seen,
            "final_loss": losses[-1][1],
            "losses": losses,
            "world_size": world,
            "zero_stage": cfg.zero_stage,
            "dtype": dtype,
            "num_params": n_params,
            "flops_per_token": cfg.model.flops_per_token(cfg.seq_len),
            "wall_time_s": time.time() - t_start,
            "train_loop_s": wall,
            "tokens_per_s": trained_steps * tokens_per_step / wall if trained_steps else 0.0,
            "resumed_from": resume_tag,
            "device": "cuda" if on_gpu else "cpu",
        }
        final.write_json("summary.json", summary)  # last: its presence means the run finished
        reporter.info(f"finished: {step} steps, final loss {summary['final_loss']:.4f}, {summary['tokens_per_s']:,.0f} tok/s")
    dist.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    from llm_pipeline.storage import open_uri
    from llm_pipeline.train.config import TrainConfig
    from llm_pipeline.train.progress import open_reporter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path or URI of the training config JSON")
    # The deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    with open_uri(args.config, "rb") as f:
        cfg = TrainConfig.from_dict(json.load(f))
    with open_reporter(int(os.environ.get("RANK", "0")) == 0) as reporter:
        train(cfg, reporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
