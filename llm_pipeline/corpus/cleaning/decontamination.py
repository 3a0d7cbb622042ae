"""Training documents that share a word n-gram (13 by default, as GPT-3's study) with evaluation items.

The evaluation side is small (a benchmark's items): its words get ids and its n-grams are hashed
and sorted once, before any file is read. A document's words are looked up in that vocabulary; only
runs of n words that all occur in some item can match, and only those are hashed and searched, so a
document costs one dictionary lookup a word. Words are lowercase runs of letters and digits, so
punctuation and case do not hide a copied question. Items shorter than n words cannot be matched
(the contamination gate after training does not count them either).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from llm_pipeline.evaluate.contamination import ngram_hashes

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class EvalNgrams:
    n: int
    vocabulary: dict[str, int]
    hashes: np.ndarray  # sorted, unique uint64
    items: int
    too_short: int

    @classmethod
    def of(cls, texts: Iterable[str], n: int = 13) -> EvalNgrams:
        item_words = [words(t) for t in texts]
        vocabulary = {w: i for i, w in enumerate(sorted({w for ws in item_words for w in ws}))}
        hashes = [ngram_hashes(np.array([vocabulary[w] for w in ws], dtype=np.int64), n) for ws in item_words]
        every = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
        return cls(n, vocabulary, every, len(item_words), sum(len(ws) < n for ws in item_words))

    def first_match(self, text: str) -> str | None:
        """The first n words of `text` that an evaluation item also has, or None."""
        if not self.hashes.size:
            return None
        doc_words = words(text)
        ids = np.fromiter((self.vocabulary.get(w, -1) for w in doc_words), dtype=np.int64, count=len(doc_words))
        count = ids.size - self.n + 1
        if count <= 0:
            return None
        unknown = np.concatenate([[0], np.cumsum(ids < 0)])
        candidates = np.flatnonzero(unknown[self.n :] - unknown[:count] == 0)  # windows of known words only
        if not candidates.size:
            return None
        hashes = ngram_hashes(np.maximum(ids, 0), self.n)[candidates]
        where = np.minimum(np.searchsorted(self.hashes, hashes), self.hashes.size - 1)
        hits = candidates[self.hashes[where] == hashes]
        if not hits.size:
            return None
        return " ".join(doc_words[hits[0] : hits[0] + self.n])


def harness_item_texts(tasks: tuple[str, ...]) -> list[str]:
    """The text of every evaluation item of the named lm-evaluation-harness tasks (from the datasets
    cache, offline): the question as the model reads it, and every answer choice or target."""
    from llm_pipeline.evaluate.harness import _standard_tasks, check_tasks_available, go_offline

    if not tasks:
        return []
    check_tasks_available(tasks)
    go_offline()
    from lm_eval.tasks import get_task_dict

    texts: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for inner in value.values():
                walk(inner)
            return
        for doc in value.eval_docs:
            parts = [value.doc_to_text(doc)]
            choices = value.doc_to_choice(doc) if value.config.doc_to_choice is not None else []
            target = value.doc_to_target(doc)
            parts += [c for c in choices if isinstance(c, str)]
            if isinstance(target, str):
                parts.append(target)
            texts.append("\n".join(str(p) for p in parts))

    walk(get_task_dict(list(tasks), _standard_tasks()))
    return texts
