"""What each stage hands the next: one frozen value per asset.

    raw_corpus        -> CorpusRef          (one per corpus batch)
    tokenizer         -> TokenizerRef
    tokenized_shards  -> ShardSetRef        (one per corpus batch)
    trained_checkpoint-> CheckpointRef
    eval_metrics      -> EvalReport
    published_model   -> PublishedModelRef

A value says where a stage's artifact is and the few facts the next stages decide on; the artifact
itself (Parquet, tokenizer.json, safetensors) stays in storage. A stage that needs two upstream
values takes both as inputs, so the graph shows what each stage uses: a value records what it was
made from (a checkpoint its shard sets and tokenizer hash), never another stage's value for a later
stage to dig out.

`metadata()` is the part of a value shown in the UI and read back by the sensors (`from_metadata`),
one schema for both: a sensor never reads a key an asset did not declare here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from llm_pipeline.evaluate.results import Baseline, ContaminationReport, HarnessResult, Sample
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.summary import SourceMix
from llm_pipeline.train.tracking import TrackerRun


class StageValue(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def metadata(self) -> dict[str, Any]:
        """Every field, as plain values (flat values only: override where a field is nested)."""
        return self.model_dump()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]):
        """The value back from the materialization's metadata values (`{key: entry.value}`)."""
        return cls.model_validate({name: metadata[name] for name in cls.model_fields if name in metadata})


class CorpusRef(StageValue):
    """One batch's cleaned documents: Parquet files plus manifest.json under `uri`."""

    uri: str
    batch: str
    manifest_sha256: str
    documents: int
    text_bytes: int


class TokenizerRef(StageValue):
    """tokenizer.json (and the encoder engine's identity report) under `uri`."""

    uri: str
    sha256: str  # of the tokenizer.json text: what shards and checkpoints record as "made with"
    vocab_size: int  # the id space: every id the tokenizer can emit is below it (the model's embedding rows)
    eos_id: int
    engine: str  # the fastest encoder proven to give identical ids


class ShardSetRef(StageValue):
    """One batch's train/val token shards and their manifest under `uri`."""

    uri: str
    batch: str
    manifest_sha256: str
    tokenizer_sha256: str
    train_tokens: int
    val_tokens: int
    corpus_uri: str
    corpus_manifest_sha256: str


class CheckpointRef(StageValue):
    """A training run (`run_uri`: config, checkpoints) and its consolidated model (`final_uri`)."""

    run_uri: str
    final_uri: str
    checkpoint: str  # the checkpoint the model is, e.g. step_00000200: the last, or with keep_best the best validation's
    steps: int
    tokens_seen: int
    final_loss: float
    train_config: TrainConfig  # as the trainer read it
    data: tuple[ShardSetRef, ...]  # the batches trained on, in batch order
    tokenizer_sha256: str
    init_from: str  # the published version it started from; "" from scratch
    mixture: dict[str, SourceMix]  # the realized mix per source, for the model card
    # The experiment tracker run its curves went to; eval_metrics logs there too. (A value stored
    # before trackers existed has none.)
    tracker: TrackerRun = TrackerRun(kind="none", run_id="", link="")

    def metadata(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tokens_seen": self.tokens_seen,
            "tokenizer_sha256": self.tokenizer_sha256,
            # Each batch's shard manifest: the retraining sensor compares content, not run folders.
            "batches": self.batches(),
            "train_tokens_available": sum(d.train_tokens for d in self.data),
            "init_from": self.init_from or "scratch",
        }

    def tokenizer_mismatch(self, tokenizer: TokenizerRef) -> str:
        """Why `tokenizer` cannot be used with this model ("" when it is the one it was trained with)."""
        if tokenizer.sha256 == self.tokenizer_sha256:
            return ""
        return (
            f"the checkpoint {self.final_uri} was trained with tokenizer {self.tokenizer_sha256[:12]}, "
            f"the tokenizer asset is now {tokenizer.sha256[:12]}"
        )

    def batches(self) -> dict[str, str]:
        return {d.batch: d.manifest_sha256 for d in self.data}

    @staticmethod
    def batches_from_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
        """The `batches` a materialization's metadata declares ({} before any training)."""
        return dict(metadata.get("batches") or {})


class Gates(BaseModel):
    """The thresholds the blocking asset checks apply, as configured for this evaluation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_loss: float
    max_perplexity: Optional[float]
    regression_tolerance: float
    min_scores: dict[str, float]
    max_contamination: float


class EvalReport(StageValue):
    """The evaluation of one checkpoint (`checkpoint_uri`), with the gates the checks apply: its held-out
    numbers (evaluate/results.py HeldOutMetrics, field by field), the harness scores, the contamination
    report and the published model's numbers on the same documents."""

    checkpoint_uri: str  # the evaluated CheckpointRef.final_uri: published_model publishes only this one
    checkpoint: str
    loss: float
    perplexity: float
    bits_per_byte: float
    uniform_loss: float  # ln(vocab size): the loss of a uniform guess
    tokens_evaluated: int
    bytes_evaluated: int
    documents_evaluated: int
    window: int
    dtype: str
    samples: tuple[Sample, ...]
    harness: Optional[HarnessResult]  # None when no harness task ran
    harness_skipped: dict[str, str]  # task -> why it was left out
    contamination: ContaminationReport
    seconds: dict[str, float]  # by part: held_out, harness, contamination
    gates: Gates
    baseline: Optional[Baseline]  # None when nothing is published to compare with

    def metadata(self) -> dict[str, Any]:
        return {"tokens_evaluated": self.tokens_evaluated, "documents_evaluated": self.documents_evaluated, "dtype": self.dtype}

    def headline(self) -> dict[str, float | int]:
        """The numbers the model card and the registry carry."""
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens_evaluated": self.tokens_evaluated,
        }


class PublishedModelRef(StageValue):
    """A version folder in the registry that `transformers` loads."""

    uri: str
    name: str
    version: str
    registry: str
