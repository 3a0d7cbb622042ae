"""The trainer program: `python -m llm_pipeline.train.trainer --config train.json`.

Run it under `deepspeed --num_gpus N --module ...`, `torchrun --nproc_per_node N -m ...`, or as a
single process. It reads token shards, trains with DeepSpeed ZeRO, checkpoints through the
storage root, resumes from the newest complete checkpoint, and at the end writes
`final/model.safetensors`, `final/model_config.json` and, last, `final/summary.json`.

The run in named steps: `build` (world, data, the checkpoint to resume, model, engine), `resume`,
`train_step` (one optimizer step), `checkpoints.save` (the save protocol), `checkpoints.export_final`,
`finish` (the summary). A checkpoint saved at another world size resumes through DeepSpeed's
universal checkpoint format; the data position is counted in global samples, so no sample is
repeated or skipped.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.ops.adam import DeepSpeedCPUAdam

from llm_pipeline.faults import crash_point, spike_factor
from llm_pipeline.storage.folders import Storage, bounded, read_named_json_object
from llm_pipeline.tokenize.bpe import tokenizer_hash
from llm_pipeline.train import checkpoints
from llm_pipeline.train.activation_checkpointing import apply_activation_checkpointing
from llm_pipeline.train.checkpoints import CheckpointStore
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.data import DataMixture, MicroBatches, Prefetcher, ShardError, TokenWindows
from llm_pipeline.train.hardware import accelerator_name, device_for, flash_attention_problem, on_gpu, peak_rss_bytes, resolve_dtype
from llm_pipeline.train.hf_config import model_config_from_hf
from llm_pipeline.train.launch import free_port
from llm_pipeline.train.mfu import model_flops_utilization
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.progress import open_reporter
from llm_pipeline.train.schedule import lr_factor
from llm_pipeline.train.step_clock import StepClock
from llm_pipeline.train.summary import Rollback, TrainSummary
from llm_pipeline.train.token_store import TokenCache, open_split
from llm_pipeline.train.tracking import Guarded, NoTracker, Tracker, TrackerError, check_reachable, open_tracker
from llm_pipeline.train.validation import ValidationSet, validate, validation_set
from llm_pipeline.train.weights import load_weights


@dataclass
class Training:
    """One rank's run: what `build` made and the progress that checkpoints carry."""

    cfg: TrainConfig
    rank: int
    local_rank: int
    world: int
    gpu: bool
    dtype: str
    device: torch.device
    engine: Any  # deepspeed.DeepSpeedEngine (DeepSpeed has no type information)
    scheduler: Any
    loader: MicroBatches
    store: CheckpointStore
    resume_tag: str | None = None  # the checkpoint to load (chosen before the engine: its format depends on it)
    resume_universal: bool = False  # saved at another world size: load its universal conversion
    step: int = 0
    samples_seen: int = 0  # global samples drawn: the loader's whole state, the same on any world size
    tokens_seen: int = 0
    losses: list = field(default_factory=list)  # [step, loss averaged over ranks], as far as synced
    pending: list = field(default_factory=list)  # (step, this rank's loss as a device tensor) not yet synced
    validations: list = field(default_factory=list)  # [step, loss, bits per byte or None]
    best: list | None = None  # [validation loss, checkpoint tag] of the best validation, with keep_best
    rollbacks: list = field(default_factory=list)  # Rollback records, as dicts
    resumed_from: str | None = None
    attention_problem: str | None = None  # why flash attention cannot run here; None: it does
    step_host_ms: dict = field(default_factory=dict)
    tracker: Tracker = field(default_factory=NoTracker)  # rank 0's; the others' log nothing

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def client_state(self) -> dict:
        sync_losses(self)
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "losses": self.losses,
            "validations": self.validations,
            "best": self.best,
            "rollbacks": self.rollbacks,
            "rng_state": torch.get_rng_state(),
        }


def _set_up_world(gpu: bool) -> tuple[int, int, int]:
    """Environment for DeepSpeed; returns (rank, local_rank, world_size)."""
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # a hand-made world of one process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    return int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])


