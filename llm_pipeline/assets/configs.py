"""Typed run configuration of every stage, shown and validated in the launchpad.

Each setting is declared once, in the library's own `Settings` models, with its type, default,
bounds and description. A launchpad class names each library field it shows (`launchpad(Model,
"name")`: the default and description come from there), so a reader and a type checker follow a
field to its declaration; `check_launchpad` refuses, at import, a class that misses a library field,
gives it another type, or takes one name from two models. Each class converts to the library
model, which does the validation (one rule, one place). `validate_run_config` checks every stage's
config of a run before the first stage does any work, so a bad value in a late stage never costs
the early ones.
"""

from __future__ import annotations

import math
import typing
from typing import Any, Literal, Optional

import dagster as dg
from pydantic import Field, ValidationError

from llm_pipeline.corpus.build import CorpusConfig, default_corpus_uri
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.evaluate.harness import check_tasks_available
from llm_pipeline.evaluate.local_tasks import LOCAL_TASKS
from llm_pipeline.evaluate.results import split_metric_key
from llm_pipeline.finite import check_finite
from llm_pipeline.redact import redacted
from llm_pipeline.settings import Settings, choices, default_of, is_optional
from llm_pipeline.storage.folders import bounded, check_named_file
from llm_pipeline.storage.names import check_name
from llm_pipeline.tokenize.bpe import special_token_list, validate_vocab_size
from llm_pipeline.tokenize.shards import ShardConfig
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.hardware import on_gpu
from llm_pipeline.train.model_config import PRESETS, ModelConfig, preset_config

DEFAULT_MODEL_NAME = "llm-pipeline-demo"

# Library fields the asset fills in itself; everything else a library model declares is in the launchpad.
FILLED_BY_THE_ASSET = {
    CorpusConfig: {"source_uri", "files", "filters"},  # source_uri: the launchpad's "" stands for the built-in corpus
    TrainConfig: {"shards_uris", "shard_sources", "run_uri", "model", "tokenizer_sha256", "init_from_uri", "tokenizer_uri", "tracker_tags"},
    LaunchConfig: {"node_rank"},  # this run is always node 0
    ModelConfig: {"vocab_size"},  # the tokenizer's
}


def launchpad(model: type[Settings], name: str, overrides: bool = False) -> Any:
    """The launchpad field of library setting `model.name`: its default and description. `overrides`:
    optional and unset by default (a model dimension overriding the preset's)."""
    field = model.model_fields[name]
    if overrides:
        return Field(default=None, description=f"overrides the preset's {name}" + (f": {field.description}" if field.description else ""))
    default = default_of(model, name)
    return Field(default=list(default) if isinstance(default, tuple) else default, description=field.description)


def check_launchpad(cls: type[dg.Config], *models: type[Settings], overrides: type[Settings] | None = None) -> None:
    """`cls` declares every field of `models` (and of `overrides`, each optional) but those the asset
    fills in, as `launchpad` makes it, with the launchpad form of the library's type; no name is a
    field of two of them. TypeError naming the field otherwise, when the module is imported."""
    owners: dict[str, type[Settings]] = {}
    for model in (*models, *([overrides] if overrides else [])):
        for name in model.model_fields:
            if name in FILLED_BY_THE_ASSET.get(model, ()):
                continue
            if name in owners:
                raise TypeError(f"{cls.__name__}: {name!r} is a field of both {owners[name].__name__} and {model.__name__}")
            owners[name] = model
    for name, model in owners.items():
        declared = cls.model_fields.get(name)
        made = launchpad(model, name, overrides=model is overrides)
        if declared is None or declared.default != made.default or declared.description != made.description:
            raise TypeError(f"{cls.__name__} must declare {name} = launchpad({model.__name__}, {name!r}), the library setting")
        expected = _launchpad_type(model.model_fields[name].annotation)
        if model is overrides:
            expected = Optional[expected]
        if declared.annotation != expected:
            raise TypeError(f"{cls.__name__}.{name} is {declared.annotation}; {model.__name__}.{name} shows as {expected}")


def _launchpad_type(annotation):
    if is_optional(annotation):
        inner = next(a for a in typing.get_args(annotation) if a is not type(None))
        return Optional[_launchpad_type(inner)]
    allowed = choices(annotation)
    if allowed and not all(isinstance(a, str) for a in allowed):
        return type(allowed[0])  # Dagster's config types have no integer enums; the library checks the values
    if typing.get_origin(annotation) is tuple:
        return list[typing.get_args(annotation)[0]]  # type: ignore[misc]  # the element type, known at run time
    return annotation


