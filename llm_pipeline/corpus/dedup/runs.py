"""Sorted runs: the dedup index's one data structure.

A run is a table of uint64 rows sorted by its first column, the key (ties by the whole row), kept
in memory (`MemoryRun`), in a local spill file or on storage (`StoredRun`, any fsspec URI). On disk it
is a plain `.npy` file with a 128-byte header, so row i starts at byte 128 + i * row bytes, and a
`.fences.npy` beside it holds every BLOCK-th key. A lookup reads the fences once, then only the
blocks that can hold the keys asked: its cost grows with the number of keys asked and, through the
fences, a little with the run's size, never with a read of the whole run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from llm_pipeline.storage.folders import Storage, open_regular

HEADER = 128
BLOCK = 256  # rows per block: 4-6 KB, about a page per read
_READ_BYTES = 4 << 20  # blocks read and searched at a time: bounds a lookup's memory
_MERGE_ROWS = 1 << 18  # rows taken from each input per merge round: bounds a merge's memory


def npy_header(rows: int, width: int, dtype=np.uint64) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (rows, width)}
    )
    header = buf.getvalue()
    assert len(header) == HEADER, len(header)  # shapes up to 2**40 rows fit the 128 bytes
    return header


def parse_header(head: bytes, what: str) -> tuple[int, int, np.dtype]:
    """(rows, width, dtype) of a 2-D .npy file we wrote; anything else is refused naming `what`."""
    f = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise ValueError(f"format version {version}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    except ValueError as e:
        raise ValueError(f"{what} is not a dedup index file (.npy, 2-D): {e}") from None
    if f.tell() != HEADER or fortran or len(shape) != 2:
        raise ValueError(f"{what} is not a dedup index file (.npy with a {HEADER}-byte header, 2-D)")
    return shape[0], shape[1], dtype


class NpyWriter:
    """Rows appended to a local .npy file, its header written when it is closed; with `fences`, a
    `.fences.npy` beside it holds the key (column 0) of every BLOCK-th row."""

    def __init__(self, path: str, width: int, dtype=np.uint64, fences: bool = True):
        self.path, self.width, self.dtype = path, width, np.dtype(dtype)
        self.rows = 0
        self.fences: list[np.ndarray] | None = [] if fences else None
        self.f = open(path, "wb")
        self.f.write(b"\0" * HEADER)

    def append(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        assert rows.ndim == 2 and rows.shape[1] == self.width and rows.dtype == self.dtype
        if self.fences is not None:
            first = (-self.rows) % BLOCK
            self.fences.append(rows[first::BLOCK, 0].copy())
        self.f.write(np.ascontiguousarray(rows).tobytes())
        self.rows += len(rows)

    def close(self) -> int:
        self.f.seek(0)
        self.f.write(npy_header(self.rows, self.width, self.dtype))
        self.f.close()
        if self.fences is not None:
            fences = np.concatenate(self.fences) if self.fences else np.zeros(0, np.uint64)
            np.save(fences_path(self.path), fences.astype(np.uint64).reshape(-1, 1))
        return self.rows


def fences_path(path: str) -> str:
    return path.removesuffix(".npy") + ".fences.npy"


def sort_rows(table: np.ndarray, first_per_key: bool) -> np.ndarray:
    """Rows sorted by key, then by the rest of the row, last column first (the ordinal); with
    `first_per_key`, only each key's first row (the earliest kept document)."""
    order = np.lexsort(tuple(table[:, c] for c in range(table.shape[1] - 1, -1, -1)))
    table = table[order]
    if first_per_key and len(table):
        first = np.ones(len(table), dtype=bool)
        first[1:] = table[1:, 0] != table[:-1, 0]
        table = table[first]
    return table


