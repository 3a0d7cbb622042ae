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


def _optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    hyper = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    if cfg.offload_optimizer:
        # The optimizer step runs on the CPU: DeepSpeed's vectorised CPU Adam (JIT-built on first
        # use, then cached under ~/.cache/torch_extensions) is the one ZeRO-Offload is built for.
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **hyper)
    return torch.optim.AdamW(groups, **hyper)


def _load_initial_weights(model: torch.nn.Module, cfg, reporter) -> None:
    """Continued pretraining: start from a published model, which must be this model with this tokenizer."""
    from llm_pipeline.evaluate.metrics import load_weights
    from llm_pipeline.publish.export import model_config_from_hf
    from llm_pipeline.storage import Storage
    from llm_pipeline.tokenize.bpe import tokenizer_hash

    folder = Storage(cfg.init_from_uri)
    published = model_config_from_hf(folder.read_json("config.json"))
    if published != cfg.model:
        raise ValueError(f"init_from model {folder.uri} is {published}, not the configured {cfg.model}")
    published_tokenizer = tokenizer_hash(folder.read_bytes("tokenizer.json").decode("utf-8"))
    if cfg.tokenizer_sha256 and published_tokenizer != cfg.tokenizer_sha256:
        raise ValueError(f"init_from model {folder.uri} uses tokenizer {published_tokenizer[:12]}, the shards "
                         f"tokenizer {cfg.tokenizer_sha256[:12]}: its embeddings would mean other tokens")
    load_weights(model, folder)
    reporter.info(f"initialised from {folder.uri}")


