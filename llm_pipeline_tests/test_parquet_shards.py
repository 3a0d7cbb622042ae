"""The one Parquet shard writer, shared by the corpus (documents, quarantine) and the token shards."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.parquet_shards import ParquetFile, ParquetShards, row_sizes

SCHEMA = pa.schema([("text", pa.string()), ("tokens", pa.large_list(pa.uint16()))])


def _rows(n: int) -> pa.Table:
    texts = [f"document {i} " * (i % 7 + 1) for i in range(n)]
    tokens = [np.arange(i % 5 + 1, dtype=np.uint16) for i in range(n)]
    return pa.table({"text": texts, "tokens": pa.array(tokens, type=pa.large_list(pa.uint16()))}, schema=SCHEMA)


def _write(folder: Storage, table: pa.Table, pieces: list[int]) -> list[ParquetFile]:
    with ParquetShards(folder, "part", SCHEMA, shard_size=1500, row_group_rows=8) as shards:
        start = 0
        for size in pieces:
            shards.append(table.slice(start, size))
            start += size
    return shards.files


def test_the_same_rows_give_the_same_files_however_they_are_batched(tmp_path):
    table = _rows(200)
    one, many = Storage(str(tmp_path / "one")), Storage(str(tmp_path / "many"))
    files = _write(one, table, [200])
    assert _write(many, table, [1, 7, 30, 2, 100, 60]) == files
    assert {n: one.read_bytes(n) for n in one.listdir()} == {n: many.read_bytes(n) for n in many.listdir()}

    sizes = row_sizes(table)
    assert sizes[3] == len("document 3 " * 4) + 4  # string bytes plus list values
    start = 0
    for f in files:  # each shard ends at the first row whose running size reaches shard_size
        running = np.cumsum(sizes[start : start + f.rows])
        assert running[-1] == f.size and (f is files[-1] or (running[-1] >= 1500 > running[-2]))
        read = pq.read_table(one.full(f.name))
        assert read.num_rows == f.rows and read.equals(table.slice(start, f.rows))
        meta = pq.ParquetFile(one.full(f.name)).metadata
        groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert set(groups[:-1]) == {8} and 0 < groups[-1] <= 8
        start += f.rows
    assert start == 200 and len(files) > 3


def test_a_failing_caller_stops_the_writer_and_keeps_its_error(tmp_path):
    folder = Storage(str(tmp_path / "out"))
    with (
        pytest.raises(RuntimeError, match="caller failed"),
        ParquetShards(folder, "part", SCHEMA, shard_size=10**9, row_group_rows=8) as shards,
    ):
        shards.append(_rows(20))
        raise RuntimeError("caller failed")
    assert not shards._thread.is_alive() and folder.listdir() == []  # an unfinished shard is never written