def _values(config: dg.Config, cls: type[Settings]) -> dict:
    """The launchpad values that belong to library model `cls`."""
    return {name: getattr(config, name) for name in cls.model_fields if name in type(config).model_fields}


class RawCorpusConfig(dg.Config):
    source_uri: str = Field(
        default="", description="fsspec URI of a folder or file, taken literally (no patterns); empty: the Python standard library"
    )
    drop_share_alert_points: float = Field(
        default=10.0,
        gt=0,
        le=100,
        description="the drop_shares_steady check warns when a drop reason's share of the records moves more than this many "
        "percentage points from the previous batch's",
    )

    # the corpus: what is read and how it is written (CorpusConfig)
    glob: Optional[str] = launchpad(CorpusConfig, "glob")
    exclude: Optional[list[str]] = launchpad(CorpusConfig, "exclude")
    format: Literal["auto", "text", "jsonl", "parquet"] = launchpad(CorpusConfig, "format")
    text_field: str = launchpad(CorpusConfig, "text_field")
    include_hidden: bool = launchpad(CorpusConfig, "include_hidden")
    max_bytes: Optional[int] = launchpad(CorpusConfig, "max_bytes")
    shard_bytes: int = launchpad(CorpusConfig, "shard_bytes")
    row_group_rows: int = launchpad(CorpusConfig, "row_group_rows")
    quarantine_content_bytes: int = launchpad(CorpusConfig, "quarantine_content_bytes")
    workers: int = launchpad(CorpusConfig, "workers")
    executor: Literal["local", "ray"] = launchpad(CorpusConfig, "executor")
    dedup_memory_mb: int = launchpad(CorpusConfig, "dedup_memory_mb")
    # the cleaning steps (FilterConfig)
    preset: Literal["auto", "web", "code", "minimal"] = launchpad(FilterConfig, "preset")
    steps: Optional[list[str]] = launchpad(FilterConfig, "steps")
    languages: list[str] = launchpad(FilterConfig, "languages")
    min_language_score: float = launchpad(FilterConfig, "min_language_score")
    decontaminate_tasks: list[str] = launchpad(FilterConfig, "decontaminate_tasks")
    decontamination_ngram: int = launchpad(FilterConfig, "decontamination_ngram")
    rule_settings: dict[str, float] = launchpad(FilterConfig, "rule_settings")
    min_chars: int = launchpad(FilterConfig, "min_chars")
    max_chars: int = launchpad(FilterConfig, "max_chars")
    min_printable_fraction: float = launchpad(FilterConfig, "min_printable_fraction")
    near_dedup: bool = launchpad(FilterConfig, "near_dedup")
    near_dedup_threshold: float = launchpad(FilterConfig, "near_dedup_threshold")

    def to_library(self) -> CorpusConfig:
        values = {k: v for k, v in _values(self, CorpusConfig).items() if k != "source_uri"}
        return CorpusConfig(
            source_uri=self.source_uri or default_corpus_uri(), filters=FilterConfig(**_values(self, FilterConfig)), **values
        )


check_launchpad(RawCorpusConfig, CorpusConfig, FilterConfig)


class TokenizerConfig(dg.Config):
    vocab_size: int = Field(default=4096, description="BPE vocabulary size, special tokens included")
    train_bytes: int = Field(default=4_000_000, description="train the BPE on this many bytes of the corpus")
    extra_special_tokens: list[str] = Field(default=[], description="special tokens besides <|endoftext|>")
    tokenizer_json_uri: str = Field(default="", description="use this tokenizer.json instead of training one")

    def validate_library(self) -> None:
        if self.train_bytes <= 0:
            raise ValueError(f"train_bytes must be > 0, got {self.train_bytes}")
        if self.tokenizer_json_uri:
            check_named_file(self.tokenizer_json_uri, "tokenizer_json_uri")
        else:
            validate_vocab_size(self.vocab_size, special_token_list(self.extra_special_tokens))


class TokenizedShardsConfig(dg.Config):
    val_fraction: float = launchpad(ShardConfig, "val_fraction")
    tokens_per_shard: int = launchpad(ShardConfig, "tokens_per_shard")
    row_group_rows: int = launchpad(ShardConfig, "row_group_rows")
    encode_batch_docs: int = launchpad(ShardConfig, "encode_batch_docs")
    executor: Literal["local", "ray"] = launchpad(ShardConfig, "executor")
    decontaminate_ngram: int = launchpad(ShardConfig, "decontaminate_ngram")
    decontaminate_min_overlap: float = launchpad(ShardConfig, "decontaminate_min_overlap")

    def to_library(self) -> ShardConfig:
        return ShardConfig(**_values(self, ShardConfig))


