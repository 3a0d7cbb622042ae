"""The trainer's whole configuration: one JSON file, validated before any process starts."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import typing
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llm_pipeline.globs import fnmatch_pattern
from llm_pipeline.settings import Settings
from llm_pipeline.storage.folders import bounded
from llm_pipeline.train.memory import available_bytes, human, local_devices, training_bytes_per_rank
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.schedule import Schedule
from llm_pipeline.train.tracking import TrackerKind

Dtype = Literal["auto", "fp32", "bf16", "fp16"]
Launcher = Literal["deepspeed", "torchrun", "ray", "none"]
DTYPES = typing.get_args(Dtype)
LAUNCHERS = typing.get_args(Launcher)


# Samples per mixing block: each block holds exactly round(weight x MIX_BLOCK) samples of each source,
# in a seeded order. So proportions are exact over every block, and a source's share is at least 1/MIX_BLOCK.
MIX_BLOCK = 10_000


def mixture_shares(weights: list[float]) -> list[float]:
    """Weights as shares of 1. Scaled by the largest first, so no sum overflows (weights of 1e308 each
    are equal shares, not infinity)."""
    top = max(weights)
    scaled = [w / top for w in weights]
    total = math.fsum(scaled)
    return [w / total for w in scaled]


# Fields that do not change what a run computes: the same run (its checkpoints) whatever they hold.
NOT_THE_RUN = {"run_uri", "token_cache", "token_cache_gb", "tokenizer_uri", "tracker", "tracker_uri", "experiment", "tracker_tags"}


class TrainConfig(Settings):
    # Filled in by whoever starts the run (the asset, or a hand-written train_config.json).
    shards_uris: tuple[str, ...] = Field(description="token shard sets (one per corpus batch), read in this order")
    run_uri: str = Field(description="checkpoints/ and final/ live here; the same inputs map to the same run_uri")
    model: ModelConfig
    tokenizer_sha256: str = ""
    # With a mixture: the source (a `mixture` key) of each shards_uris entry, in the same order.
    shard_sources: tuple[str, ...] = ()
    # A published model folder whose weights start the run (continued pretraining); "": from scratch.
    # The schedule, warmup included, starts afresh either way.
    init_from_uri: str = ""
    # The tokenizer's folder (tokenizer.json): the validation's bits per byte; "": loss only.
    tokenizer_uri: str = ""
    # Tags of the tracker run: the Dagster run, asset and partition that started it.
    tracker_tags: dict[str, str] = {}
    # The settings a user chooses (the launchpad shows these).
    mixture: dict[str, float] = Field(
        default={},
        description=(
            'each source\'s share of the training samples, e.g. {"web-*": 0.7, "code-*": 0.3}; a source is a pattern over corpus '
            "batch names (fnmatch); empty: every batch in proportion to its tokens"
        ),
    )
    seq_len: int = Field(default=128, gt=0, description="tokens per training sequence")
    micro_batch: int = Field(default=16, gt=0, description="sequences per rank per micro-step")
    grad_accum: int = Field(default=1, gt=0, description="micro-steps per optimizer step")
    global_batch_tokens: int = Field(
        default=0, ge=0, description="tokens per optimizer step across all ranks; > 0 derives grad_accum from it"
    )
    steps: int = Field(default=180, gt=0, le=10**9, description="optimizer steps")
    lr: float = Field(default=3e-3, gt=0, description="peak learning rate")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="the schedule's floor, as a share of lr")
    warmup_steps: int = Field(default=20, ge=0, description="linear warmup steps")
    lr_schedule: Schedule = Field(default="cosine", description="cosine, or wsd: warmup-stable-decay")
    decay_fraction: float = Field(default=0.2, gt=0, le=1, description="wsd: share of the steps spent decaying")
    activation_checkpointing: bool = Field(default=False, description="recompute each block's activations in the backward pass")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay (matrices only)")
    beta1: float = Field(default=0.9, description="AdamW beta1, in [0, 1)")
    beta2: float = Field(default=0.95, description="AdamW beta2, in [0, 1)")
    adam_eps: float = Field(default=1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float = Field(default=1.0, ge=0, description="gradient norm clipping; 0 disables it")
    zero_stage: Literal[0, 1, 2, 3] = Field(default=2, description="ZeRO stage: 0, 1, 2 or 3")
    offload_optimizer: bool = Field(default=False, description="ZeRO-Offload: optimizer state and step on the CPU (stage 2 or 3)")
    offload_params: bool = Field(default=False, description="parameters on the CPU between uses (stage 3)")
    dtype: Dtype = Field(default="auto", description="auto: bf16 where the hardware runs it fast, else fp32 (see hardware.resolve_dtype)")
    seed: int = Field(default=1337, description="seeds the initial weights and the data order")
    checkpoint_every: int = Field(default=100, gt=0, description="optimizer steps between checkpoints")
    keep_last: int = Field(default=2, gt=0, description="checkpoints kept")
    log_every: int = Field(default=10, gt=0, description="optimizer steps between progress reports")
    peak_tflops: float = Field(default=0.0, ge=0, description="per-device peak for MFU; 0: looked up from the GPU's name")
    compile: bool = Field(default=False, description="torch.compile the model: faster steps on a GPU after a compile of a minute or so")
    token_cache: str = Field(
        default="", description="node-local folder for verified and remote-copied token files; empty: ~/.cache/llm-pipeline/tokens"
    )
    token_cache_gb: float = Field(default=100.0, gt=0, description="size limit of token_cache; least recently used copies are evicted")
    # Watching the run: validation while it trains, an experiment tracker, divergence.
    eval_every: int = Field(
        default=30, ge=0, description="optimizer steps between validations on a fixed slice of the validation split; 0: none"
    )
    eval_tokens: int = Field(default=8192, gt=0, description="tokens of whole validation documents in that slice")
    keep_best: bool = Field(
        default=False, description="export the checkpoint with the best validation loss instead of the last (each new best is saved)"
    )
    on_divergence: Literal["stop", "rollback"] = Field(
        default="stop",
        description="on a loss spike or a non-finite loss: stop, naming the step and the loss; or resume from the newest good "
        "checkpoint and skip the samples drawn since it",
    )
    spike_factor: float = Field(
        default=4.0, ge=0, description="a step's loss this many times the mean of the 20 before it is a spike; 0: non-finite losses only"
    )
    max_rollbacks: int = Field(default=3, ge=0, description="rollbacks before a divergence stops the run")
    tracker: TrackerKind = Field(
        default="tensorboard", description="where the curves go: tensorboard (in the run folder), mlflow, wandb or none"
    )
    tracker_uri: str = Field(default="", description="the MLflow tracking server, e.g. http://mlflow:5000 (tracker mlflow)")
    experiment: str = Field(default="llm-pipeline", description="the MLflow experiment or W&B project the run logs to")

    @field_validator("shards_uris", mode="before")
    @classmethod
    def _a_list_of_folders(cls, value):
        if isinstance(value, str) or not value:
            raise ValueError(f"shards_uris must be a non-empty list of shard folders, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        # A warmup longer than the run never reaches the peak rate: a mistake, except at the default,
        # so that a short trial run (--steps 5) keeps working.
        if self.warmup_steps > max(self.steps, type(self).model_fields["warmup_steps"].default):
            raise ValueError(f"warmup_steps ({self.warmup_steps:,}) exceeds steps ({self.steps:,}): the run would end before its warmup")
        if self.seq_len > self.model.max_seq_len:
            raise ValueError(f"seq_len ({self.seq_len}) exceeds the model's max_seq_len ({self.model.max_seq_len})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError(f"offload_optimizer needs zero_stage 2 or 3, got zero_stage {self.zero_stage}")
        if self.keep_best and not self.eval_every:
            raise ValueError("keep_best needs eval_every > 0: the best checkpoint is the one with the best validation loss")
        if self.tracker == "mlflow" and not self.tracker_uri:
            raise ValueError("tracker mlflow needs tracker_uri, the MLflow tracking server (e.g. http://mlflow:5000)")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params needs zero_stage 3, got zero_stage {self.zero_stage}")
        if self.global_batch_tokens and self.grad_accum != 1:
            raise ValueError(
                "set either global_batch_tokens or grad_accum, not both "
                f"(got global_batch_tokens {self.global_batch_tokens}, grad_accum {self.grad_accum})"
            )
        for source, weight in self.mixture.items():
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"mixture weight of {source!r} must be a positive number, got {weight}")
        for source, share in zip(self.mixture, mixture_shares(list(self.mixture.values())) if self.mixture else []):
            if round(share * MIX_BLOCK) == 0:
                raise ValueError(f"mixture weight of {source!r} is below 1/{MIX_BLOCK} of the total: it would never be drawn")
        if self.shard_sources:
            if len(self.shard_sources) != len(self.shards_uris):
                raise ValueError(f"shard_sources has {len(self.shard_sources)} entries for {len(self.shards_uris)} shards_uris")
            unknown = sorted(set(self.shard_sources) - set(self.mixture))
            if unknown:
                raise ValueError(f"shard_sources {unknown} are not mixture sources ({', '.join(self.mixture) or 'no mixture'})")
        self.grad_accum_for(1)  # divisibility that holds for any world size; validate_for checks the launch's
        return self

    def data_sources(self) -> list[tuple[str, float, tuple[str, ...]]]:
        """(name, weight, shard sets) of each source trained on: the mixture's, or one of every shard set."""
        if not self.mixture:
            return [("all", 1.0, self.shards_uris)]
        if not self.shard_sources:
            raise ValueError("a mixture needs shard_sources: the mixture source of each shards_uris entry")
        sources = [
            (name, weight, tuple(u for u, s in zip(self.shards_uris, self.shard_sources) if s == name))
            for name, weight in self.mixture.items()
        ]
        empty = [name for name, _, uris in sources if not uris]
        if empty:
            raise ValueError(f"mixture source(s) {', '.join(empty)} have no shard set")
        return sources

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-steps per optimizer step: grad_accum, or derived from global_batch_tokens."""
        if not self.global_batch_tokens:
            return self.grad_accum
        per_micro_step = self.micro_batch * self.seq_len * world_size
        if self.global_batch_tokens % per_micro_step:
            raise ValueError(
                f"global_batch_tokens ({self.global_batch_tokens}) must be a multiple of micro_batch x seq_len x world size "
                f"({self.micro_batch} x {self.seq_len} x {world_size} = {per_micro_step})"
            )
        return self.global_batch_tokens // per_micro_step

    def validate_for(self, world_size: int, on_gpu: bool, ranks_on_this_node: int | None = None) -> None:
        """Checks that need the launch: world size and hardware, and that the run fits this node's
        devices and memory (`ranks_on_this_node` 0: none runs here). Run before any process starts."""
        self.grad_accum_for(world_size)
        if self.dtype == "fp16" and not on_gpu:
            raise ValueError("dtype fp16 needs a GPU (DeepSpeed's CPU accelerator has no fp16 training); use fp32 or bf16")
        if ranks_on_this_node == 0:  # every rank on other machines (a Ray cluster): they check their own
            return
        ranks = ranks_on_this_node or world_size
        devices, kind = local_devices(on_gpu)
        if ranks > devices:
            raise ValueError(f"nproc {ranks} exceeds this node's {devices} {kind}: one rank per device")
        m = self.model
        need = training_bytes_per_rank(
            m.num_params(),
            m.n_layers,
            m.d_model,
            m.n_heads,
            m.vocab_size,
            m.max_seq_len,
            self.seq_len,
            self.micro_batch,
            world_size,
            self.zero_stage,
            self.dtype,
            on_gpu,
            self.activation_checkpointing,
        )
        have, what = available_bytes(on_gpu)
        per_rank = sum(need.values())
        total = per_rank if on_gpu else per_rank * ranks  # CPU ranks of a node share its memory
        if total > have:
            raise ValueError(
                f"this run cannot fit: {m.num_params():.3g} parameters, micro_batch {self.micro_batch} x seq_len {self.seq_len} "
                f"need at least {human(per_rank)} per rank ({human(need['model_state'])} of weights, gradients and AdamW state "
                f"with ZeRO stage {self.zero_stage} over {world_size} ranks; {human(need['activations'])} of activations)"
                f"{'' if on_gpu else f' x {ranks} ranks'}, and there are {what}. Use a smaller model (preset, d_model, "
                "n_layers), a smaller micro_batch or seq_len, a higher zero_stage or more ranks"
            )

    def run_key(self) -> str:
        """The same data (each batch's shard folder) and settings give the same key, wherever the run
        lives: re-materializing after a crash finds that run's checkpoints and resumes. Where this node
        caches token files, where the tokenizer and the curves are, are not settings of the run."""
        settings = self.model_dump(mode="json", exclude=NOT_THE_RUN)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown training config field(s): {bounded(str(unknown))}")
        return cls(**data)

    def deepspeed_config(self, world_size: int, dtype: str, on_gpu: bool) -> dict:
        grad_accum = self.grad_accum_for(world_size)
        zero: dict[str, object] = {"stage": self.zero_stage}
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if self.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
        ds = {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": self.micro_batch * grad_accum * world_size,
            "gradient_clipping": self.grad_clip,
            "zero_optimization": zero,
            "steps_per_print": 10**9,  # we report progress ourselves
            "wall_clock_breakdown": False,
        }
        if dtype == "bf16":
            ds["bf16"] = {"enabled": True}
        elif dtype == "fp16":
            ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
        return ds

    def tokens_per_step(self, world_size: int) -> int:
        return self.micro_batch * self.grad_accum_for(world_size) * world_size * self.seq_len


def mixture_sources(batches: list[str], mixture: dict[str, float]) -> tuple[str, ...]:
    """The mixture source of each corpus batch: the one pattern (fnmatch) its name matches. A batch
    matching none or several, and a pattern matching no batch, are errors that name them."""
    sources, unmatched = [], []
    for batch in batches:
        matches = [pattern for pattern in mixture if fnmatch_pattern(pattern).match(batch)]
        if len(matches) > 1:
            raise ValueError(f"corpus batch {batch!r} matches several mixture sources: {', '.join(matches)}")
        if not matches:
            unmatched.append(batch)
        sources += matches
    if unmatched:
        raise ValueError(
            f"corpus batches {', '.join(unmatched)} match no mixture source ({', '.join(mixture)}); "
            "add a source for them or leave them out of `batches`"
        )
    empty = [pattern for pattern in mixture if pattern not in sources]
    if empty:
        raise ValueError(f"mixture sources {', '.join(empty)} match no corpus batch with training tokens ({', '.join(batches)})")
    return tuple(sources)


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_host_address(value: str) -> bool:
    """An IPv4/IPv6 address or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    return 0 < len(value) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in value.split("."))


