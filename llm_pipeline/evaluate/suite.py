"""Everything eval_metrics reports, in one call: our held-out metrics and samples, the
lm-evaluation-harness tasks on the model in published format, and the contamination report.
Every part reads the same held-out documents."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.evaluate.contamination import contamination
from llm_pipeline.evaluate.harness import preload, run_harness
from llm_pipeline.evaluate.local_tasks import CONTINUATION_TASK, PERPLEXITY_TASK, continuation_items, write_local_tasks
from llm_pipeline.evaluate.metrics import HeldOut, evaluate, held_out_documents
from llm_pipeline.evaluate.results import ContaminationReport, HarnessResult, HeldOutMetrics, Sample
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.hf_folder import export_local
from llm_pipeline.train.token_store import TokenStream

HELD_OUT = "held_out"  # the contamination report's name for the held-out documents


@dataclass(frozen=True)
class SuiteResult:
    held_out_metrics: HeldOutMetrics
    samples: tuple[Sample, ...]
    harness: HarnessResult | None  # None when no harness task ran
    harness_skipped: dict[str, str]  # task -> why it was left out
    contamination: ContaminationReport
    seconds: dict[str, float]  # by part: held_out, harness, contamination
    held_out: HeldOut  # the documents scored
    task_data: dict[str, str]  # the local harness tasks' data files, {name: JSON Lines}


def run_suite(
    final: Storage,
    val_tokens: np.ndarray | TokenStream,
    train_tokens: Callable[[], Iterator[np.ndarray]],
    tokenizer_json: str,
    eos_id: int,
    cfg: EvalConfig,
    work_dir: str,
) -> SuiteResult:
    """`train_tokens()` streams the training split (for the contamination check); `work_dir` is a
    local scratch folder (the model in Hugging Face format, the local tasks)."""
    seconds = {}
    imports = preload() if cfg.harness_tasks else None
    started = time.perf_counter()
    tokenizer = Tokenizer.from_str(tokenizer_json)
    every = held_out_documents(val_tokens, eos_id, tokenizer)
    held_out = every.first(cfg.max_tokens)
    metrics, samples = evaluate(final, held_out, tokenizer_json, eos_id, cfg)
    seconds["held_out"] = time.perf_counter() - started

    task_data: dict[str, str] = {}
    harness: HarnessResult | None = None
    task_items: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    tasks = list(cfg.harness_tasks)
    if tasks:
        started = time.perf_counter()
        items = []
        if CONTINUATION_TASK in tasks:
            # From every held-out document: max_tokens bounds the scoring, not where items come from.
            limit = metrics.window // 2
            try:
                items = continuation_items(
                    every.texts,
                    cfg.continuation_items,
                    cfg.seed,
                    too_long=lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids) > limit,
                )
            except ValueError as e:  # too small a held-out split; a min_scores gate on the task then fails
                skipped[CONTINUATION_TASK] = str(e)
                tasks.remove(CONTINUATION_TASK)
        tasks_dir, model_dir = os.path.join(work_dir, "harness_tasks"), os.path.join(work_dir, "model")
        task_data = write_local_tasks(tasks_dir, held_out.texts, items)
        if tasks:
            export_local(final, model_dir, tokenizer_json, eos_id)
            if imports is not None:
                imports.join()
            harness, task_items = run_harness(model_dir, tasks, tasks_dir, metrics.window, cfg.harness_batch_size, cfg.seed, metrics.dtype)
        seconds["harness"] = time.perf_counter() - started

    started = time.perf_counter()
    report = contamination_report(held_out, task_items, tokenizer, train_tokens, cfg)
    seconds["contamination"] = time.perf_counter() - started
    return SuiteResult(metrics, samples, harness, skipped, report, seconds, held_out, task_data)


def contamination_report(
    held_out: HeldOut,
    task_items: dict[str, list[str]],
    tokenizer: Tokenizer,
    train_tokens: Callable[[], Iterator[np.ndarray]],
    cfg: EvalConfig,
) -> ContaminationReport:
    """The held-out documents and every harness task's items against the training split."""
    sets = {HELD_OUT: held_out.ids}
    for task, texts in task_items.items():
        if task != PERPLEXITY_TASK:  # its items are the held-out documents themselves
            sets[task] = [np.array(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    report = contamination(train_tokens(), sets, cfg.contamination_ngram, cfg.contamination_min_overlap)
    return ContaminationReport(
        n=cfg.contamination_ngram,
        min_overlap=cfg.contamination_min_overlap,
        sets=report,
        fraction=max(r.fraction for r in report.values()),
    )
