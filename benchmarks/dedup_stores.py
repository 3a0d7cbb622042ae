"""Which store for the dedup index: one batch's lookups against a large history, candidate by candidate.

    pip install -e ".[bench]"        # duckdb, rocksdict, lmdb (benchmark-only)
    python -m benchmarks.dedup_stores [--documents 2000000] [--rounds 5]

The workload is the index's hot path: the 8,000 LSH band keys of a batch of 1,000 documents (1% of
them present) looked up among the band keys of --documents earlier documents (8 per document,
uint64 key -> uint64 document number). Every candidate holds the same sorted entries on local disk:

    sorted .npy run + fences    ours (corpus/dedup/runs.py): fences in memory, then only the blocks
                                that can hold the keys, by byte range (pread; fsspec cat_ranges remotely)
    Parquet, sorted, row groups pyarrow with a filter on the key (row groups pruned by their statistics)
    DuckDB over that Parquet    a semi-join of the keys against read_parquet()
    RocksDB (rocksdict)         multi-get
    LMDB                        one read transaction, a get per key
    Bloom filter in front       10 bits per key, 7 hashes, numpy: the filter alone (it must be loaded whole)

Printed per candidate: time to write the index, bytes on disk and the lookup's median time over
--rounds key sets. RocksDB and LMDB need a local folder (on S3 or GCS the whole store would be copied
down for every build) and a Bloom filter must be loaded whole and grows with the history: the index
needs a store that is read by key over any fsspec URI. The last line:
    over any fsspec URI: fastest NAME X.X ms, next NAME Y.Y ms (Z.ZZx); fastest local-only: NAME W.W ms
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline.corpus.dedup.runs import NpyWriter, StoredRun
from llm_pipeline.storage.folders import Storage

BATCH_KEYS = 8_000


def _entries(documents: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 2**64 - 1, 8 * documents, dtype=np.uint64, endpoint=True))
    return np.column_stack([keys, rng.permutation(len(keys)).astype(np.uint64)])


def _queries(table: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    present = table[rng.integers(0, len(table), BATCH_KEYS // 100), 0]
    return np.unique(np.concatenate([present, rng.integers(0, 2**64 - 1, BATCH_KEYS - len(present), dtype=np.uint64, endpoint=True)]))


def _du(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


class Ours:
    name = "sorted .npy run + fences"

    def write(self, folder: str, table: np.ndarray) -> None:
        writer = NpyWriter(os.path.join(folder, "bands.npy"), 2)
        writer.append(table)
        writer.close()
        self.run = StoredRun(Storage(folder), "bands.npy", len(table), 2)

    def lookup(self, queries: np.ndarray) -> int:
        self.run._fences = None  # a build opens the run afresh: fences read every time
        return len(self.run.find(queries)[0])


class Parquet:
    name = "Parquet, sorted, 64K-row groups"

    def write(self, folder: str, table: np.ndarray) -> None:
        self.path = os.path.join(folder, "bands.parquet")
        pq.write_table(pa.table({"key": table[:, 0], "number": table[:, 1]}), self.path, row_group_size=65536)

    def lookup(self, queries: np.ndarray) -> int:
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        found = ds.dataset(self.path).to_table(filter=pc.field("key").isin(pa.array(queries)))
        return found.num_rows


class DuckDB:
    name = "DuckDB over the Parquet"

    def write(self, folder: str, table: np.ndarray) -> None:
        import duckdb

        self.path = os.path.join(folder, "bands.parquet")
        if not os.path.exists(self.path):
            Parquet().write(folder, table)
        self.con = duckdb.connect()

    def lookup(self, queries: np.ndarray) -> int:
        asked = pa.table({"key": queries})  # noqa: F841 (DuckDB reads it by name)
        return len(self.con.execute(f"SELECT b.number FROM read_parquet('{self.path}') b SEMI JOIN asked USING (key)").fetchall())


class Rocks:
    name = "RocksDB (rocksdict)"

    def write(self, folder: str, table: np.ndarray) -> None:
        from rocksdict import Rdict, WriteBatch

        self.path = os.path.join(folder, "rocks")
        self.db = Rdict(self.path)
        keys, values = table[:, 0].astype(">u8").tobytes(), table[:, 1].astype(">u8").tobytes()
        for start in range(0, len(table), 100_000):
            batch = WriteBatch(raw_mode=False)
            for i in range(start, min(start + 100_000, len(table))):
                batch.put(keys[8 * i : 8 * i + 8], values[8 * i : 8 * i + 8])
            self.db.write(batch)
        self.db.flush()

    def lookup(self, queries: np.ndarray) -> int:
        raw = queries.astype(">u8").tobytes()
        got = self.db.get([raw[8 * i : 8 * i + 8] for i in range(len(queries))])
        return sum(value is not None for value in got)


class Lmdb:
    name = "LMDB"

    def write(self, folder: str, table: np.ndarray) -> None:
        import lmdb

        self.path = os.path.join(folder, "lmdb")
        self.env = lmdb.open(self.path, map_size=64 << 30, sync=False)
        keys, values = table[:, 0].astype(">u8").tobytes(), table[:, 1].astype(">u8").tobytes()
        with self.env.begin(write=True) as txn, txn.cursor() as cursor:
            cursor.putmulti(((keys[8 * i : 8 * i + 8], values[8 * i : 8 * i + 8]) for i in range(len(table))), append=True)

    def lookup(self, queries: np.ndarray) -> int:
        raw = queries.astype(">u8").tobytes()
        with self.env.begin() as txn:
            return sum(txn.get(raw[8 * i : 8 * i + 8]) is not None for i in range(len(queries)))


class Bloom:
    name = "Bloom filter (10 bits/key)"
    _MULTIPLIERS = np.array(
        [
            0x9E3779B97F4A7C15,
            0xC2B2AE3D27D4EB4F,
            0x165667B19E3779F9,
            0xD6E8FEB86659FD93,
            0xFF51AFD7ED558CCD,
            0xC4CEB9FE1A85EC53,
            0x94D049BB133111EB,
        ],
        dtype=np.uint64,
    )

    def _bits(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((keys[:, None] * self._MULTIPLIERS[None, :]) >> np.uint64(20)) % np.uint64(self.size)

    def write(self, folder: str, table: np.ndarray) -> None:
        self.size = 10 * len(table)
        bits = np.zeros(self.size, dtype=bool)
        for start in range(0, len(table), 1 << 20):
            bits[self._bits(table[start : start + (1 << 20), 0]).reshape(-1)] = True
        self.path = os.path.join(folder, "bloom.bin")
        np.packbits(bits).tofile(self.path)

    def lookup(self, queries: np.ndarray) -> int:
        bits = np.unpackbits(np.fromfile(self.path, dtype=np.uint8))  # a build loads it whole
        return int(bits[self._bits(queries)].all(axis=1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    table = _entries(args.documents)
    print(f"index: {len(table):,} band keys of {args.documents:,} documents; lookups of {BATCH_KEYS:,} keys", flush=True)
    work = tempfile.mkdtemp(prefix="dedup-stores-")
    results = {}
    try:
        candidates = [Ours(), Parquet(), DuckDB(), Rocks(), Lmdb(), Bloom()]
        for candidate in candidates:
            folder = os.path.join(work, type(candidate).__name__)
            os.makedirs(folder)
            start = time.perf_counter()
            candidate.write(folder, table)
            written = time.perf_counter() - start
            size = _du(folder) if type(candidate) is not DuckDB else _du(os.path.join(work, "Parquet"))
            results[candidate.name] = {"write_s": written, "bytes": size, "times": []}
        for r in range(args.rounds):  # interleaved: every candidate once per round
            queries = _queries(table, r)
            expected = int(np.isin(queries, table[:, 0]).sum())
            for candidate in candidates:
                start = time.perf_counter()
                found = candidate.lookup(queries)
                results[candidate.name]["times"].append(time.perf_counter() - start)
                if type(candidate) is not Bloom and found != expected:
                    raise SystemExit(f"{candidate.name} found {found} keys of {expected}")
        for name, got in results.items():
            print(
                f"{name:32s} write {got['write_s']:7.1f} s  {got['bytes'] / 1e6:8.0f} MB on disk  "
                f"lookup {1000 * statistics.median(got['times']):8.1f} ms",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(got["times"]) for name, got in results.items()}
    anywhere = sorted((Ours.name, Parquet.name, DuckDB.name), key=median.get)
    local_only = min((Rocks.name, Lmdb.name), key=median.get)
    best, second = anywhere[:2]
    print(
        f"over any fsspec URI: fastest {best} {1000 * median[best]:.1f} ms, next {second} {1000 * median[second]:.1f} ms "
        f"({median[second] / median[best]:.2f}x); fastest local-only: {local_only} {1000 * median[local_only]:.1f} ms"
    )


if __name__ == "__main__":
    main()
