"""The keys half of the dedup index: exact and band keys looked up and added, out of core.

`KeyIndex` answers, for a set of keys, the first kept document that has each one, among the earlier
batches' runs (read by key from storage) and this build's own (in memory up to a budget, then spilled
to local disk as sorted runs and merged, LSM style). It holds the keys of one key range: all of them
in a local build, a slice of them in each Ray worker of a cluster build (dedup/on_ray.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from llm_pipeline.corpus.dedup.runs import MemoryRun, NpyWriter, RunFile, StoredRun, merge, sort_rows
from llm_pipeline.storage.folders import Storage

NONE = (1 << 64) - 1
SHIFT = 40  # a document's number: its batch's position << SHIFT | its row in that batch
_FAN_IN = 4  # spilled runs of one size merged four at a time: log4(build / budget) levels


class OwnRuns:
    """One kind of key (exact or band) of this build's kept documents: sorted tables in memory, merged
    two by two as they grow (binary counter), spilled to a local run when the budget is reached, spilled
    runs merged `_FAN_IN` at a time."""

    def __init__(self, kind: str, width: int, first_per_key: bool, spool: str):
        self.kind, self.width, self.first_per_key, self.spool = kind, width, first_per_key, spool
        self.tables: list[MemoryRun] = []
        self.spilled: list[tuple[int, str, StoredRun]] = []  # (level, path, run)
        self.files = 0

    @property
    def memory(self) -> int:
        return sum(t.table.nbytes + t.keys.nbytes for t in self.tables)

    def runs(self) -> list:
        return [run for _, _, run in self.spilled] + self.tables

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        self.tables.append(MemoryRun(sort_rows(rows, self.first_per_key)))
        while len(self.tables) >= 2 and 2 * self.tables[-1].rows >= self.tables[-2].rows:
            b, a = self.tables.pop(), self.tables.pop()
            self.tables.append(MemoryRun(sort_rows(np.concatenate([a.table, b.table]), self.first_per_key)))

    def spill(self) -> None:
        if not self.tables:
            return
        self._write([t.table for t in self.tables], level=0)
        self.tables = []
        while len(self.spilled) >= _FAN_IN and len({level for level, _, _ in self.spilled[-_FAN_IN:]}) == 1:
            merged = self.spilled[-_FAN_IN:]
            del self.spilled[-_FAN_IN:]
            self._write([RunFile(path) for _, path, _ in merged], level=merged[0][0] + 1)
            for _, path, _ in merged:
                os.remove(path)
                os.remove(path.removesuffix(".npy") + ".fences.npy")

    def _write(self, tables: Sequence[np.ndarray | RunFile], level: int) -> None:
        self.files += 1
        name = f"{self.kind}-{self.files}.npy"
        rows = merge(tables, NpyWriter(os.path.join(self.spool, name), self.width), self.first_per_key)
        self.spilled.append((level, os.path.join(self.spool, name), StoredRun(Storage(self.spool), name, rows, self.width)))

    def write(self, path: str) -> int:
        """Everything, as one sorted run at `path` (with its fences)."""
        tables: list[np.ndarray | RunFile] = [RunFile(p) for _, p, _ in self.spilled] + [t.table for t in self.tables]
        return merge(tables, NpyWriter(path, self.width), self.first_per_key)


class Keys(Protocol):
    """Where a build's keys are looked up and added: `KeyIndex` here, or `RayKeyIndex` on a cluster."""

    @property
    def memory(self) -> int: ...
    def exact_matches(self, queries: np.ndarray) -> np.ndarray: ...
    def band_owners(self, queries: np.ndarray) -> np.ndarray: ...
    def add(self, exact_rows: np.ndarray, band_rows: np.ndarray) -> None: ...
    def finish(self, local: str, near: bool) -> tuple[int, int]: ...


class KeyIndex:
    """Exact keys ([first half, second half, number]) and band keys ([key, number]): the earlier
    batches' runs (`history`: their position's number offset and runs) and this build's own."""

    def __init__(self, history: Sequence[tuple[int, StoredRun, StoredRun | None]], own: int, spool: str, budget: int):
        self.history = list(history)
        self.own_offset = own << SHIFT
        self.budget = budget
        self.exact = OwnRuns("exact", 3, False, spool)
        self.bands = OwnRuns("bands", 2, True, spool)

    @property
    def memory(self) -> int:
        return self.exact.memory + self.bands.memory

    def exact_matches(self, queries: np.ndarray) -> np.ndarray:
        """[first half, second half, number] of every kept document whose id's first half is asked."""
        found = []
        runs = [(offset, exact) for offset, exact, _ in self.history] + [(self.own_offset, run) for run in self.exact.runs()]
        for offset, run in runs:
            _, rows = run.find(queries)
            if len(rows):
                found.append(np.column_stack([rows[:, :2], rows[:, 2] + np.uint64(offset)]))
        return np.concatenate(found) if found else np.zeros((0, 3), np.uint64)

    def band_owners(self, queries: np.ndarray) -> np.ndarray:
        """The number of each asked band key's first kept document (NONE where no document has it)."""
        owner = np.full(len(queries), NONE, dtype=np.uint64)
        runs = [(offset, bands) for offset, _, bands in self.history if bands is not None]
        for offset, run in runs + [(self.own_offset, run) for run in self.bands.runs()]:
            query, rows = run.find(queries)
            if len(query):
                np.minimum.at(owner, query, rows[:, 1] + np.uint64(offset))
        return owner

    def add(self, exact_rows: np.ndarray, band_rows: np.ndarray) -> None:
        """This build's kept documents' keys (numbers: rows in this build)."""
        self.exact.add(exact_rows)
        self.bands.add(band_rows)
        if self.memory > self.budget:
            self.exact.spill()
            self.bands.spill()

    def finish(self, local: str, near: bool) -> tuple[int, int]:
        """This build's keys as one sorted run per kind under `local`: (exact rows, band rows)."""
        exact_rows = self.exact.write(os.path.join(local, "exact.npy"))
        band_rows = self.bands.write(os.path.join(local, "bands.npy")) if near else 0
        return exact_rows, band_rows
