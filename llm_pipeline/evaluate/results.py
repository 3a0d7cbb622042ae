"""What an evaluation measures, as values: one definition for the code that measures and every reader
(the asset's metadata and checks, the model card, the demo).

`HeldOutMetrics` (evaluate/metrics.py), `HarnessResult` (evaluate/harness.py) and
`ContaminationReport` (evaluate/contamination.py); the stage value `EvalReport` (contracts.py) holds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HeldOutMetrics(Result):
    """A model's numbers on the held-out documents."""

    loss: float  # nats per token
    perplexity: float
    bits_per_byte: float
    tokens_evaluated: int
    bytes_evaluated: int
    documents_evaluated: int
    window: int  # tokens of context per scored position, at most
    dtype: str  # of the forward passes: fp32 or bf16


class Baseline(HeldOutMetrics):
    """The published model's numbers on the same held-out documents."""

    version: str
    same_tokenizer: bool  # with another tokenizer only bits per byte compare


class Sample(Result):
    prompt: str
    completion: str


def metric_key(task: str, metric: str) -> str:
    """`task/metric`: how a harness score is named in min_scores and in the metadata."""
    return f"{task}/{metric}"


def split_metric_key(key: str) -> tuple[str, str]:
    """(task, metric) of a `task/metric` key; metric "" when there is no '/'."""
    task, _, metric = key.partition("/")
    return task, metric


class Score(Result):
    value: float
    stderr: Optional[float]  # None where the harness computes none (the perplexities)


class HarnessResult(Result):
    """lm-evaluation-harness's scores: {task: {metric: Score}}; `metric@filter` names a filtered variant."""

    results: dict[str, dict[str, Score]]
    n_samples: dict[str, int]
    lm_eval_version: str

    def scores(self) -> Iterator[tuple[str, str, Score]]:
        """(task, metric, score), task by task."""
        for task, metrics in self.results.items():
            for metric, score in metrics.items():
                yield task, metric, score

    def score(self, task: str, metric: str) -> Optional[Score]:
        return self.results.get(task, {}).get(metric)


class SetContamination(Result):
    """One set of eval documents against the training split."""

    documents: int
    too_short: int  # shorter than n tokens: cannot be checked
    sharing: int  # documents sharing any n-gram with the training split
    sharing_fraction: float
    contaminated: int  # documents with at least min_overlap of their n-grams in it
    fraction: float  # contaminated / checked
    mean_overlap: float

    @property
    def checked(self) -> int:
        return self.documents - self.too_short


class ContaminationReport(Result):
    n: int  # n-gram length, in tokens
    min_overlap: float
    sets: dict[str, SetContamination]  # "held_out" and each harness task
    fraction: float  # the worst set's

    def measured_nothing(self) -> bool:
        """No document of any set was long enough for an n-gram."""
        return all(s.checked == 0 for s in self.sets.values())

    def worst(self) -> str:
        return max(self.sets, key=lambda name: self.sets[name].fraction)
