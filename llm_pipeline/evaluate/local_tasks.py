"""lm-evaluation-harness tasks written from this run's held-out documents (never training data).

`llm_pipeline_heldout_perplexity` (loglikelihood_rolling): the held-out documents themselves, for
the harness's word perplexity, byte perplexity and bits per byte. `llm_pipeline_heldout_continuation`
(multiple_choice): a passage of a held-out document and four candidate continuations, the true one
and three taken from other held-out documents; scored by the harness's acc and acc_norm (chance 25%).

They are ordinary task files: a YAML per task and its JSON Lines data in one folder, which
`lm_eval --include_path <folder> --tasks <name>` runs as well as this pipeline does.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

PERPLEXITY_TASK = "llm_pipeline_heldout_perplexity"
CONTINUATION_TASK = "llm_pipeline_heldout_continuation"
LOCAL_TASKS = (PERPLEXITY_TASK, CONTINUATION_TASK)
# What each local task reports: the harness's metric names, the keys a min_scores gate may name.
LOCAL_TASK_METRICS = {PERPLEXITY_TASK: ("word_perplexity", "byte_perplexity", "bits_per_byte"), CONTINUATION_TASK: ("acc", "acc_norm")}
CHOICES = 4

_PIECE = 80  # a line longer than this is cut at spaces, so prose gives passages as code does


@dataclass(frozen=True)
class ContinuationShape:
    context_chars: int = 300  # at most this much text before the cut (whole pieces)
    min_chars: int = 48  # a continuation has at least this much text ...
    max_chars: int = 160  # ... and at most this much


def _pieces(text: str) -> list[str]:
    """`text` cut after each newline, long lines also at spaces; ''.join(pieces) == text."""
    pieces = []
    for line in re.findall(r"[^\n]*\n|[^\n]+", text):
        while len(line) > _PIECE:
            cut = line.rfind(" ", 1, _PIECE)
            cut = cut + 1 if cut > 0 else _PIECE
            pieces.append(line[:cut])
            line = line[cut:]
        pieces.append(line)
    return pieces


def _passages(text: str, shape: ContinuationShape) -> list[tuple[int, str, str]]:
    """Every (offset, context, continuation) cut of one document at a piece border, in order."""
    pieces = _pieces(text)
    starts = [0]
    for p in pieces:
        starts.append(starts[-1] + len(p))
    found = []
    for i in range(1, len(pieces)):
        first = i
        while first > 0 and starts[i] - starts[first - 1] <= shape.context_chars:
            first -= 1
        end = i
        while end < len(pieces) and starts[end] - starts[i] < shape.min_chars:
            end += 1
        context, continuation = text[starts[first] : starts[i]], text[starts[i] : starts[end]]
        if (
            first < i
            and context.strip()
            and shape.min_chars <= len(continuation) <= shape.max_chars
            and len(continuation.strip()) >= shape.min_chars // 2
        ):
            found.append((starts[i], context, continuation))
    return found


def continuation_items(
    texts: list[str], count: int, seed: int, shape: ContinuationShape = ContinuationShape(), too_long: Callable[[str], bool] | None = None
) -> list[dict]:
    """Up to `count` multiple-choice items from the documents `texts`, the same for the same input.
    Each document's first passage comes first (its start), then passages from anywhere. `too_long`
    leaves out continuations the model cannot read whole (the harness needs them in its window)."""
    passages = [[(doc, *p) for p in _passages(text, shape) if not (too_long and too_long(p[2]))] for doc, text in enumerate(texts)]
    if sum(1 for p in passages if p) < 2:
        raise ValueError(
            f"the {CONTINUATION_TASK} task needs passages from at least 2 held-out documents, "
            f"found {sum(1 for p in passages if p)} in {len(texts)}; hold out more documents "
            f"(tokenized_shards val_fraction) or leave the task out of harness_tasks"
        )
    rng = random.Random(seed)
    firsts = [p[0] for p in passages if p]
    rest = [x for p in passages for x in p[1:]]
    rng.shuffle(firsts)
    rng.shuffle(rest)
    chosen = sorted((firsts + rest)[:count])
    pool = [x for p in passages for x in p]
    items = []
    for doc, offset, context, continuation in chosen:
        distractors = _distractors(pool, doc, continuation, rng)
        if distractors is None:
            continue
        label = rng.randrange(CHOICES)
        choices = distractors[:label] + [continuation] + distractors[label:]
        items.append({"context": context, "choices": choices, "label": label, "document": doc, "offset": offset})
    return items


def _distractors(pool: list[tuple], doc: int, answer: str, rng: random.Random) -> list[str] | None:
    """CHOICES - 1 continuations from documents other than `doc`, distinct from the answer and each
    other; None if the pool has too few. Random draws first (constant time per item on a large
    held-out split), an ordered scan of a shuffled copy of the pool if they keep colliding."""
    taken = {answer.strip()}
    picks: list[str] = []

    def offer(candidate: tuple) -> None:
        if candidate[0] != doc and candidate[3].strip() not in taken:
            taken.add(candidate[3].strip())
            picks.append(candidate[3])

    for _ in range(16 * CHOICES):
        if len(picks) == CHOICES - 1:
            return picks
        offer(pool[rng.randrange(len(pool))])
    for candidate in rng.sample(pool, len(pool)):
        if len(picks) == CHOICES - 1:
            break
        offer(candidate)
    return picks if len(picks) == CHOICES - 1 else None


def _yaml(values: dict, indent: str = "") -> str:
    """A small YAML writer for task files: JSON scalars are YAML scalars."""
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:\n{_yaml(value, indent + '  ')}")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}:")
            lines += [f"{indent}  - " + _yaml(v, indent + "    ").lstrip() for v in value]
        else:
            lines.append(f"{indent}{key}: {json.dumps(value)}")
    return "\n".join(lines)


def task_files(data_dir: str, cache_dir: str | None = None, tasks: tuple[str, ...] = LOCAL_TASKS) -> dict[str, str]:
    """The `tasks`' YAML, reading their data from `data_dir` (a local folder or an fsspec URI)."""

    def dataset(name):
        kwargs: dict[str, object] = {"data_files": {"test": f"{data_dir}/{name}.jsonl"}}
        if cache_dir:
            kwargs["cache_dir"] = cache_dir
        return {"dataset_path": "json", "dataset_kwargs": kwargs, "test_split": "test"}

    perplexity = {
        "task": PERPLEXITY_TASK,
        **dataset(PERPLEXITY_TASK),
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "metric_list": [{"metric": m} for m in LOCAL_TASK_METRICS[PERPLEXITY_TASK]],
        "metadata": {"version": 1},
    }
    continuation = {
        "task": CONTINUATION_TASK,
        **dataset(CONTINUATION_TASK),
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": "",  # the passage and its continuation are contiguous text
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in LOCAL_TASK_METRICS[CONTINUATION_TASK]],
        "metadata": {"version": 1},
    }
    return {f"{task['task']}.yaml": _yaml(task) + "\n" for task in (perplexity, continuation) if task["task"] in tasks}


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def local_task_files(texts: list[str], items: list[dict], data_dir: str, cache_dir: str | None = None) -> dict[str, str]:
    """The tasks' files, data and YAML, the YAML reading the data from `data_dir`; the
    multiple-choice task only when it has items."""
    data = {PERPLEXITY_TASK: jsonl([{"text": t} for t in texts])}
    if items:
        data[CONTINUATION_TASK] = jsonl(items)
    return {**{f"{name}.jsonl": body for name, body in data.items()}, **task_files(data_dir, cache_dir, tuple(data))}


def write_local_tasks(folder: str, texts: list[str], items: list[dict]) -> dict[str, str]:
    """The tasks into the local `folder`, their converted datasets cached there too (not in
    ~/.cache, which would collect one copy per run). Returns the data files ({name: JSON Lines}),
    which `task_files` can point at wherever they are stored."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    files = local_task_files(texts, items, folder, os.path.join(folder, ".datasets_cache"))
    for name, body in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(body)
    return {name: body for name, body in files.items() if name.endswith(".jsonl")}