def _init_distributed(gpu: bool) -> None:
    if not gpu:
        # The CPU accelerator JIT-builds a shared-memory all-reduce op (used only for inference)
        # on every start: ~45 s cold. Patch the function on the module object DeepSpeed calls it from.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # type: ignore[attr-defined]
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")


def lr_lambda(cfg: TrainConfig):
    return lambda step: lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.lr_schedule, cfg.decay_fraction)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No decay on norms and other 1-D parameters.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(cfg: TrainConfig, model: torch.nn.Module, gpu: bool) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    hyper: dict[str, Any] = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    if cfg.offload_optimizer:
        # The optimizer step runs on the CPU: DeepSpeed's vectorised CPU Adam (JIT-built on first
        # use, then cached under ~/.cache/torch_extensions) is the one ZeRO-Offload is built for.
        return DeepSpeedCPUAdam(groups, adamw_mode=True, **hyper)
    # On CUDA, one fused kernel for the whole step instead of a dozen per parameter.
    return torch.optim.AdamW(groups, fused=gpu, **hyper)


def _data(cfg: TrainConfig, rank: int, world: int) -> MicroBatches:
    """Every source's train split, memory-mapped (a rank holds the pages it reads, not the split;
    train/token_store.py), mixed by the config's weights."""
    sources, weights = [], []
    for i, (name, weight, uris) in enumerate(cfg.data_sources()):
        tokens, _ = open_split(
            [Storage(uri) for uri in uris], "train", TokenCache.of(cfg), cfg.tokenizer_sha256 or None, cfg.model.vocab_size
        )
        sources.append(TokenWindows(tokens, cfg.seq_len, cfg.seed, i, name))
        weights.append(weight)
    return MicroBatches(DataMixture(sources, weights, cfg.seed), cfg.micro_batch, rank, world)


def _checkpoint_to_resume(store: CheckpointStore, rank: int, local_rank: int, world: int, reporter) -> tuple[str | None, bool]:
    """The newest checkpoint that verifies (rank 0 picks it, every node checks its own copy), and whether
    it was converted to DeepSpeed's universal format (saved at another world size)."""
    choice: list[Any] = [None, 0]
    if rank == 0:
        tag = store.newest_intact(reporter.warning)
        choice = [tag, checkpoints.saved_partitions(store, tag)] if tag else choice
    dist.broadcast_object_list(choice, src=0)
    tag, saved_world = choice
    if not tag:
        return None, False
    if local_rank == 0 and rank != 0:  # once per node: a remote root's copy lands on every node's disk
        store.fetch(tag)
        problems = store.verify(tag)
        if problems:
            raise RuntimeError(f"checkpoint {tag} fails verification on this node: {'; '.join(problems)}")
    if saved_world in (0, world):
        dist.barrier()
        return tag, False
    reporter.info(
        f"checkpoint {tag} was saved at world size {saved_world}, resuming at {world}: converting it to "
        "DeepSpeed's universal checkpoint format"
    )
    error = None
    if rank == 0 or (store.mirrored and local_rank == 0):  # once per disk
        try:
            checkpoints.to_universal(store, tag)
        except RuntimeError as e:
            error = str(e)
    errors = [None] * world
    dist.all_gather_object(errors, error)  # every rank stops, before any work, if a conversion failed
    if any(errors):
        raise RuntimeError(next(e for e in errors if e))
    return tag, True


def _load_initial_weights(model: CausalLM, cfg: TrainConfig, reporter) -> None:
    """Continued pretraining: start from a published model, which must be this model with this tokenizer."""
    folder = Storage(cfg.init_from_uri)
    published = model_config_from_hf(folder.read_json("config.json"))
    if published != cfg.model:
        raise ValueError(f"init_from model {folder.uri} is {published}, not the configured {cfg.model}")
    published_tokenizer = tokenizer_hash(folder.read_bytes("tokenizer.json").decode("utf-8"))
    if cfg.tokenizer_sha256 and published_tokenizer != cfg.tokenizer_sha256:
        raise ValueError(
            f"init_from model {folder.uri} uses tokenizer {published_tokenizer[:12]}, the shards "
            f"tokenizer {cfg.tokenizer_sha256[:12]}: its embeddings would mean other tokens"
        )
    load_weights(model, folder)
    reporter.info(f"initialised from {folder.uri}")


