"""EleutherAI's lm-evaluation-harness on a model folder in published (Hugging Face) format, offline.

Nothing is downloaded: the Hugging Face libraries run in offline mode, the model and tokenizer are
read from a local folder, the local tasks' data from local files, and a standard task works only
when its dataset is already in the datasets cache (`HF_DATASETS_CACHE`, ~/.cache/huggingface/datasets
by default); `python -m llm_pipeline.evaluate.harness cache <task> ...` fills it on a machine with
network. Results come back as a `HarnessResult` (evaluate/results.py): {task: {metric: Score}}, the
stderr None where the harness computes none (the perplexities).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from functools import lru_cache

from llm_pipeline.evaluate.local_tasks import LOCAL_TASK_METRICS, LOCAL_TASKS
from llm_pipeline.evaluate.results import HarnessResult, Score, metric_key
from llm_pipeline.train.hardware import on_gpu

_OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Bootstrap resamples for the metrics whose stderr the harness bootstraps; acc's is analytic.
_BOOTSTRAP_ITERS = 1000


def go_offline() -> None:
    """The Hugging Face libraries read these once, at import; a library already imported in this
    process is switched too."""
    os.environ.update(_OFFLINE)
    for module, names in (
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
        ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
    ):
        if module in sys.modules:
            for name in names:
                setattr(sys.modules[module], name, True)


@lru_cache(maxsize=1)
def _standard_tasks():
    from lm_eval.tasks import TaskManager  # indexes the harness's ~15k task files: seconds, once

    return TaskManager()


def check_tasks_available(tasks: tuple[str, ...] | list[str], metrics: dict[str, list[str]] | None = None) -> None:
    """Raise ValueError naming the first task the harness does not know or cannot load offline, or the
    first of `metrics` (task -> metric names a gate reads) that its task does not report. The local
    tasks are written at evaluation time and always load."""
    metrics = metrics or {}
    for task in LOCAL_TASKS:
        _check_metrics(task, metrics.get(task, []), LOCAL_TASK_METRICS[task])
    standard = [t for t in tasks if t not in LOCAL_TASKS]
    if not standard:
        return
    go_offline()
    import datasets.config
    from lm_eval.tasks import get_task_dict

    manager = _standard_tasks()
    for task in standard:
        if task not in manager.all_tasks:
            raise ValueError(
                f"harness task {task!r} is not a task, group or tag lm-evaluation-harness knows (local tasks: {', '.join(LOCAL_TASKS)})"
            )
        try:
            loaded = get_task_dict([task], manager)
        except Exception as e:  # noqa: BLE001 - datasets' offline errors have many types
            raise ValueError(
                f"harness task {task!r} cannot be loaded offline: its dataset is not in the Hugging Face "
                f"datasets cache ({datasets.config.HF_DATASETS_CACHE}). Cache it on a machine with network: "
                f"python -m llm_pipeline.evaluate.harness cache {task}  ({type(e).__name__}: {e})"
            ) from None
        if metrics.get(task):
            _check_metrics(task, metrics[task], _reported_metrics(loaded))


def _reported_metrics(task_dict: dict) -> set[str]:
    """The metric names the loaded task (or every task of a group) aggregates."""
    names = set()
    for value in task_dict.values():
        if isinstance(value, dict):
            names |= _reported_metrics(value)
        elif hasattr(value, "aggregation"):
            names |= set(value.aggregation())
    return names


def _check_metrics(task: str, asked: list[str], reported) -> None:
    for metric in asked:
        if metric.partition("@")[0] not in reported:  # "metric@filter" names a filtered variant of the metric
            raise ValueError(
                f"min_scores key {metric_key(task, metric)!r}: task {task!r} does not report {metric!r} "
                f"(it reports {', '.join(sorted(reported)) or 'nothing'})"
            )


def preload() -> threading.Thread:
    """Import the harness and the transformers model code in a background thread (about 7 s of
    Python on 2 cores): started while our own scoring keeps the cores busy in torch, which releases
    the GIL, so the imports cost little by the time run_harness needs them."""

    def imports():
        go_offline()
        import lm_eval.models.huggingface  # noqa: F401
        import transformers.models.llama.modeling_llama  # noqa: F401

    thread = threading.Thread(target=imports, name="harness-imports", daemon=True)
    thread.start()
    return thread


def run_harness(
    model_dir: str, tasks: list[str], local_tasks_dir: str, window: int, batch_size: int, seed: int = 0, dtype: str = "fp32"
) -> tuple[HarnessResult, dict[str, list[str]]]:
    """Every task in `tasks` on the model in `model_dir`: the scores, and each task's items as the
    model read them ({task: [text]}, for the contamination report)."""
    go_offline()
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    standard = [t for t in tasks if t not in LOCAL_TASKS]
    # The harness's own ~15k task files are indexed only when a standard task is asked for (seconds).
    manager = TaskManager(include_path=local_tasks_dir, include_defaults=bool(standard))
    model = HFLM(
        pretrained=model_dir,
        backend="causal",
        max_length=window,
        batch_size=batch_size,
        device="cuda" if on_gpu() else "cpu",
        dtype="bfloat16" if dtype == "bf16" else "float32",
    )
    out = lm_eval.simple_evaluate(
        model=model,
        tasks=list(tasks),
        task_manager=manager,
        bootstrap_iters=_BOOTSTRAP_ITERS,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    results: dict[str, dict[str, Score]] = {}
    for task, values in out["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            name = metric if filter_name == "none" else f"{metric}@{filter_name}"
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            metrics[name] = Score(
                value=float(value), stderr=float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            )
        if metrics:
            results[task] = metrics
    items = {task: [_item_text(s) for s in samples] for task, samples in out.get("samples", {}).items()}
    result = HarnessResult(results=results, n_samples={t: len(v) for t, v in items.items()}, lm_eval_version=_version())
    return result, items


def _item_text(sample: dict) -> str:
    """The text of one task item: every distinct string the model was asked about, in order."""
    seen: dict[str, None] = {}
    for argument in sample.get("arguments", []):
        for part in argument if isinstance(argument, (tuple, list)) else [argument]:
            if isinstance(part, str):
                seen.setdefault(part, None)
    return "".join(seen)


def _version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _cache(tasks: list[str]) -> None:
    """Download the named standard tasks' datasets into the datasets cache (needs network)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    for task, loaded in get_task_dict(tasks, TaskManager()).items():
        print(f"cached {task}: {loaded}")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "cache":
        sys.exit("usage: python -m llm_pipeline.evaluate.harness cache TASK [TASK ...]")
    _cache(sys.argv[2:])
