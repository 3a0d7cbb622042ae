"""Typed run configuration of every stage, shown and validated in the launchpad.

Each class converts to the library's own config dataclass, which does the validation (one rule,
one place). `validate_run_config` checks every stage's config of a run before the first stage
does any work, so a bad value in a late stage never costs the early ones.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import dagster as dg
from pydantic import Field, ValidationError

from llm_pipeline.corpus.build import CorpusConfig, default_corpus_uri
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.evaluate.metrics import EvalConfig
from llm_pipeline.finite import check_finite
from llm_pipeline.storage.names import check_name
from llm_pipeline.tokenize.bpe import special_token_list, validate_vocab_size
from llm_pipeline.tokenize.shards import ShardConfig
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import uses_gpu
from llm_pipeline.train.model import ModelConfig, preset_config


DEFAULT_MODEL_NAME = "llm-pipeline-demo"


def default(cls, name: str):
    """A library dataclass field's default: one source for every default number."""
    field = cls.__dataclass_fields__[name]
    return field.default_factory() if callable(field.default_factory) else field.default


class RawCorpusConfig(dg.Config):
    source_uri: str = Field(default="", description="fsspec URI of a folder or file, taken literally (no patterns); empty: the Python standard library")
    glob: str = Field(default=default(CorpusConfig, "glob"), description="which files under source_uri to read (the only pattern, with exclude)")
    exclude: list[str] = Field(default=list(default(CorpusConfig, "exclude")), description="relative paths to skip")
    format: Literal["auto", "text", "jsonl", "parquet"] = Field(
        default=default(CorpusConfig, "format"), description="auto: from each file name (.jsonl/.json/.ndjson, .parquet, else text; .gz/.bz2/.xz/.zst decompressed)")
    text_field: str = Field(default=default(CorpusConfig, "text_field"), description="the JSON Lines field or Parquet column holding the text")
    include_hidden: bool = Field(default=default(CorpusConfig, "include_hidden"),
                                 description="read hidden files and in-flight uploads (*.tmp, *.part, ...) too")
    max_bytes: Optional[int] = Field(default=default(CorpusConfig, "max_bytes"),
                                     description="read at most this many stored bytes (files over the budget are skipped and listed); unset: 8 MB for the built-in corpus, no cap for a given source")
    workers: int = Field(default=default(CorpusConfig, "workers"), description="worker processes; 0: one per core")
    min_chars: int = default(FilterConfig, "min_chars")
    max_chars: int = default(FilterConfig, "max_chars")
    min_printable_fraction: float = default(FilterConfig, "min_printable_fraction")
    near_dedup: bool = default(FilterConfig, "near_dedup")
    near_dedup_threshold: float = default(FilterConfig, "near_dedup_threshold")

    def to_library(self) -> CorpusConfig:
        return CorpusConfig(
            source_uri=self.source_uri or default_corpus_uri(),
            glob=self.glob,
            exclude=tuple(self.exclude),
            format=self.format,
            text_field=self.text_field,
            include_hidden=self.include_hidden,
            max_bytes=self.max_bytes,
            workers=self.workers,
            filters=FilterConfig(self.min_chars, self.max_chars, self.min_printable_fraction, self.near_dedup, self.near_dedup_threshold),
        )


class TokenizerConfig(dg.Config):
    vocab_size: int = Field(default=4096, description="BPE vocabulary size, special tokens included")
    train_bytes: int = Field(default=4_000_000, description="train the BPE on this many bytes of the corpus")
    extra_special_tokens: list[str] = Field(default=[], description="special tokens besides <|endoftext|>")
    tokenizer_json_uri: str = Field(default="", description="use this tokenizer.json instead of training one")

    def validate_library(self) -> None:
        if self.train_bytes <= 0:
            raise ValueError(f"train_bytes must be > 0, got {self.train_bytes}")
        if not self.tokenizer_json_uri:
            validate_vocab_size(self.vocab_size, special_token_list(self.extra_special_tokens))


class TokenizedShardsConfig(dg.Config):
    val_fraction: float = Field(default=default(ShardConfig, "val_fraction"), description="share of documents (by id hash) held out for validation")
    tokens_per_shard: int = default(ShardConfig, "tokens_per_shard")
    row_group_rows: int = default(ShardConfig, "row_group_rows")

    def to_library(self) -> ShardConfig:
        return ShardConfig(self.val_fraction, self.tokens_per_shard, self.row_group_rows)


