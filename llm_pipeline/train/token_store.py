"""The training split memory-mapped, shared by every rank of a node through the OS page cache.

Each shard set's split is one flat array (`<split>.tokens`, tokenize/flat_tokens.py). A rank maps it
with `np.memmap`: its memory holds only the pages it touches, however large the split, and the
ranks of a node share them. Before first use on a node the file is verified once (sha256 against
the manifest, every id below the vocabulary) in one streaming pass; a marker in the node cache,
keyed by the file's path, size and modification time, spares later runs and the other ranks the
pass (a changed file is verified again). Remote roots (S3, GCS) are copied into the node cache
first, evicting the least recently used copies beyond the cache's size limit. Shard sets written
before flat files existed are converted from their Parquet shards (each verified) on first use.
A file lock makes one rank of a node do the work while the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager

import numpy as np

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.data import ShardError, checked_manifests, id_limit, read_shard

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "llm-pipeline", "tokens")
_CHUNK = 1 << 20  # ids per read of the verification pass: a few MB, whatever the file


class TokenStream:
    """Several token arrays read as one: `len`, and gathers by index array (`stream[idx]`)."""

    def __init__(self, arrays: list[np.ndarray]):
        if not arrays:
            raise ValueError("no token arrays")
        self.arrays = arrays
        self.starts = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        self.dtype = np.result_type(*[a.dtype for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            index = np.arange(*index.indices(len(self)))
        index = np.asarray(index, dtype=np.int64)
        if len(self.arrays) == 1:
            return np.asarray(self.arrays[0][index])
        which = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for i in np.unique(which):
            mask = which == i
            out[mask] = self.arrays[i][index[mask] - self.starts[i]]
        return out

    def chunks(self, tokens: int = 1 << 22):
        """The stream in order, `tokens` at a time (a pass that never holds the split)."""
        for array in self.arrays:
            for start in range(0, len(array), tokens):
                yield np.asarray(array[start:start + tokens])


def open_split(shard_sets: list[Storage], split: str, expected_tokenizer_sha256: str | None = None,
               vocab_size: int | None = None, cache_dir: str = DEFAULT_CACHE, cache_limit_bytes: int = 100 << 30) -> tuple[TokenStream, dict]:
    """The split of every shard set, memory-mapped and verified, and the first set's manifest."""
    manifests = checked_manifests(shard_sets, expected_tokenizer_sha256)
    os.makedirs(cache_dir, exist_ok=True)
    arrays = []
    for shards in shard_sets:
        manifest = manifests[shards.uri]
        limit = id_limit(manifest, vocab_size)
        flat = manifest.get("flat", {}).get(split)
        if flat is None:
            path, dtype = _converted(shards, manifest, split, limit, cache_dir), manifest["dtype"]
        else:
            path, dtype = _verified_flat(shards, flat, limit, cache_dir, cache_limit_bytes), flat["dtype"]
        if os.path.getsize(path):
            arrays.append(np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r"))
    if not arrays:
        raise ShardError(f"no {split} tokens in {', '.join(s.uri for s in shard_sets)}")
    return TokenStream(arrays), manifests[shard_sets[0].uri]


@contextmanager
def _node_lock(cache_dir: str, key: str):
    """One rank of the node at a time does the work for `key`; the others wait, then find it done."""
    with open(os.path.join(cache_dir, f".lock-{key}"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verified_flat(shards: Storage, flat: dict, vocab_limit: int, cache_dir: str, cache_limit_bytes: int) -> str:
    entry, sha = flat["tokens"], flat["tokens"]["sha256"]
    with _node_lock(cache_dir, sha[:32]):
        path = shards.full(entry["name"]) if shards.is_local else _cached_copy(shards, entry, cache_dir, cache_limit_bytes)
        if not os.path.exists(path):
            raise ShardError(f"flat token file {shards.uri}/{entry['name']} listed in the manifest is missing")
        marker = os.path.join(cache_dir, f"verified-{_file_key(path, sha)}.json")
        if not os.path.exists(marker):
            _verify(path, flat, vocab_limit, f"{shards.uri}/{entry['name']}")
            with open(marker, "w") as f:
                json.dump({"path": path, "sha256": sha}, f)
        elif entry["max_id"] >= vocab_limit:
            raise ShardError(f"{shards.uri}/{entry['name']} holds token id {entry['max_id']}, outside the vocabulary of {vocab_limit}")
        if not shards.is_local:  # the cache evicts the least recently used; mtime (the marker's key) stays
            os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))
    return path


def _file_key(path: str, sha: str) -> str:
    stat = os.stat(path)
    return hashlib.sha256(f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{sha}".encode()).hexdigest()[:32]


def _verify(path: str, flat: dict, vocab_limit: int, where: str) -> None:
    """One streaming pass: the bytes' sha256 and the largest id."""
    dtype = np.dtype(flat["dtype"]).newbyteorder("<")
    digest, largest = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * dtype.itemsize):
            digest.update(chunk)
            ids = np.frombuffer(chunk, dtype=dtype)
            if len(ids):
                largest = max(largest, int(ids.max()))
    if digest.hexdigest() != flat["tokens"]["sha256"]:
        raise ShardError(f"{where} does not match its sha256 in the manifest")
    if largest >= vocab_limit:
        raise ShardError(f"{where} holds token id {largest}, outside the vocabulary of {vocab_limit}")


def _cached_copy(shards: Storage, entry: dict, cache_dir: str, cache_limit_bytes: int) -> str:
    path = os.path.join(cache_dir, f"{entry['sha256']}.tokens")
    if os.path.exists(path):
        return path
    if entry["bytes"] > cache_limit_bytes:
        raise ShardError(f"{shards.uri}/{entry['name']} ({entry['bytes']:,} bytes) does not fit the node token cache "
                         f"{cache_dir} (limit {cache_limit_bytes:,} bytes); raise the limit or use a larger disk")
    _evict(cache_dir, cache_limit_bytes - entry["bytes"])
    tmp = f"{path}.part-{os.getpid()}"
    shards.get_file(entry["name"], tmp)
    os.replace(tmp, path)
    return path


def _evict(cache_dir: str, room: int) -> None:
    """Remove the least recently used cached copies until the rest fit in `room` bytes."""
    files = [os.path.join(cache_dir, n) for n in os.listdir(cache_dir) if n.endswith(".tokens")]
    files.sort(key=os.path.getatime)
    total = sum(os.path.getsize(f) for f in files)
    while files and total > room:
        oldest = files.pop(0)
        total -= os.path.getsize(oldest)
        os.remove(oldest)


def _converted(shards: Storage, manifest: dict, split: str, vocab_limit: int, cache_dir: str) -> str:
    """A shard set without flat files: its Parquet shards (each verified) written once as a flat file."""
    key = hashlib.sha256(json.dumps([vocab_limit] + [e["sha256"] for e in manifest["shards"] if e["split"] == split]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"{key}.converted.tokens")
    with _node_lock(cache_dir, key[:32]):
        if not os.path.exists(path):
            tmp = f"{path}.part-{os.getpid()}"
            dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
            with open(tmp, "wb") as f:
                for entry in manifest["shards"]:
                    if entry["split"] == split:
                        f.write(read_shard(shards, entry, vocab_limit).astype(dtype, copy=False).tobytes())
            os.replace(tmp, path)
    return path