check_launchpad(TokenizedShardsConfig, ShardConfig)


class TrainedCheckpointConfig(dg.Config):
    # data: which corpus batches, and where the weights start
    batches: list[str] = Field(default=[], description="corpus batches (partitions) to train on; empty: every materialized batch")
    init_from: Literal["scratch", "latest_published"] = Field(
        default="scratch", description="latest_published: continue pretraining from init_from_model's latest version (fresh warmup)"
    )
    init_from_model: str = Field(default=DEFAULT_MODEL_NAME, description="registry model that init_from latest_published starts from")
    # model: a named size, with any dimension overridden (the ModelConfig fields)
    # The presets' names as the launchpad's choices: a Literal built at run time, which no checker can read.
    preset: Literal[tuple(PRESETS)] = Field(default="demo", description="model size preset")  # type: ignore[valid-type]

    # the model dimensions, each overriding the preset's (ModelConfig)
    d_model: Optional[int] = launchpad(ModelConfig, "d_model", overrides=True)
    n_layers: Optional[int] = launchpad(ModelConfig, "n_layers", overrides=True)
    n_heads: Optional[int] = launchpad(ModelConfig, "n_heads", overrides=True)
    ffn_hidden: Optional[int] = launchpad(ModelConfig, "ffn_hidden", overrides=True)
    max_seq_len: Optional[int] = launchpad(ModelConfig, "max_seq_len", overrides=True)
    rope_theta: Optional[float] = launchpad(ModelConfig, "rope_theta", overrides=True)
    norm_eps: Optional[float] = launchpad(ModelConfig, "norm_eps", overrides=True)
    # training (TrainConfig)
    mixture: dict[str, float] = launchpad(TrainConfig, "mixture")
    seq_len: int = launchpad(TrainConfig, "seq_len")
    micro_batch: int = launchpad(TrainConfig, "micro_batch")
    grad_accum: int = launchpad(TrainConfig, "grad_accum")
    global_batch_tokens: int = launchpad(TrainConfig, "global_batch_tokens")
    steps: int = launchpad(TrainConfig, "steps")
    lr: float = launchpad(TrainConfig, "lr")
    min_lr_ratio: float = launchpad(TrainConfig, "min_lr_ratio")
    warmup_steps: int = launchpad(TrainConfig, "warmup_steps")
    lr_schedule: Literal["cosine", "wsd"] = launchpad(TrainConfig, "lr_schedule")
    decay_fraction: float = launchpad(TrainConfig, "decay_fraction")
    activation_checkpointing: bool = launchpad(TrainConfig, "activation_checkpointing")
    weight_decay: float = launchpad(TrainConfig, "weight_decay")
    beta1: float = launchpad(TrainConfig, "beta1")
    beta2: float = launchpad(TrainConfig, "beta2")
    adam_eps: float = launchpad(TrainConfig, "adam_eps")
    grad_clip: float = launchpad(TrainConfig, "grad_clip")
    zero_stage: int = launchpad(TrainConfig, "zero_stage")
    offload_optimizer: bool = launchpad(TrainConfig, "offload_optimizer")
    offload_params: bool = launchpad(TrainConfig, "offload_params")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = launchpad(TrainConfig, "dtype")
    seed: int = launchpad(TrainConfig, "seed")
    checkpoint_every: int = launchpad(TrainConfig, "checkpoint_every")
    keep_last: int = launchpad(TrainConfig, "keep_last")
    log_every: int = launchpad(TrainConfig, "log_every")
    peak_tflops: float = launchpad(TrainConfig, "peak_tflops")
    compile: bool = launchpad(TrainConfig, "compile")
    token_cache: str = launchpad(TrainConfig, "token_cache")
    token_cache_gb: float = launchpad(TrainConfig, "token_cache_gb")
    eval_every: int = launchpad(TrainConfig, "eval_every")
    eval_tokens: int = launchpad(TrainConfig, "eval_tokens")
    keep_best: bool = launchpad(TrainConfig, "keep_best")
    on_divergence: Literal["stop", "rollback"] = launchpad(TrainConfig, "on_divergence")
    spike_factor: float = launchpad(TrainConfig, "spike_factor")
    max_rollbacks: int = launchpad(TrainConfig, "max_rollbacks")
    tracker: Literal["tensorboard", "mlflow", "wandb", "none"] = launchpad(TrainConfig, "tracker")
    tracker_uri: str = launchpad(TrainConfig, "tracker_uri")
    experiment: str = launchpad(TrainConfig, "experiment")
    # where and how the ranks run (LaunchConfig)
    launcher: Literal["deepspeed", "torchrun", "ray", "none"] = launchpad(LaunchConfig, "launcher")
    nproc: int = launchpad(LaunchConfig, "nproc")
    nnodes: int = launchpad(LaunchConfig, "nnodes")
    master_addr: str = launchpad(LaunchConfig, "master_addr")
    master_port: int = launchpad(LaunchConfig, "master_port")
    hostfile: str = launchpad(LaunchConfig, "hostfile")
    ssh: bool = launchpad(LaunchConfig, "ssh")
    num_workers: int = launchpad(LaunchConfig, "num_workers")
    cpus_per_worker: int = launchpad(LaunchConfig, "cpus_per_worker")
    gpus_per_worker: int = launchpad(LaunchConfig, "gpus_per_worker")

    def build_model_config(self, vocab_size: int) -> ModelConfig:
        overrides = {name: value for name, value in _values(self, ModelConfig).items() if value is not None}
        return preset_config(self.preset, vocab_size, **overrides)

    def to_library(
        self,
        shards_uris: tuple[str, ...],
        run_uri: str,
        vocab_size: int,
        tokenizer_sha256: str,
        init_from_uri: str = "",
        shard_sources: tuple[str, ...] = (),
    ) -> TrainConfig:
        return TrainConfig(
            shards_uris=shards_uris,
            run_uri=run_uri,
            model=self.build_model_config(vocab_size),
            tokenizer_sha256=tokenizer_sha256,
            init_from_uri=init_from_uri,
            shard_sources=shard_sources,
            **_values(self, TrainConfig),
        )

    def launch_config(self) -> LaunchConfig:
        # This run is always node 0: it hosts rank 0, which reports to Dagster.
        return LaunchConfig(node_rank=0, **_values(self, LaunchConfig))

    def validate_library(self, vocab_size: int, on_gpu: bool) -> None:
        launch = self.launch_config()
        gpu = launch.gpus_per_worker > 0 if launch.launcher == "ray" else on_gpu  # ray: the cluster's workers, not this host
        self.to_library(("x",), "x", vocab_size, "").validate_for(launch.world_size, gpu, launch.ranks_on_this_node)
        check_name(self.init_from_model, "init_from_model")
        for batch in self.batches:
            check_name(batch, "batches entry")