class LaunchConfig(Settings):
    """How the trainer's processes start. One node by default.

    Multi-node: every node runs the launch command with its own `node_rank` (node 0 hosts rank 0,
    the one that reports progress), all pointing at node 0's `master_addr`:`master_port`.
    deepspeed takes the node list from an MPI-style `hostfile` (`host slots=N` lines); with
    `ssh` it starts every node itself from node 0 over pdsh/ssh, without it each node is
    started on its own. torchrun needs no hostfile: `--nnodes`, `--node_rank` and the
    master's address make its static rendezvous.
    """

    launcher: Launcher = Field(
        default="deepspeed", description="deepspeed, torchrun, ray (a Ray cluster: LLM_PIPELINE_RAY_ADDRESS), or none: one plain process"
    )
    nproc: int = Field(default=2, gt=0, description="processes (ranks) per node")
    nnodes: int = Field(default=1, gt=0, description="nodes; node 0 hosts rank 0, the others run the logged worker command")
    node_rank: int = Field(default=0, ge=0, description="this node's rank")
    master_addr: str = Field(default="127.0.0.1", description="node 0's address, reachable from every node")
    master_port: int = Field(default=0, ge=0, le=65535, description="0: a free port (one node only)")
    hostfile: str = Field(default="", description="deepspeed: MPI-style hostfile ('host slots=N' lines) for multi-node")
    ssh: bool = Field(default=False, description="deepspeed with a hostfile: start every node from node 0 over pdsh/ssh")
    num_workers: int = Field(
        default=2, gt=0, description="ray: ranks, each a Ray Train worker that Ray places on a node with its resources"
    )
    cpus_per_worker: int = Field(default=1, gt=0, description="ray: CPU cores each worker reserves (its torch threads)")
    gpus_per_worker: int = Field(default=0, ge=0, description="ray: GPUs each worker reserves; 0 trains on CPU")

    @model_validator(mode="after")
    def _consistent(self):
        if not self.node_rank < self.nnodes:
            raise ValueError(f"node_rank must be in [0, nnodes={self.nnodes}), got {self.node_rank}")
        if self.launcher == "none" and (self.nproc != 1 or self.nnodes != 1):
            raise ValueError("launcher 'none' runs one process: nproc and nnodes must be 1")
        if self.nnodes > 1:
            if not self.master_port:
                raise ValueError("master_port must be set when nnodes > 1: every node has to agree on it")
            if not self.master_addr:
                raise ValueError("master_addr must be set when nnodes > 1: node 0's address, reachable from every node")
            if self.launcher == "deepspeed" and not self.hostfile:
                raise ValueError("the deepspeed launcher needs a hostfile when nnodes > 1 (lines of 'host slots=N')")
        if self.launcher == "ray" and (self.nnodes != 1 or self.hostfile):
            raise ValueError("launcher 'ray' places its ranks itself: set num_workers, not nnodes or a hostfile")
        if self.ssh and not (self.launcher == "deepspeed" and self.hostfile):
            raise ValueError("ssh applies to the deepspeed launcher with a hostfile only")
        if self.master_addr and not is_host_address(self.master_addr):
            # It reaches a remote shell in deepspeed's ssh mode: a host name or an IP address, nothing else.
            raise ValueError(f"master_addr must be a host name or an IP address, got {self.master_addr!r}")
        return self

    @property
    def world_size(self) -> int:
        return self.num_workers if self.launcher == "ray" else self.nproc * self.nnodes

    @property
    def ranks_on_this_node(self) -> int:
        return 0 if self.launcher == "ray" else self.nproc