def build(cfg: TrainConfig, reporter) -> Training:
    """The world, this rank's data, the model and the DeepSpeed engine, from the config alone."""
    gpu = on_gpu()
    rank, local_rank, world = _set_up_world(gpu)
    # Before any process group: a bad combination fails fast, by name. The ranks sharing this node's
    # devices and memory: LOCAL_WORLD_SIZE where the launcher says (torchrun, Ray Train), else all.
    cfg.validate_for(world, gpu, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    _init_distributed(gpu)
    loader = _data(cfg, rank, world)
    store = CheckpointStore(Storage(cfg.run_uri))
    resume_tag, resume_universal = _checkpoint_to_resume(store, rank, local_rank, world, reporter)

    torch.manual_seed(cfg.seed)
    model = CausalLM(cfg.model)
    if cfg.init_from_uri:  # a resumed run loads its checkpoint over these
        _load_initial_weights(model, cfg, reporter)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    optimizer = _optimizer(cfg, model, gpu)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    dtype = resolve_dtype(cfg.dtype, gpu)
    ds_config = cfg.deepspeed_config(world, dtype, gpu)
    if resume_universal:
        ds_config["checkpoint"] = {"load_universal": True}
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if cfg.compile:
        # DeepSpeed's own compile keeps the module's parameter names (checkpoints stay loadable without it).
        engine.compile()
    return Training(
        cfg,
        rank,
        local_rank,
        world,
        gpu,
        dtype,
        device_for(local_rank, gpu),
        engine,
        scheduler,
        loader,
        store,
        resume_tag,
        resume_universal,
    )


def resume(training: Training, reporter) -> None:
    """Load the checkpoint `build` chose, if any."""
    tag = training.resume_tag
    if not tag:
        return
    folder = checkpoints.universal_dir(training.store) if training.resume_universal else training.store.local_dir
    _restore(training, folder, tag)
    training.resumed_from = tag
    if training.resume_universal:
        _repair_universal_optimizer_state(getattr(training.engine.optimizer, "optimizer", training.engine.optimizer), training.cfg)
        dist.barrier()  # every rank has loaded: the converted copy is no longer needed
        if training.local_rank == 0:
            shutil.rmtree(os.path.join(folder, tag), ignore_errors=True)
    reporter.info(
        f"resumed from checkpoint {tag}: step {training.step}, {training.tokens_seen} tokens seen, sample {training.samples_seen}"
    )


def _restore(training: Training, folder: str, tag: str) -> dict:
    """The engine and the run's own state as checkpoint `tag` holds them; its client state."""
    _, client = training.engine.load_checkpoint(folder, tag=tag)
    training.step, training.tokens_seen, training.losses = client["step"], client["tokens_seen"], client["losses"]
    training.samples_seen = client["samples_seen"]
    # Checkpoints written before validation and rollbacks existed hold none of them.
    training.validations, training.best, training.rollbacks = client.get("validations", []), client.get("best"), client.get("rollbacks", [])
    training.pending.clear()
    torch.set_rng_state(client["rng_state"])
    return client


def _repair_universal_optimizer_state(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
    """Two slips of DeepSpeed 0.19's ZeRO-3 universal load, found by comparing with an uninterrupted run:
    it copies the first parameter group's hyperparameters to every group (the norms, which have no
    weight decay, would be decayed), and it gives every group the same `step` tensor, which AdamW
    increments in place once per group (bias corrections then run ahead). Harmless for other stages."""
    for group, weight_decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
        group["weight_decay"] = weight_decay
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def train_step(training: Training, batches: Prefetcher, clock: StepClock) -> None:
    """One optimizer step (grad_accum micro-steps). Nothing in it waits for the device: the loss stays a
    device tensor until `sync_losses`, at the logging interval."""
    grad_accum = training.cfg.grad_accum_for(training.world)
    step_loss = torch.zeros((), device=training.device)
    for _ in range(grad_accum):
        first = training.samples_seen
        x, y = batches.take(first)
        training.samples_seen += training.loader.samples_per_micro_step
        clock.lap("data")
        _, loss = training.engine(x.to(training.device, non_blocking=True), y.to(training.device, non_blocking=True))
        loss = loss * spike_factor(first, training.samples_seen)  # 1 outside the divergence tests
        clock.lap("forward")
        training.engine.backward(loss)
        clock.lap("backward")
        training.engine.step()
        clock.lap("optimizer")
        step_loss += loss.detach().float() / grad_accum
    training.step += 1
    training.tokens_seen += training.cfg.tokens_per_step(training.world)
    training.pending.append((training.step, step_loss))


SPIKE_WINDOW = 20  # steps whose mean loss a step is compared with


class TrainingStopped(RuntimeError):
    """The run stopped itself (a divergence it does not roll back from); the message says why."""


class Divergence(Exception):
    def __init__(self, step: int, loss: float, why: str):
        super().__init__(f"training diverged at step {step}: loss {loss:.4g} ({why})")
        self.step, self.loss, self.why = step, loss, why


def sync_losses(training: Training) -> float | None:
    """The pending steps' losses averaged over ranks, in one collective; the last one. Every rank calls it
    at the same steps (the logging interval, checkpoints, the end), so every rank sees a divergence
    (a non-finite loss, or a spike over `spike_factor` times the running mean) at the same step."""
    if not training.pending:
        return training.losses[-1][1] if training.losses else None
    steps = [step for step, _ in training.pending]
    values = torch.stack([loss for _, loss in training.pending])
    training.pending.clear()
    if training.world > 1:
        dist.all_reduce(values)
    factor = training.cfg.spike_factor
    for step, loss in zip(steps, (values / training.world).tolist()):
        recent = [value for _, value in training.losses[-SPIKE_WINDOW:]]
        mean = sum(recent) / len(recent) if recent else 0.0
        if not math.isfinite(loss):
            raise Divergence(step, loss, "not a finite number")
        if factor and len(recent) >= 5 and loss > factor * mean:
            raise Divergence(
                step, loss, f"{loss / mean:.1f} times the mean of the {len(recent)} steps before it, over spike_factor {factor:g}"
            )
        training.losses.append([step, loss])
    return training.losses[-1][1]


def roll_back(training: Training, divergence: Divergence, reporter) -> None:
    """Resume from the newest complete checkpoint (saved after its losses were checked) and skip every
    sample drawn since it: the data position jumps past them, so a resume later, from this checkpoint
    or a newer one, skips the same samples."""
    cfg = training.cfg
    tag = training.store.newest()
    if cfg.on_divergence != "rollback" or tag is None or len(training.rollbacks) >= cfg.max_rollbacks:
        why = (
            "on_divergence is stop"
            if cfg.on_divergence != "rollback"
            else "no checkpoint to roll back to yet"
            if tag is None
            else f"max_rollbacks ({cfg.max_rollbacks}) reached"
        )
        raise TrainingStopped(f"{divergence}; stopped: {why}") from None
    skip_end = training.samples_seen
    dist.barrier()
    client = _restore(training, training.store.local_dir, tag)
    skipped = [client["samples_seen"], skip_end]
    training.samples_seen = skip_end
    training.rollbacks.append(
        {"step": divergence.step, "loss": divergence.loss, "why": divergence.why, "resumed_from": tag, "skipped_samples": skipped}
    )
    reporter.warning(
        f"{divergence}; rolled back to checkpoint {tag} (step {training.step}), skipping samples {skipped[0]:,}-{skipped[1]:,} "
        f"(rollback {len(training.rollbacks)} of at most {cfg.max_rollbacks})"
    )


def train(cfg: TrainConfig, reporter) -> TrainSummary | None:
    """The whole run; rank 0 returns the summary it wrote last (None on other ranks)."""
    t_start = time.time()
    check_reachable(cfg.tracker, cfg.tracker_uri)  # every rank, before any work: a tracker that is not there fails the run now
    training = build(cfg, reporter)
    resume(training, reporter)
    if training.is_rank0:
        tracker = open_tracker(cfg.tracker, cfg.tracker_uri, cfg.experiment, Storage(cfg.run_uri), cfg.tracker_tags, cfg.run_key())
        training.tracker = Guarded(tracker, reporter.warning)
        training.tracker.log_params(tracker_params(cfg, training.world))
        if tracker.run.link:
            reporter.info(f"curves: {tracker.run.link}")
    tokens_per_step = cfg.tokens_per_step(training.world)
    offload = "".join(f" +{what} offload" for what, on in (("optimizer", cfg.offload_optimizer), ("param", cfg.offload_params)) if on)
    reporter.info(
        f"training {cfg.model.num_params() / 1e6:.2f}M params ({cfg.model.flops_per_token(cfg.seq_len) / 1e6:.1f} MFLOP/token), "
        f"ZeRO-{cfg.zero_stage}{offload}, {training.dtype}{', compiled' if cfg.compile else ''}, world size {training.world} on {'GPU' if training.gpu else 'CPU'}, {tokens_per_step} "
        f"tokens/step ({cfg.grad_accum_for(training.world)} micro-steps), steps {training.step}->{cfg.steps}"
    )
    # On a GPU in bf16 PyTorch's SDPA runs flash attention; anything else is named (it falls back, slower).
    attention_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training.dtype, torch.float32)
    training.attention_problem = flash_attention_problem(training.device, attention_dtype, cfg.model.head_dim)
    if training.attention_problem and training.gpu:
        reporter.warning(f"flash attention is not available here, attention runs a slower kernel: {training.attention_problem}")
    vset = _validation_set(training, reporter)
    loop_start, loop_start_step = time.time(), training.step
    steady_s, steady_steps = 0.0, 0  # step time after this launch's first step (compilation, warm-up) without saves
    batches, clock = Prefetcher(training.loader, training.samples_seen, pin=training.gpu), StepClock()
    try:
        while training.step < cfg.steps:
            step_start = time.perf_counter()
            clock.restart()
            try:
                train_step(training, batches, clock)
                last = training.step == cfg.steps
                if training.step % cfg.log_every == 0 or last:
                    loss = sync_losses(training)
                    clock.lap("loss_sync")
                    if training.is_rank0 and loss is not None:
                        _report(training, reporter, loss, loop_start, loop_start_step, clock)
                    clock.lap("report")
                if training.step > loop_start_step + 1:
                    steady_s, steady_steps = steady_s + time.perf_counter() - step_start, steady_steps + 1
                new_best = False
                if vset is not None and (training.step % cfg.eval_every == 0 or last):
                    new_best = _validate(training, vset, reporter)
                    clock.lap("validation")
                if new_best or training.step % cfg.checkpoint_every == 0 or last:
                    _save(training)
                    clock.lap("checkpoint")
            except Divergence as divergence:
                roll_back(training, divergence, reporter)
    finally:
        batches.close()
    training.step_host_ms = clock.per_step_ms(training.step - loop_start_step)
    loop_s = time.time() - loop_start
    # Each rank's peak memory, for the summary: the token store keeps it flat as the data grows.
    peak_rss = [0] * training.world
    dist.all_gather_object(peak_rss, peak_rss_bytes())
    summary = None
    if training.is_rank0:
        final = Storage(cfg.run_uri).child("final")
        checkpoints.export_final(training.store, exported_tag(training), cfg.zero_stage, cfg.model, final)
        steady = steady_steps * tokens_per_step / steady_s if steady_steps else None
        summary = finish(training, final, loop_s, training.step - loop_start_step, time.time() - t_start, peak_rss, steady)
        reporter.info(
            f"finished: {training.step} steps, final loss {summary.final_loss:.4f}, {summary.tokens_per_s:,.0f} tok/s"
            + (f", MFU {summary.mfu:.1%}" if summary.mfu is not None else "")
        )
        training.tracker.close()
    dist.barrier()
    return summary


def tracker_params(cfg: TrainConfig, world: int) -> dict[str, object]:
    """The run's settings as the tracker's parameters: the model's dimensions as model.<name>."""
    params: dict[str, object] = dict(cfg.model_dump(mode="json", exclude={"model", "tracker_tags"}))
    params.update({f"model.{k}": v for k, v in cfg.model.model_dump(mode="json").items()})
    params.update(world_size=world, num_params=cfg.model.num_params(), run_key=cfg.run_key())
    return params


def _report(training: Training, reporter, loss: float, loop_start: float, loop_start_step: int, clock: StepClock) -> None:
    cfg, tokens_per_step = training.cfg, training.cfg.tokens_per_step(training.world)
    elapsed = time.time() - loop_start
    tok_s = (training.step - loop_start_step) * tokens_per_step / max(elapsed, 1e-9)
    eta = (cfg.steps - training.step) * tokens_per_step / max(tok_s, 1e-9)
    lr = training.scheduler.get_last_lr()[0]
    reporter.progress(
        {"step": training.step, "steps": cfg.steps, "loss": loss, "lr": lr, "tokens_per_s": tok_s, "elapsed_s": elapsed, "eta_s": eta}
    )
    metrics = {"train/loss": loss, "train/lr": lr, "train/tokens_per_s": tok_s, "memory/host_peak_rss_mb": peak_rss_bytes() / 2**20}
    grad_norm = training.engine.get_global_grad_norm()
    if grad_norm is not None and math.isfinite(float(grad_norm)):
        metrics["train/grad_norm"] = float(grad_norm)
    if training.gpu:
        metrics["memory/device_peak_mb"] = torch.cuda.max_memory_allocated(training.device) / 2**20
        flops = cfg.model.flops_per_token(cfg.seq_len) * tok_s / training.world
        mfu = model_flops_utilization(flops, training.dtype, cfg.peak_tflops, accelerator_name(training.device))
        if mfu is not None:
            metrics["train/mfu"] = mfu
    steps = training.step - loop_start_step
    metrics.update({f"step_host_ms/{phase}": ms for phase, ms in clock.per_step_ms(steps).items()})
    training.tracker.log_metrics(metrics, training.step)


def _validation_set(training: Training, reporter) -> ValidationSet | None:
    """The slice validations score (every rank reads it); None when evaluation during training is off
    or the run's validation split holds no document."""
    try:
        vset = validation_set(training.cfg)
    except ShardError as e:
        if "no val tokens" not in str(e):
            raise
        reporter.warning(f"no validation during training: {e}")
        return None
    if vset is not None:
        reporter.info(f"validating every {training.cfg.eval_every} steps on {vset.documents} held-out documents ({vset.tokens:,} tokens)")
    return vset


def _validate(training: Training, vset: ValidationSet, reporter) -> bool:
    """Score the validation slice now (every rank together); whether it is a new best to keep."""
    result = validate(training.engine.module, vset, training.step, training.rank, training.world, training.cfg.zero_stage == 3)
    training.validations.append([result.step, result.loss, result.bits_per_byte])
    if training.is_rank0:
        reporter.validation({"step": result.step, "loss": result.loss, "bits_per_byte": result.bits_per_byte})
        figures = {"val/loss": result.loss} | ({"val/bits_per_byte": result.bits_per_byte} if result.bits_per_byte is not None else {})
        training.tracker.log_metrics(figures, result.step)
    if not training.cfg.keep_best or (training.best is not None and training.best[0] <= result.loss):
        return False
    training.best = [result.loss, checkpoints.tag_for(training.step)]
    return True


def _save(training: Training) -> None:
    """A checkpoint of this step; the best one (keep_best) is kept whatever keep_last says."""
    keep = frozenset([training.best[1]]) if training.best else frozenset()
    checkpoints.save(
        training.engine,
        training.store,
        training.step,
        training.client_state(),
        training.rank,
        training.local_rank,
        training.cfg.keep_last,
        keep,
    )
    training.tracker.flush()


def exported_tag(training: Training) -> str:
    """The checkpoint `final/` holds: the best validation's with keep_best, else the last."""
    return training.best[1] if training.cfg.keep_best and training.best else checkpoints.tag_for(training.step)


def finish(
    training: Training,
    final: Storage,
    loop_s: float,
    trained_steps: int,
    wall_s: float,
    peak_rss: list[int],
    steady_tokens_per_s: float | None,
) -> TrainSummary:
    """`final/summary.json`, written last: its presence means the run finished. `tokens_per_s` covers the
    whole loop (checkpoint saves included); `steady_tokens_per_s` the steps after the first, saves left
    out: the speed of training itself, which MFU is computed from."""
    cfg = training.cfg
    flops_per_token = cfg.model.flops_per_token(cfg.seq_len)
    tokens_per_s = trained_steps * cfg.tokens_per_step(training.world) / loop_s if trained_steps else 0.0
    accelerator = accelerator_name(training.device)
    speed = steady_tokens_per_s or tokens_per_s
    mfu = (
        model_flops_utilization(flops_per_token * speed / training.world, training.dtype, cfg.peak_tflops, accelerator)
        if training.gpu
        else None
    )
    summary = TrainSummary(
        steps=training.step,
        checkpoint=checkpoints.tag_for(training.step),
        tokens_seen=training.tokens_seen,
        final_loss=training.losses[-1][1],
        losses=tuple((int(step), float(loss)) for step, loss in training.losses),
        world_size=training.world,
        zero_stage=cfg.zero_stage,
        dtype=training.dtype,
        num_params=cfg.model.num_params(),
        flops_per_token=flops_per_token,
        wall_time_s=wall_s,
        train_loop_s=loop_s,
        tokens_per_s=tokens_per_s,
        steady_tokens_per_s=steady_tokens_per_s,
        mfu=mfu,
        accelerator=accelerator,
        grad_accum=cfg.grad_accum_for(training.world),
        resumed_from=training.resumed_from,
        device=training.device.type,
        peak_rss_bytes_per_rank=tuple(peak_rss),
        samples_seen=training.samples_seen,
        compiled=cfg.compile,
        attention="flash" if training.attention_problem is None else f"not flash: {training.attention_problem}",
        step_host_ms=training.step_host_ms,
        mixture=training.loader.mixture.realized(training.samples_seen),
        validations=tuple((int(step), float(loss), bpb) for step, loss, bpb in training.validations),
        exported_checkpoint=exported_tag(training),
        best_validation_loss=training.best[0] if training.cfg.keep_best and training.best else None,
        rollbacks=tuple(Rollback(**r) for r in training.rollbacks),
        tracker=training.tracker.run,
    )
    summary.write(final)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path or URI of the training config JSON")
    # The deepspeed launcher passes --local_rank; LOCAL_RANK in the environment says the same.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.from_dict(read_named_json_object(args.config, "--config"))
    except ValueError as e:  # one line that names the problem, as the launchers print it
        print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
        return 1
    rank = int(os.environ.get("RANK", "0"))
    with open_reporter(rank == 0) as reporter:
        try:
            train(cfg, reporter)
        except (TrainingStopped, TrackerError) as e:  # the run's own verdict: one line, no traceback
            if reporter.pipes is not None:  # under Dagster, the run's log names the reason too
                reporter.warning(str(e))
            print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
            return 1
    crash_point("after_summary", rank)  # the crash tests: a rank dying at exit, the run already complete
    # Every rank has passed the run's last barrier: no collective is pending.
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


def exit_now(code: int) -> NoReturn:
    """Leave the trainer program without interpreter finalization, its output flushed.

    destroy_process_group() unregisters the process groups but does not free them: DeepSpeed keeps
    references, and gloo's threads (pt_gloo_runloop, gloo_tcp_loop, the TCPStore's pt_tcpstore_uv)
    run on. Their C++ destructors then run during finalization, racing it, and about one launch in
    two hundred a rank aborts there ("terminate called without an active exception", SIGABRT) after
    the run finished (benchmarks/clean_exit.py). With nothing left to write, the process ends here and
    the kernel ends those threads. Only the program does this: a Ray Train worker calls main() and
    returns to Ray."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