check_launchpad(TrainedCheckpointConfig, TrainConfig, LaunchConfig, overrides=ModelConfig)


class EvalMetricsConfig(dg.Config):
    # The publishing gates (asset checks read them); the evaluation settings are EvalConfig's.
    max_loss: Optional[float] = Field(
        default=None, description="publishing gate; default 70% of ln(vocab_size), the loss of a uniform guess"
    )
    max_perplexity: Optional[float] = Field(default=None, description="publishing gate on perplexity; none by default")
    compare_with: str = Field(default=DEFAULT_MODEL_NAME, description="registry model whose latest version is the baseline; empty: none")
    regression_tolerance: float = Field(
        default=0.02, description="publishing gate: bits per byte may exceed the baseline's by this fraction"
    )
    min_scores: dict[str, float] = Field(
        default={},
        description=('publishing gate on harness results: {"task/metric": minimum}, e.g. {"llm_pipeline_heldout_continuation/acc": 0.3}'),
    )
    max_contamination: float = Field(
        default=0.2,
        description=(
            "publishing gate: at most this fraction of held-out documents (and of each task's items) contaminated by training data"
        ),
    )

    # the evaluation (EvalConfig)
    seq_len: int = launchpad(EvalConfig, "seq_len")
    max_tokens: int = launchpad(EvalConfig, "max_tokens")
    batch_size: int = launchpad(EvalConfig, "batch_size")
    dtype: Literal["auto", "fp32", "bf16"] = launchpad(EvalConfig, "dtype")
    prompts: list[str] = launchpad(EvalConfig, "prompts")
    max_new_tokens: int = launchpad(EvalConfig, "max_new_tokens")
    temperature: float = launchpad(EvalConfig, "temperature")
    top_k: int = launchpad(EvalConfig, "top_k")
    seed: int = launchpad(EvalConfig, "seed")
    harness_tasks: list[str] = launchpad(EvalConfig, "harness_tasks")
    harness_batch_size: int = launchpad(EvalConfig, "harness_batch_size")
    continuation_items: int = launchpad(EvalConfig, "continuation_items")
    contamination_ngram: int = launchpad(EvalConfig, "contamination_ngram")
    contamination_min_overlap: float = launchpad(EvalConfig, "contamination_min_overlap")

    def validate_library(self) -> None:
        library = self.to_library()
        if self.max_loss is not None and not self.max_loss > 0:
            raise ValueError(f"max_loss must be > 0 (a loss is never below 0), got {self.max_loss}")
        if self.max_perplexity is not None and not self.max_perplexity >= 1:
            raise ValueError(f"max_perplexity must be >= 1 (a perplexity is never below 1), got {self.max_perplexity}")
        for key in self.min_scores:
            task, metric = split_metric_key(key)
            if not metric or task not in library.harness_tasks:
                raise ValueError(
                    f"min_scores key {key!r} must be 'task/metric' with a task of harness_tasks "
                    f"({', '.join(library.harness_tasks) or 'none'})"
                )
        self.check_harness_tasks(standard=False)
        if not 0 <= self.max_contamination <= 1:
            raise ValueError(f"max_contamination must be between 0 and 1, got {self.max_contamination}")
        if self.compare_with:
            check_name(self.compare_with, "compare_with")
        if self.max_perplexity is not None and self.max_perplexity < 1:
            raise ValueError(f"max_perplexity must be >= 1, got {self.max_perplexity}")
        if self.regression_tolerance < 0:
            raise ValueError(f"regression_tolerance must be >= 0, got {self.regression_tolerance}")

    def to_library(self) -> EvalConfig:
        return EvalConfig(**_values(self, EvalConfig))

    def gated_metrics(self) -> dict[str, list[str]]:
        """task -> the metrics its min_scores gates read."""
        metrics: dict[str, list[str]] = {}
        for key in self.min_scores:
            task, metric = split_metric_key(key)
            metrics.setdefault(task, []).append(metric)
        return metrics

    def check_harness_tasks(self, standard: bool = True) -> None:
        """Every harness task this evaluation runs loads offline and reports each metric a min_scores gate
        reads; ValueError naming the first that does not. `standard=False` checks the local tasks only
        (the harness's task index, seconds to load, is left alone)."""
        tasks = self.to_library().harness_tasks
        check_tasks_available(tasks if standard else [t for t in tasks if t in LOCAL_TASKS], self.gated_metrics())

    def loss_threshold(self, vocab_size: int) -> float:
        return self.max_loss if self.max_loss is not None else 0.7 * math.log(vocab_size)


