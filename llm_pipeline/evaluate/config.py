"""What an evaluation runs: its settings, validated before any model loads. No torch here."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from llm_pipeline.evaluate.contamination import CONTAMINATION_MIN_OVERLAP, CONTAMINATION_NGRAM
from llm_pipeline.evaluate.local_tasks import CONTINUATION_TASK, LOCAL_TASKS
from llm_pipeline.settings import Settings
from llm_pipeline.storage.folders import bounded
from llm_pipeline.train.hardware import on_gpu, resolve_dtype

_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")  # a task, group or tag name; never a path


class EvalConfig(Settings):
    seq_len: int = Field(default=0, ge=0, le=1 << 20, description="tokens per evaluation window; 0: the model's max_seq_len")
    max_tokens: int = Field(
        default=0, ge=0, description="evaluate the first held-out documents up to this many tokens (whole documents, at least one); 0: all"
    )
    batch_size: int = Field(
        default=16,
        gt=0,
        le=4096,
        description="evaluation windows per forward pass (16: 1.5x the speed of 4 on 2 CPU cores, benchmarks/eval_bench.py)",
    )
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description=(
            "weights and activations of every evaluation (ours, the harness's, samples); auto: bf16 where the hardware runs "
            "it fast (a GPU, a CPU with AMX or AVX-512 BF16), else fp32"
        ),
    )
    prompts: tuple[str, ...] = Field(default=("import os\n", "def main(", "class "), description="sample completions of these")
    max_new_tokens: int = Field(default=48, ge=0, le=4096, description="tokens generated per sample")
    temperature: float = Field(default=0.8, ge=0, le=100, description="sampling temperature; 0: greedy")
    top_k: int = Field(default=50, ge=0, description="sample among the k likeliest tokens; 0: all")
    seed: int = Field(default=0, description="sampling seed; also picks the multiple-choice task's items")
    harness_tasks: tuple[str, ...] = Field(
        default=LOCAL_TASKS,
        description=(
            "lm-evaluation-harness tasks run on the model: the local held-out tasks, and standard tasks whose datasets are cached"
        ),
    )
    harness_batch_size: int = Field(
        default=64, gt=0, le=4096, description="the harness's requests per forward pass (64: its fastest measured on 2 CPU cores)"
    )
    continuation_items: int = Field(default=200, gt=0, le=100_000, description=f"items of the {CONTINUATION_TASK} task")
    contamination_ngram: int = Field(
        default=CONTAMINATION_NGRAM,
        gt=0,
        le=64,
        description=(
            "n of the n-grams (token ids) the contamination check compares (at most 64: longer n-grams leave most documents unchecked)"
        ),
    )
    contamination_min_overlap: float = Field(
        default=CONTAMINATION_MIN_OVERLAP,
        gt=0,
        le=1,
        description=("an eval document is contaminated when at least this share of its n-grams occur in the training split"),
    )

    @field_validator("harness_tasks")
    @classmethod
    def _task_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for task in value:
            if not _TASK_NAME.fullmatch(task):
                raise ValueError(f"harness task {bounded(task)!r} is not a task name (letters, digits, '_', '-', '.')")
        return value

    def resolved_dtype(self) -> str:
        return "bf16" if resolve_dtype(self.dtype, on_gpu()) == "bf16" else "fp32"
