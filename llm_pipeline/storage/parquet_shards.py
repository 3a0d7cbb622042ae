"""The one Parquet shard writer: rows appended in order into `<prefix>-NNNNN.parquet` files.

Documents (`raw_corpus`), quarantined records and token sequences (`tokenized_shards`) are all
written here. A shard ends at the first row at which its size reaches `shard_size`, where a row's
size is the bytes of its string values plus the number of its list values (tokens); inside a shard,
row groups hold `row_group_rows` rows. So the files depend only on the rows, never on how they were
batched: the same rows give byte-identical files. Compression and upload run in a background
thread while the caller produces the next rows; each file is hashed from the bytes written (never
read back) and written atomically.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from llm_pipeline.prefetch import Background
from llm_pipeline.storage.folders import Storage

COMPRESSION = "zstd"


def parquet_bytes(table: pa.Table, row_group_rows: int | None = None) -> bytes:
    """A whole table as one Parquet file's bytes (small single files: an index, a sample)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION, row_group_size=row_group_rows)
    return sink.getvalue().to_pybytes()


def row_sizes(table: pa.Table) -> np.ndarray:
    """Per row: bytes of its string and binary values plus the count of its list values."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            lengths = pc.binary_length(column)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            lengths = pc.list_value_length(column)
        else:
            continue
        sizes += pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)  # a null is no bytes
    return sizes


def payload_bytes(table: pa.Table) -> int:
    """A table's size in row_sizes' measure: the same for the same rows however they are chunked."""
    return int(row_sizes(table).sum())


class ParquetFile(BaseModel):
    """A written shard, as the manifests that list it record it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    rows: int
    size: int  # the rows' values in row_sizes' measure (uncompressed)
    bytes: int  # of the file
    sha256: str


class ParquetShards:
    """Use as a context manager, or call close(); `files` lists each written shard, in order, once
    it is written."""

    def __init__(self, out: Storage, prefix: str, schema: pa.Schema, shard_size: int, row_group_rows: int):
        self.out, self.prefix, self.schema = out, prefix, schema
        self.shard_size, self.row_group_rows = shard_size, row_group_rows
        self.files: list[ParquetFile] = []
        self._shards_ended = 0
        self._pending: list[pa.Table] = []  # rows of the open shard not yet in a row group
        self._pending_rows = 0
        self._shard_rows = 0
        self._shard_size = 0
        self._bg = Background(4)
        self._thread = threading.Thread(target=self._write_in_background, daemon=True)
        self._thread.start()

    def append(self, table: pa.Table) -> None:
        self._bg.check()
        if table.schema != self.schema:
            table = table.cast(self.schema)
        sizes = row_sizes(table)
        while table.num_rows:
            reached = np.searchsorted(self._shard_size + np.cumsum(sizes), self.shard_size)  # first row reaching it
            if reached >= table.num_rows:
                self._take(table, int(sizes.sum()))
                return
            self._take(table.slice(0, reached + 1), int(sizes[: reached + 1].sum()))
            self._end_shard()
            table, sizes = table.slice(reached + 1), sizes[reached + 1 :]

    def close(self) -> list[ParquetFile]:
        self._end_shard()
        self._stop()
        return self.files

    def __enter__(self) -> ParquetShards:
        return self

    def abort(self, error: BaseException) -> None:
        """The caller failed: stop the writer (an unfinished shard is never written), keep the caller's error."""
        self._bg.error = self._bg.error or error
        self._stop(raise_error=False)

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        else:
            self.abort(error)

    def _take(self, table: pa.Table, size: int) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self._shard_rows += table.num_rows
        self._shard_size += size
        if self._pending_rows >= self.row_group_rows:
            pending, offset = pa.concat_tables(self._pending), 0
            while pending.num_rows - offset >= self.row_group_rows:
                self._bg.queue.put(("group", pending.slice(offset, self.row_group_rows)))
                offset += self.row_group_rows
            rest = pending.slice(offset)
            self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def _end_shard(self) -> None:
        if self._pending_rows:
            self._bg.queue.put(("group", pa.concat_tables(self._pending)))
        if self._shard_rows:
            name = f"{self.prefix}-{self._shards_ended:05d}.parquet"
            self._shards_ended += 1
            self._bg.queue.put(("end", (name, self._shard_rows, self._shard_size)))  # the writer thread records it
        self._pending, self._pending_rows, self._shard_rows, self._shard_size = [], 0, 0, 0

    def _stop(self, raise_error: bool = True) -> None:
        self._bg.queue.put(None)
        self._thread.join()
        if raise_error:
            self._bg.check()

    def _write_in_background(self) -> None:
        sink = pa.BufferOutputStream()
        writer = None
        while (job := self._bg.queue.get()) is not None:
            if self._bg.error is not None:
                continue  # drain: the error surfaces in the caller
            try:
                if writer is None:
                    sink = pa.BufferOutputStream()  # a new file's bytes
                    writer = pq.ParquetWriter(sink, self.schema, compression=COMPRESSION)
                if job[0] == "group":
                    writer.write_table(job[1], row_group_size=job[1].num_rows)
                    continue
                writer.close()
                data, (name, rows, size) = sink.getvalue().to_pybytes(), job[1]
                self.out.write_bytes(name, data)
                self.files.append(ParquetFile(name=name, rows=rows, size=size, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
                writer = None
            except BaseException as e:  # noqa: BLE001 - raised in the caller by append/close
                self._bg.error = e
