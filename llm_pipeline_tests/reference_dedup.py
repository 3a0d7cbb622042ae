"""A reference dedup that holds everything in memory: every kept id in a set, every band bucket's
first document in a dict, signatures in an array. The tests hold the persistent index to its
decisions."""

from __future__ import annotations

import numpy as np

from llm_pipeline.corpus.near_dedup import NUM_PERM, band_keys, document_signatures


class NearDuplicateIndex:
    """Kept documents' signatures; `check` answers for a new one and remembers it when it is kept."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.buckets: dict[int, int] = {}
        self.sigs = np.zeros((1024, NUM_PERM), dtype=np.uint32)
        self.count = 0

    def check(self, sig: np.ndarray, keys: np.ndarray) -> tuple[int, float] | None:
        """(index of the kept document it duplicates, estimated Jaccard), or None: then it is added."""
        for key in keys.tolist():
            other = self.buckets.get(key)
            if other is not None:
                similarity = float(np.mean(self.sigs[other] == sig))
                if similarity >= self.threshold:
                    return other, similarity
        if self.count == len(self.sigs):
            self.sigs = np.concatenate([self.sigs, np.zeros_like(self.sigs)])
        self.sigs[self.count] = sig
        for key in keys.tolist():
            self.buckets.setdefault(key, self.count)
        self.count += 1
        return None


def reference_decisions(batches: list[list[str]], ids: list[list[str]], threshold: float = 0.85) -> list[list[str]]:
    """'keep', 'exact_duplicate' or 'near_duplicate' for every document, batch after batch."""
    seen: set[str] = set()
    near = NearDuplicateIndex(threshold)
    out = []
    for texts, doc_ids in zip(batches, ids):
        sigs = document_signatures(texts)
        keys = band_keys(sigs)
        verdicts = []
        for i, doc_id in enumerate(doc_ids):
            if doc_id in seen:
                verdicts.append("exact_duplicate")
            elif near.check(sigs[i], keys[i]) is not None:
                verdicts.append("near_duplicate")
            else:
                seen.add(doc_id)
                verdicts.append("keep")
        out.append(verdicts)
    return out