class TrainedCheckpointConfig(dg.Config):
    # data: which corpus batches, and where the weights start
    batches: list[str] = Field(default=[], description="corpus batches (partitions) to train on; empty: every materialized batch")
    init_from: Literal["scratch", "latest_published"] = Field(
        default="scratch", description="latest_published: continue pretraining from init_from_model's latest version (fresh warmup)")
    init_from_model: str = Field(default=DEFAULT_MODEL_NAME, description="registry model that init_from latest_published starts from")
    # model: a named size, with any dimension overridden
    preset: Literal["tiny", "demo", "125m", "350m", "1b"] = Field(default="demo", description="model size preset")
    d_model: Optional[int] = Field(default=None, description="overrides the preset's width")
    n_layers: Optional[int] = None
    n_heads: Optional[int] = None
    ffn_hidden: Optional[int] = None
    max_seq_len: Optional[int] = None
    # optimisation
    seq_len: int = default(TrainConfig, "seq_len")
    micro_batch: int = default(TrainConfig, "micro_batch")
    grad_accum: int = Field(default=default(TrainConfig, "grad_accum"), description="micro-steps per optimizer step")
    global_batch_tokens: int = Field(default=default(TrainConfig, "global_batch_tokens"),
                                     description="tokens per optimizer step across all ranks; > 0 derives grad_accum from it")
    steps: int = default(TrainConfig, "steps")
    lr: float = default(TrainConfig, "lr")
    min_lr_ratio: float = default(TrainConfig, "min_lr_ratio")
    warmup_steps: int = default(TrainConfig, "warmup_steps")
    lr_schedule: Literal["cosine", "wsd"] = Field(default=default(TrainConfig, "lr_schedule"), description="cosine, or warmup-stable-decay")
    decay_fraction: float = default(TrainConfig, "decay_fraction")
    activation_checkpointing: bool = default(TrainConfig, "activation_checkpointing")
    weight_decay: float = default(TrainConfig, "weight_decay")
    beta1: float = default(TrainConfig, "beta1")
    beta2: float = default(TrainConfig, "beta2")
    adam_eps: float = default(TrainConfig, "adam_eps")
    grad_clip: float = default(TrainConfig, "grad_clip")
    seed: int = default(TrainConfig, "seed")
    # DeepSpeed
    zero_stage: int = Field(default=default(TrainConfig, "zero_stage"), description="ZeRO stage: 0, 1, 2 or 3")
    offload_optimizer: bool = Field(default=default(TrainConfig, "offload_optimizer"), description="ZeRO-Offload: optimizer state and step on the CPU (stage 2 or 3)")
    offload_params: bool = Field(default=default(TrainConfig, "offload_params"), description="parameters on the CPU between uses (stage 3)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(default="auto", description="auto: bf16 where the hardware runs it fast, else fp32")
    peak_tflops: float = Field(default=default(TrainConfig, "peak_tflops"), description="per-GPU peak for MFU; 0: looked up from the GPU's name")
    checkpoint_every: int = default(TrainConfig, "checkpoint_every")
    keep_last: int = default(TrainConfig, "keep_last")
    log_every: int = default(TrainConfig, "log_every")
    # launch
    launcher: Literal["deepspeed", "torchrun", "none"] = default(LaunchConfig, "launcher")
    nproc: int = Field(default=default(LaunchConfig, "nproc"), description="processes (ranks) per node")
    nnodes: int = Field(default=default(LaunchConfig, "nnodes"), description="nodes; this run starts node 0, the others run the logged worker command")
    master_addr: str = Field(default=default(LaunchConfig, "master_addr"), description="node 0's address, reachable from every node")
    master_port: int = Field(default=default(LaunchConfig, "master_port"), description="0: a free port (one node only)")
    hostfile: str = Field(default=default(LaunchConfig, "hostfile"), description="deepspeed: MPI-style hostfile ('host slots=N' lines) for multi-node")
    ssh: bool = Field(default=default(LaunchConfig, "ssh"), description="deepspeed with a hostfile: start every node from here over pdsh/ssh")

    def build_model_config(self, vocab_size: int) -> ModelConfig:
        dims = ("d_model", "n_layers", "n_heads", "ffn_hidden", "max_seq_len")
        return preset_config(self.preset, vocab_size, **{d: getattr(self, d) for d in dims if getattr(self, d) is not None})

    def to_library(self, shards_uris: tuple[str, ...], run_uri: str, vocab_size: int, tokenizer_sha256: str,
                   init_from_uri: str = "") -> TrainConfig:
        return TrainConfig(
            shards_uris=shards_uris, run_uri=run_uri, model=self.build_model_config(vocab_size), tokenizer_sha256=tokenizer_sha256,
            init_from_uri=init_from_uri,
            seq_len=self.seq_len, micro_batch=self.micro_batch, grad_accum=self.grad_accum,
            global_batch_tokens=self.global_batch_tokens, steps=self.steps, lr=self.lr,
            min_lr_ratio=self.min_lr_ratio, warmup_steps=self.warmup_steps, lr_schedule=self.lr_schedule,
            decay_fraction=self.decay_fraction, activation_checkpointing=self.activation_checkpointing,
            weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2, adam_eps=self.adam_eps,
            grad_clip=self.grad_clip, zero_stage=self.zero_stage, offload_optimizer=self.offload_optimizer,
            offload_params=self.offload_params, dtype=self.dtype, seed=self.seed,
            checkpoint_every=self.checkpoint_every, keep_last=self.keep_last, log_every=self.log_every,
            peak_tflops=self.peak_tflops,
        )

    def launch_config(self) -> LaunchConfig:
        # This run is always node 0: it hosts rank 0, which reports to Dagster.
        return LaunchConfig(launcher=self.launcher, nproc=self.nproc, nnodes=self.nnodes, node_rank=0,
                            master_addr=self.master_addr, master_port=self.master_port, hostfile=self.hostfile, ssh=self.ssh)

    def validate_library(self, vocab_size: int, on_gpu: bool) -> None:
        launch = self.launch_config()
        self.to_library(("x",), "x", vocab_size, "").validate_for(launch.world_size, on_gpu)
        check_name(self.init_from_model, "init_from_model")
        for batch in self.batches:
            check_name(batch, "batches entry")


class EvalMetricsConfig(dg.Config):
    seq_len: int = default(EvalConfig, "seq_len")
    max_tokens: int = Field(default=default(EvalConfig, "max_tokens"), description="evaluate at most this many val tokens; 0: all")
    prompts: list[str] = list(default(EvalConfig, "prompts"))
    max_new_tokens: int = default(EvalConfig, "max_new_tokens")
    temperature: float = default(EvalConfig, "temperature")
    top_k: int = default(EvalConfig, "top_k")
    seed: int = default(EvalConfig, "seed")
    max_loss: Optional[float] = Field(default=None, description="publishing gate; default 70% of ln(vocab_size), the loss of a uniform guess")
    max_perplexity: Optional[float] = Field(default=None, description="publishing gate on perplexity; none by default")
    compare_with: str = Field(default=DEFAULT_MODEL_NAME, description="registry model whose latest version is the baseline; empty: none")
    regression_tolerance: float = Field(default=0.02, description="publishing gate: bits per byte may exceed the baseline's by this fraction")

    def validate_library(self) -> None:
        self.to_library()
        if self.compare_with:
            check_name(self.compare_with, "compare_with")
        if self.max_perplexity is not None and self.max_perplexity < 1:
            raise ValueError(f"max_perplexity must be >= 1, got {self.max_perplexity}")
        if self.regression_tolerance < 0:
            raise ValueError(f"regression_tolerance must be >= 0, got {self.regression_tolerance}")

    def to_library(self) -> EvalConfig:
        return EvalConfig(self.seq_len, self.max_tokens, tuple(self.prompts), self.max_new_tokens, self.temperature, self.top_k, self.seed)

    def loss_threshold(self, vocab_size: int) -> float:
        return self.max_loss if self.max_loss is not None else 0.7 * math.log(vocab_size)


class PublishedModelConfig(dg.Config):
    model_name: str = Field(default=DEFAULT_MODEL_NAME, description="registry entry: <registry>/<model_name>/<version>")

    def validate_library(self) -> None:
        check_name(self.model_name, "model_name")


STAGE_CONFIGS: dict[str, type[dg.Config]] = {
    "raw_corpus": RawCorpusConfig,
    "tokenizer": TokenizerConfig,
    "tokenized_shards": TokenizedShardsConfig,
    "trained_checkpoint": TrainedCheckpointConfig,
    "eval_metrics": EvalMetricsConfig,
    "published_model": PublishedModelConfig,
}


def _build(stage: str, values: dict):
    check_finite(values, f"{stage} config")  # the launchpad's own floats too (max_loss, ...)
    try:
        return STAGE_CONFIGS[stage](**values)
    except ValidationError as e:
        raise ValueError(f"{stage} config: {e}") from None


def validate_run_config(run_config: dict) -> None:
    """Raise dg.Failure naming the stage and field of the first invalid value in a run's config."""
    ops = (run_config or {}).get("ops", {})
    try:
        configs = {stage: _build(stage, (ops.get(stage) or {}).get("config", {}) or {}) for stage in STAGE_CONFIGS}
    except ValueError as e:
        raise dg.Failure(description=f"Invalid run configuration, nothing was run. {e}") from None
    vocab_size = configs["tokenizer"].vocab_size
    checks = [
        ("raw_corpus", lambda c: c.to_library()),
        ("tokenizer", lambda c: c.validate_library()),
        ("tokenized_shards", lambda c: c.to_library()),
        ("trained_checkpoint", lambda c: c.validate_library(vocab_size, uses_gpu())),
        ("eval_metrics", lambda c: c.validate_library()),
        ("published_model", lambda c: c.validate_library()),
    ]
    for stage, check in checks:
        try:
            check(configs[stage])
        except ValueError as e:
            message = str(e) if str(e).startswith(stage) else f"{stage} config: {e}"
            raise dg.Failure(description=f"Invalid run configuration, nothing was run. {message}") from None