def _matches(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, position in keys) for every key equal to a query; keys sorted, queries sorted unique."""
    lo = np.searchsorted(keys, queries, "left")
    hi = np.searchsorted(keys, queries, "right")
    counts = hi - lo
    query = np.repeat(np.arange(len(queries)), counts)
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return query, starts + np.arange(len(query))


class MemoryRun:
    def __init__(self, table: np.ndarray):
        self.table = table
        self.keys = np.ascontiguousarray(table[:, 0])
        self.rows = len(table)

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, matching row) for every row whose key is one of `queries` (sorted, unique)."""
        query, position = _matches(self.keys, queries)
        return query, self.table[position]


class StoredRun:
    """A run file on storage, read by byte ranges. Its size is checked against the rows it must hold
    when it is opened: a truncated or replaced file is refused by name, never read as fewer keys."""

    def __init__(self, folder: Storage, name: str, rows: int, width: int):
        self.folder, self.name, self.rows, self.width = folder, name, rows, width
        self.what = f"{folder.uri}/{name}"
        expected = HEADER + rows * width * 8
        try:
            size = folder.size(name)
        except FileNotFoundError:
            raise FileNotFoundError(f"dedup index file {self.what} is missing") from None
        if size != expected:
            raise ValueError(f"dedup index file {self.what} has {size:,} bytes where its record says {expected:,}: damaged")
        got = parse_header(read_ranges(folder, name, [0], [HEADER])[0], self.what)
        if got[:2] != (rows, width) or got[2] != np.dtype(np.uint64):
            raise ValueError(
                f"dedup index file {self.what} holds {got[0]} x {got[1]} {got[2]} where its record says {rows} x {width} uint64"
            )
        self._fences: np.ndarray | None = None

    @property
    def fences(self) -> np.ndarray:
        if self._fences is None:
            name = fences_path(self.name)
            data = read_ranges(self.folder, name, [0], [self.folder.size(name)])[0]
            n, width, dtype = parse_header(data[:HEADER], f"{self.folder.uri}/{name}")
            want = -(-self.rows // BLOCK)
            if (n, width) != (want, 1) or dtype != np.dtype(np.uint64) or len(data) != HEADER + 8 * n:
                raise ValueError(f"dedup index file {self.folder.uri}/{name} has {n} fences where {want} are due")
            self._fences = np.frombuffer(data, dtype=np.uint64, offset=HEADER, count=n)
        return self._fences

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, part: slice) -> np.ndarray:
        """Consecutive rows, read as one range (a merge's input)."""
        start, stop, _ = part.indices(self.rows)
        row_bytes = self.width * 8
        if stop <= start:
            return np.zeros((0, self.width), np.uint64)
        data = read_ranges(self.folder, self.name, [HEADER + start * row_bytes], [HEADER + stop * row_bytes])[0]
        return np.frombuffer(data, dtype=np.uint64).reshape(-1, self.width)

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.rows or not len(queries):
            return np.zeros(0, np.int64), np.zeros((0, self.width), np.uint64)
        fences = self.fences
        # a key can sit in any block from the last one whose fence is below it to the last one whose fence is not above it
        last = np.searchsorted(fences, queries, "right") - 1
        first = np.maximum(np.searchsorted(fences, queries, "left") - 1, 0)
        asked = last >= 0
        first, last = first[asked], last[asked]
        wide = last - first > 1  # a key repeated over more than two blocks (exact keys may repeat)
        blocks = np.unique(np.concatenate([first, last, *(np.arange(a + 1, b) for a, b in zip(first[wide], last[wide]))]))
        if not blocks.size:
            return np.zeros(0, np.int64), np.zeros((0, self.width), np.uint64)
        row_bytes = self.width * 8
        block_bytes = BLOCK * row_bytes
        found_query, found_rows = [], []
        for group in np.array_split(blocks, -(-blocks.size * block_bytes // _READ_BYTES)):
            # consecutive blocks are read as one range
            breaks = np.flatnonzero(np.diff(group) != 1) + 1
            range_first = group[np.concatenate([[0], breaks])]
            range_last = group[np.concatenate([breaks - 1, [len(group) - 1]])]
            starts = HEADER + range_first * block_bytes
            ends = HEADER + np.minimum((range_last + 1) * BLOCK, self.rows) * row_bytes
            data = b"".join(read_ranges(self.folder, self.name, starts.tolist(), ends.tolist()))
            table = np.frombuffer(data, dtype=np.uint64).reshape(-1, self.width)
            keys = np.ascontiguousarray(table[:, 0])
            # only the queries within this group's keys; a key split over two groups is found in both
            lo, hi = int(np.searchsorted(queries, keys[0], "left")), int(np.searchsorted(queries, keys[-1], "right"))
            query, position = _matches(keys, queries[lo:hi])
            found_query.append(query + lo)
            found_rows.append(table[position])
        return np.concatenate(found_query), np.concatenate(found_rows)


def read_ranges(folder: Storage, name: str, starts: Sequence[int], ends: Sequence[int]) -> list[bytes]:
    """Byte ranges of one file: `pread` locally, one batched request (fsspec's cat_ranges) elsewhere."""
    if not folder.is_local:
        path = folder.full(name)
        return folder.fs.cat_ranges([path] * len(starts), list(starts), list(ends))
    with open_regular(folder.full(name)) as f:
        fd = f.fileno()
        out = []
        for start, end in zip(starts, ends):
            data = os.pread(fd, end - start, start)
            if len(data) != end - start:
                raise ValueError(f"{folder.uri}/{name} ends before byte {end:,}: truncated")
            out.append(data)
        return out


class RunFile:
    """A local run file read in slices by `pread`: a merge's inputs without memory-mapping them (mapped
    pages that were read count as the process's memory until the kernel drops them)."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            self.rows, self.width, _ = parse_header(f.read(HEADER), path)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, part: slice) -> np.ndarray:
        start, stop, _ = part.indices(self.rows)
        row_bytes = self.width * 8
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), (stop - start) * row_bytes, HEADER + start * row_bytes)
        return np.frombuffer(data, dtype=np.uint64).reshape(-1, self.width)


class Renumbered:
    """A run read through with `offset` added to its last column (documents' numbers): a merge's input."""

    def __init__(self, run: StoredRun | RunFile, offset: int):
        self.run, self.offset = run, np.uint64(offset)

    def __len__(self) -> int:
        return len(self.run)

    def __getitem__(self, part: slice) -> np.ndarray:
        rows = np.array(self.run[part])
        rows[:, -1] += self.offset
        return rows


def merge(inputs: Sequence[np.ndarray | RunFile | StoredRun | Renumbered], out: NpyWriter, first_per_key: bool) -> int:
    """Merge sorted tables (in memory or local run files) into `out`, about `_MERGE_ROWS` rows at a time
    whatever the number of inputs. Inputs come oldest first; with `first_per_key`, each holds a key
    once (band runs) and the output keeps each key's oldest row (its smallest ordinal)."""
    positions = [0] * len(inputs)
    step = max(1024, _MERGE_ROWS // max(len(inputs), 1))
    while True:
        parts = [t[p : p + step] for t, p in zip(inputs, positions)]
        live = [i for i, part in enumerate(parts) if len(part)]
        if not live:
            return out.close()
        # every row at or below the smallest last-loaded key of an input with more to come is final
        more = [i for i in live if positions[i] + len(parts[i]) < len(inputs[i])]
        bound = min(int(parts[i][-1, 0]) for i in more) if more else None
        taken = []
        for i in live:
            part = parts[i]
            n = len(part) if bound is None else int(np.searchsorted(part[:, 0], np.uint64(bound), "right"))
            taken.append(np.asarray(part[:n]))
            positions[i] += n
        rows = np.concatenate(taken)
        if first_per_key:
            # sorted parts, oldest input first: a stable sort by key puts each key's oldest row first
            rows = rows[np.argsort(rows[:, 0], kind="stable")]
            first = np.ones(len(rows), dtype=bool)
            first[1:] = rows[1:, 0] != rows[:-1, 0]
            out.append(rows[first])
        else:
            out.append(sort_rows(rows, False))
