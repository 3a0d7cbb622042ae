"""`final/summary.json`: what a finished training run reports, one definition for the trainer that
writes it and every reader (the asset's metadata, the demo, the benchmarks).

The trainer writes it last, so its presence means the run finished (`exists`). Stored as JSON; read
back through the model, so a renamed or missing field fails `mypy` where it is read, and a file that
does not hold the fields fails by name when it is read, not somewhere after.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import parsed
from llm_pipeline.train.tracking import TrackerRun

SUMMARY = "summary.json"


class SourceMix(BaseModel):
    """What one data source contributed to the samples a run drew."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float  # as configured (relative)
    samples: int
    share: float  # of the samples drawn
    tokens: int
    epochs: float  # passes over the source's windows


class Rollback(BaseModel):
    """A divergence the run rolled back from (TrainConfig.on_divergence rollback)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: int  # where the loss diverged
    loss: float
    why: str
    resumed_from: str  # the checkpoint it went back to
    skipped_samples: tuple[int, int]  # the global samples [first, end) drawn since it, never trained on


class TrainSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int
    checkpoint: str  # the newest complete checkpoint's tag, e.g. step_00000200
    tokens_seen: int
    final_loss: float
    losses: tuple[tuple[int, float], ...]  # (step, loss averaged over ranks)
    world_size: int
    zero_stage: int
    dtype: str
    num_params: int
    flops_per_token: int
    wall_time_s: float
    train_loop_s: float
    tokens_per_s: float  # the whole loop, checkpoint saves included
    steady_tokens_per_s: Optional[float]  # the steps after the first, saves left out; None with one step
    mfu: Optional[float]  # on a GPU whose peak is known; None elsewhere
    accelerator: str
    grad_accum: int
    resumed_from: Optional[str]  # the checkpoint tag this launch resumed from
    device: str
    peak_rss_bytes_per_rank: tuple[int, ...]
    samples_seen: int  # global samples drawn: the loader's whole state
    compiled: bool
    attention: str  # "flash", or "not flash: <why>"
    step_host_ms: dict[str, float]  # host milliseconds per step by phase (train/step_clock.py)
    mixture: dict[str, SourceMix]  # the mix the samples realized; one source "all" without a mixture
    validations: tuple[tuple[int, float, Optional[float]], ...]  # (step, loss, bits per byte) while it trained
    exported_checkpoint: str  # the checkpoint final/ holds: the last, or with keep_best the best validation's
    best_validation_loss: Optional[float]  # with keep_best
    rollbacks: tuple[Rollback, ...]
    tracker: TrackerRun

    def write(self, final: Storage) -> None:
        final.write_json(SUMMARY, self.model_dump(mode="json"))

    @classmethod
    def exists(cls, final: Storage) -> bool:
        return final.exists(SUMMARY)

    @classmethod
    def read(cls, final: Storage) -> TrainSummary:
        return parsed(cls, final.read_json(SUMMARY), f"training summary {final.uri}/{SUMMARY}")