def train(cfg, reporter) -> dict:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from llm_pipeline.storage import Storage
    from llm_pipeline.tokenize.shards import load_tokens
    from llm_pipeline.train.config import resolve_dtype
    from llm_pipeline.train.checkpoints import CheckpointStore, consolidated_fp32_state_dict, crash_point, tag_for
    from llm_pipeline.train.data import TokenWindows
    from llm_pipeline.train.mfu import model_flops_utilization
    from llm_pipeline.train.model import CausalLM

    rank, world, on_gpu = _set_up_world()
    cfg.validate_for(world, on_gpu)  # before any process group: a bad combination fails fast, by name
    deepspeed = _init_distributed(on_gpu)
    is_rank0, local_rank = rank == 0, int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    t_start = time.time()

    run = Storage(cfg.run_uri)
    store = CheckpointStore(run)
    tokens, _ = load_tokens([Storage(uri) for uri in cfg.shards_uris], "train", cfg.tokenizer_sha256 or None, cfg.model.vocab_size)
    loader = TokenWindows(tokens, cfg.seq_len, cfg.micro_batch, rank, world, cfg.seed)

    torch.manual_seed(cfg.seed)
    model = CausalLM(cfg.model)
    if cfg.init_from_uri:  # a resumed run loads its checkpoint over these below
        _load_initial_weights(model, cfg, reporter)
    if cfg.activation_checkpointing:
        from llm_pipeline.train.activation_checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    optimizer = _optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    dtype = resolve_dtype(cfg.dtype, on_gpu)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=cfg.deepspeed_config(world, dtype, on_gpu)
    )
    grad_accum = cfg.grad_accum_for(world)

    step, micro_step, tokens_seen, losses = 0, 0, 0, []
    # Rank 0 picks the newest checkpoint that verifies; every node checks its own copy before loading.
    choice = [store.newest_intact(reporter.warning) if is_rank0 else None]
    dist.broadcast_object_list(choice, src=0)
    resume_tag = choice[0]
    if resume_tag:
        if local_rank == 0 and not is_rank0:  # once per node: a remote root's copy lands on every node's disk
            store.fetch(resume_tag)
            problems = store.verify(resume_tag)
            if problems:
                raise RuntimeError(f"checkpoint {resume_tag} fails verification on this node: {'; '.join(problems)}")
        dist.barrier()
        _, client = engine.load_checkpoint(store.local_dir, tag=resume_tag)
        step, micro_step, tokens_seen = client["step"], client["micro_step"], client["tokens_seen"]
        losses = client["losses"]
        torch.set_rng_state(client["rng_state"])
        reporter.info(f"resumed from checkpoint {resume_tag}: step {step}, {tokens_seen} tokens seen")

    n_params, flops_per_token = cfg.model.num_params(), cfg.model.flops_per_token(cfg.seq_len)
    tokens_per_step = cfg.tokens_per_step(world)
    offload = "".join(f" +{what} offload" for what, on in (("optimizer", cfg.offload_optimizer), ("param", cfg.offload_params)) if on)
    reporter.info(
        f"training {n_params / 1e6:.2f}M params ({flops_per_token / 1e6:.1f} MFLOP/token), ZeRO-{cfg.zero_stage}{offload}, {dtype}, world size {world} on "
        f"{'GPU' if on_gpu else 'CPU'}, {tokens_per_step} tokens/step ({grad_accum} micro-steps), steps {step}->{cfg.steps}"
    )
    loop_start, loop_start_step = time.time(), step
    while step < cfg.steps:
        step_loss = torch.zeros((), device=device)
        for _ in range(grad_accum):
            x, y = loader.batch(micro_step)
            micro_step += 1
            _, loss = engine(x.to(device), y.to(device))
            engine.backward(loss)
            engine.step()
            step_loss += loss.detach().float() / grad_accum
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
            if local_rank == 0:
                store.discard(tag)
            dist.barrier()
            engine.save_checkpoint(store.local_dir, tag=tag, client_state=state, save_latest=False)
            crash_point("after_save", rank, step)
            dist.barrier()
            if local_rank == 0:
                store.upload(tag, rank, after_file=lambda _name: crash_point("mid_upload", rank, step))
            dist.barrier()
            if is_rank0:
                store.mark_complete(tag, {"step": step, "tokens_seen": tokens_seen, "time": time.time()})
                store.prune(cfg.keep_last)
            dist.barrier()
            if local_rank == 0 and not is_rank0:
                store.prune_local()

    wall = time.time() - loop_start
    summary = None
    if is_rank0:
        tag = tag_for(step)
        final = run.child("final")
        store.fetch(tag)  # other nodes' shards, when they are not on a shared disk
        problems = store.verify(tag)  # consolidation unpickles them: only what this run wrote
        if problems:
            raise RuntimeError(f"final checkpoint {tag} fails verification: {'; '.join(problems)}")
        state_dict = consolidated_fp32_state_dict(store.local_dir, tag, cfg.zero_stage)
        local_final = os.path.join(store.local_dir, "_final")
        os.makedirs(local_final, exist_ok=True)
        save_file(state_dict, os.path.join(local_final, "model.safetensors"), metadata={"format": "pt"})
        final.put_file(os.path.join(local_final, "model.safetensors"), "model.safetensors")
        final.write_json("model_config.json", cfg.model.to_dict())
        trained_steps = step - loop_start_step
        tokens_per_s = trained_steps * tokens_per_step / wall if trained_steps else 0.0
        accelerator = torch.cuda.get_device_name(device) if on_gpu else "cpu"
        mfu = model_flops_utilization(flops_per_token * tokens_per_s / world, dtype, cfg.peak_tflops, accelerator) if on_gpu else None
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
            "flops_per_token": flops_per_token,
            "wall_time_s": time.time() - t_start,
            "train_loop_s": wall,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu,
            "accelerator": accelerator,
            "grad_accum": grad_accum,
            "resumed_from": resume_tag,
            "device": "cuda" if on_gpu else "cpu",
        }
        final.write_json("summary.json", summary)  # last: its presence means the run finished
        mfu_text = f", MFU {mfu:.1%}" if mfu is not None else ""
        reporter.info(f"finished: {step} steps, final loss {summary['final_loss']:.4f}, {tokens_per_s:,.0f} tok/s{mfu_text}")
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