check_launchpad(EvalMetricsConfig, EvalConfig)


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


def check_eval_tasks(run_config: dict) -> None:
    """The harness tasks a run's eval_metrics will run (its config, or the default) load offline, and
    report every metric its min_scores gates name; ValueError naming the first that does not."""
    values = ((run_config or {}).get("ops", {}).get("eval_metrics") or {}).get("config") or {}
    EvalMetricsConfig(**values).check_harness_tasks()


def shown_error(error: Exception) -> str:
    """An error as a failure shows it: bounded, whatever value it quotes (a 10 MB name is a mistake to
    name, not to echo), and without credentials."""
    return bounded(redacted(str(error)), 2000)


def validate_run_config(run_config: dict) -> None:
    """Raise dg.Failure naming the stage and field of the first invalid value in a run's config."""
    ops = (run_config or {}).get("ops", {})
    try:
        configs = {stage: _build(stage, (ops.get(stage) or {}).get("config", {}) or {}) for stage in STAGE_CONFIGS}
    except ValueError as e:
        raise dg.Failure(description=f"Invalid run configuration, nothing was run. {shown_error(e)}") from None
    vocab_size = configs["tokenizer"].vocab_size
    checks = [
        ("raw_corpus", lambda c: c.to_library()),
        ("tokenizer", lambda c: c.validate_library()),
        ("tokenized_shards", lambda c: c.to_library()),
        ("trained_checkpoint", lambda c: c.validate_library(vocab_size, on_gpu())),
        ("eval_metrics", lambda c: c.validate_library()),
        ("published_model", lambda c: c.validate_library()),
    ]
    for stage, check in checks:
        try:
            check(configs[stage])
        except ValueError as e:
            message = shown_error(e) if str(e).startswith(stage) else f"{stage} config: {shown_error(e)}"
            raise dg.Failure(description=f"Invalid run configuration, nothing was run. {message}") from None
