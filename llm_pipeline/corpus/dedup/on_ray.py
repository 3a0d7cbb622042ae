"""The dedup index's keys on a Ray cluster: one worker (a Ray actor) per key range.

The key space is cut into `ranges` equal ranges by the keys' top bits; each worker holds the keys of
its range, looks them up in the earlier batches' runs (read from storage by key, as a local build
does) and in this build's own (in its memory up to its share of the budget, then spilled to its
node's disk). The driver splits each part's keys by range, sends them, and makes the decisions from
the answers; it holds none of the index. At the end each worker's run of its range comes back in
bounded pieces and is appended in range order: the ranges are ordered, so the result is the sorted
run a local build writes, byte for byte. Every node must reach the storage root (the earlier
batches' segments are read where the worker runs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm_pipeline.corpus.dedup.keys import KeyIndex
from llm_pipeline.corpus.dedup.runs import NpyWriter, RunFile, StoredRun

_PIECE_ROWS = 1 << 18  # rows of a worker's run sent back at a time
_MAX_PENDING = 64  # inserts in flight before the driver waits for the oldest


class KeyRangeWorker:
    """A `KeyIndex` for one key range, in a Ray actor with its own spool folder."""

    def __init__(self, history: Sequence[tuple[int, StoredRun, StoredRun | None]], own: int, budget: int):
        self.spool = tempfile.mkdtemp(prefix="llm-pipeline-dedup-")
        self.index = KeyIndex(history, own, self.spool, budget)

    def exact_matches(self, queries: np.ndarray) -> np.ndarray:
        return self.index.exact_matches(queries)

    def band_owners(self, queries: np.ndarray) -> np.ndarray:
        return self.index.band_owners(queries)

    def add(self, exact_rows: np.ndarray, band_rows: np.ndarray) -> None:
        self.index.add(exact_rows, band_rows)

    def finish(self, near: bool) -> tuple[int, int]:
        final = os.path.join(self.spool, "final")
        os.makedirs(final)
        return self.index.finish(final, near)

    def piece(self, kind: str, start: int, rows: int) -> np.ndarray:
        return RunFile(os.path.join(self.spool, "final", f"{kind}.npy"))[start : start + rows]

    def close(self) -> None:
        shutil.rmtree(self.spool, ignore_errors=True)


class RayKeyIndex:
    """`KeyIndex`'s interface over Ray workers, one per key range (a power of two of them)."""

    def __init__(self, history: Sequence[tuple[int, StoredRun, StoredRun | None]], own: int, spool: str, budget: int, ranges: int):
        import ray

        if ranges < 1 or ranges & (ranges - 1):
            raise ValueError(f"dedup key ranges must be a power of two, got {ranges}")
        self.ray = ray
        # no CPU reserved: the workers wait on the driver most of the time, and the cleaning tasks need the cores
        worker = ray.remote(num_cpus=0, max_restarts=0)(KeyRangeWorker)
        self.workers: list[Any] = [
            worker.options(scheduling_strategy="SPREAD").remote(history, own, max(1, budget // ranges)) for _ in range(ranges)
        ]
        self.shift = 64 - (ranges.bit_length() - 1)
        self.pending: list = []

    @property
    def memory(self) -> int:
        return 0  # the driver holds no keys

    def _range_of(self, keys: np.ndarray) -> np.ndarray:
        if self.shift == 64:
            return np.zeros(len(keys), dtype=np.int64)
        return (keys >> np.uint64(self.shift)).astype(np.int64)

    def _asked(self, method: str, queries: np.ndarray) -> list:
        """Each worker's answer for its share of `queries` (sorted), in range order."""
        bounds = np.searchsorted(self._range_of(queries), np.arange(len(self.workers) + 1))
        calls = [
            getattr(worker, method).remote(queries[bounds[i] : bounds[i + 1]])
            for i, worker in enumerate(self.workers)
            if bounds[i + 1] > bounds[i]
        ]
        return self._get(calls)

    def _get(self, calls: list) -> list:
        try:
            return self.ray.get(calls)
        except self.ray.exceptions.RayActorError as e:
            raise RuntimeError(f"a dedup key-range worker was lost (its node died?): {e}; build the batch again") from None

    def exact_matches(self, queries: np.ndarray) -> np.ndarray:
        found = self._asked("exact_matches", queries)
        return np.concatenate(found) if found else np.zeros((0, 3), np.uint64)

    def band_owners(self, queries: np.ndarray) -> np.ndarray:
        found = self._asked("band_owners", queries)
        return np.concatenate(found) if found else np.zeros(0, np.uint64)

    def add(self, exact_rows: np.ndarray, band_rows: np.ndarray) -> None:
        # Calls from one caller to one actor run in the order made: a later lookup sees these keys.
        exact_range, band_range = self._range_of(exact_rows[:, 0]), self._range_of(band_rows[:, 0])
        for i, worker in enumerate(self.workers):
            self.pending.append(worker.add.remote(exact_rows[exact_range == i], band_rows[band_range == i]))
        if len(self.pending) > _MAX_PENDING:
            self._get(self.pending[: -_MAX_PENDING // 2])
            del self.pending[: -_MAX_PENDING // 2]

    def finish(self, local: str, near: bool) -> tuple[int, int]:
        self._get(self.pending)
        counts = self._get([worker.finish.remote(near) for worker in self.workers])
        totals = []
        for kind, width, column in (("exact", 3, 0), ("bands", 2, 1)):
            if kind == "bands" and not near:
                totals.append(0)
                continue
            out = NpyWriter(os.path.join(local, f"{kind}.npy"), width)
            for worker, rows in zip(self.workers, (c[column] for c in counts)):
                for start in range(0, rows, _PIECE_ROWS):
                    out.append(self._get([worker.piece.remote(kind, start, _PIECE_ROWS)])[0])
            totals.append(out.close())
        self._get([worker.close.remote() for worker in self.workers])
        for worker in self.workers:
            self.ray.kill(worker)
        return totals[0], totals[1]


def key_ranges(cpus: int) -> int:
    """Workers for a cluster of `cpus` cores: the largest power of two up to the cores, 2 to 16."""
    n = max(2, min(16, cpus))
    return 1 << (n.bit_length() - 1)
