"""The training split memory-mapped, shared by every rank of a node through the OS page cache.

Each shard set's split is one flat array (`<split>.tokens`, tokenize/flat_tokens.py). A rank maps it
with `np.memmap`: its memory holds only the pages it touches, however large the split, and the
ranks of a node share them. Before first use on a node the file is verified once (sha256 against
the manifest, its size, every id below the vocabulary, the document index) in one streaming pass; a
marker in the node cache, keyed by the file's path, inode, size, mtime and ctime, spares later runs
and the other ranks the pass (a changed file, even one with its size and mtime put back, is verified again). Remote roots (S3, GCS) are copied into the node cache
first, evicting the least recently used copies beyond the cache's size limit. Shard sets written
before flat files existed are converted from their Parquet shards (each verified) on first use.
A file lock makes one rank of a node do the work while the others wait for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from llm_pipeline.storage.folders import Storage, open_regular
from llm_pipeline.tokenize.manifest import FlatSplit, FlatTokens, ShardManifest, Split
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.data import ShardError, checked_manifests, id_limit, read_shard

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "llm-pipeline", "tokens")


@dataclass(frozen=True)
class TokenCache:
    """A node's folder of verified and remote-copied token files, and the most it may hold. Set by a
    run's token_cache and token_cache_gb (`of`); training and evaluation read the same split
    through it."""

    folder: str
    limit_bytes: int

    @classmethod
    def of(cls, cfg: TrainConfig) -> TokenCache:
        return cls(cfg.token_cache or DEFAULT_CACHE, int(cfg.token_cache_gb * 2**30))


_CHUNK = 1 << 20  # ids per read of the verification pass: a few MB, whatever the file


class TokenStream:
    """Several token arrays read as one: `len`, and gathers by index array (`stream[idx]`)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
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
                yield np.asarray(array[start : start + tokens])


def open_split(
    shard_sets: list[Storage],
    split: Split,
    cache: TokenCache,
    expected_tokenizer_sha256: str | None = None,
    vocab_size: int | None = None,
) -> tuple[TokenStream, ShardManifest]:
    """The split of every shard set, memory-mapped and verified, and the first set's manifest."""
    manifests = checked_manifests(shard_sets, expected_tokenizer_sha256)
    cache_dir, cache_limit_bytes = cache.folder, cache.limit_bytes
    os.makedirs(cache_dir, exist_ok=True)
    arrays = []
    for shards in shard_sets:
        manifest = manifests[shards.uri]
        limit = id_limit(manifest, vocab_size)
        flat = manifest.flat.get(split)
        if flat is None:
            path, dtype = _converted(shards, manifest, split, limit, cache_dir), manifest.dtype
        else:
            path, dtype = _verified_flat(shards, flat, limit, cache_dir, cache_limit_bytes), flat.dtype
        if os.path.getsize(path):
            with open_regular(path) as f:  # the file verified, mapped through the same checks
                arrays.append(np.memmap(f, dtype=np.dtype(dtype).newbyteorder("<"), mode="r"))
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


def _verified_flat(shards: Storage, flat: FlatSplit, vocab_limit: int, cache_dir: str, cache_limit_bytes: int) -> str:
    entry, sha = flat.tokens, flat.tokens.sha256
    where = f"{shards.uri}/{entry.name}"
    with _node_lock(cache_dir, sha[:32]):
        try:
            path = shards.full(entry.name) if shards.is_local else _cached_copy(shards, entry, cache_dir, cache_limit_bytes)
            with open_regular(path) as f:
                identity = _file_key(path, os.fstat(f.fileno()), sha, flat.docs.sha256)
        except FileNotFoundError:
            raise ShardError(f"flat token file {where} listed in the manifest is missing") from None
        except (OSError, ValueError) as e:
            raise ShardError(f"flat token file {where}: {e}") from None
        marker = os.path.join(cache_dir, f"verified-{identity}.json")
        if not os.path.exists(marker):
            _verify(path, flat, vocab_limit, where)
            _verify_docs(shards, flat, where)
            with open(marker, "w") as f:
                json.dump({"path": path, "sha256": sha}, f)
        elif entry.max_id >= vocab_limit:
            raise ShardError(f"{where} holds token id {entry.max_id}, outside the vocabulary of {vocab_limit}")
        if not shards.is_local:  # least recently used first out; the copy itself stays untouched (its ctime keys the marker)
            _touch(path + ".used")
    return path


def _file_key(path: str, stat: os.stat_result, sha: str, docs_sha: str) -> str:
    """What a verification is valid for: this file as it is. Besides path, size and mtime (which a
    writer can put back as they were), the inode (a file replaced by another) and the ctime (which
    every write and every change of mtime moves, and no user can set)."""
    return hashlib.sha256(
        f"{os.path.realpath(path)}|{stat.st_dev}|{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}|"
        f"{stat.st_ctime_ns}|{sha}|{docs_sha}".encode()
    ).hexdigest()[:32]


def _verify(path: str, flat: FlatSplit, vocab_limit: int, where: str) -> None:
    """One streaming pass: the size the manifest gives, the bytes' sha256 and the largest id."""
    dtype = np.dtype(flat.dtype).newbyteorder("<")
    digest, largest = hashlib.sha256(), 0
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size != flat.tokens.bytes:
            raise ShardError(
                f"{where} is {size:,} bytes; the manifest says {flat.tokens.count:,} {flat.dtype} ids ({flat.tokens.bytes:,} bytes)"
            )
        while chunk := f.read(_CHUNK * dtype.itemsize):
            digest.update(chunk)
            ids = np.frombuffer(chunk, dtype=dtype)
            if len(ids):
                largest = max(largest, int(ids.max()))
    if digest.hexdigest() != flat.tokens.sha256:
        raise ShardError(f"{where} does not match its sha256 in the manifest")
    if largest >= vocab_limit:
        raise ShardError(f"{where} holds token id {largest}, outside the vocabulary of {vocab_limit}")


def _verify_docs(shards: Storage, flat: FlatSplit, where: str) -> None:
    """The document index: its sha256, and end offsets that never go back and end at the token count."""
    entry, tokens = flat.docs, flat.tokens.count
    name = f"{shards.uri}/{entry.name}"
    try:
        data = shards.read_bytes(entry.name, limit=8 * entry.count)
    except FileNotFoundError:
        raise ShardError(f"document index {name} of {where} listed in the manifest is missing") from None
    except (OSError, ValueError) as e:
        raise ShardError(f"document index {name}: {e}") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256 or len(data) != 8 * entry.count:
        raise ShardError(f"document index {name} does not match its sha256 and count in the manifest")
    ends = np.frombuffer(data, dtype="<u8")
    if len(ends) and (np.any(np.diff(ends.astype(np.int64)) < 0) or int(ends[-1]) != tokens):
        raise ShardError(f"document index {name}: end offsets must never decrease and must end at the {tokens:,} tokens of {where}")


def _touch(path: str) -> None:
    with open(path, "a"):
        pass
    os.utime(path)


def _cached_copy(shards: Storage, entry: FlatTokens, cache_dir: str, cache_limit_bytes: int) -> str:
    path = os.path.join(cache_dir, f"{entry.sha256}.tokens")
    if os.path.exists(path):
        return path
    if entry.bytes > cache_limit_bytes:
        raise ShardError(
            f"{shards.uri}/{entry.name} ({entry.bytes:,} bytes) does not fit the node token cache "
            f"{cache_dir} (limit {cache_limit_bytes:,} bytes); raise the limit or use a larger disk"
        )
    _evict(cache_dir, cache_limit_bytes - entry.bytes)
    tmp = f"{path}.part-{os.getpid()}"
    shards.get_file(entry.name, tmp)
    os.replace(tmp, path)
    return path


def _last_used(path: str) -> float:
    used = path + ".used"
    return os.path.getmtime(used) if os.path.exists(used) else os.path.getmtime(path)


def _evict(cache_dir: str, room: int) -> None:
    """Remove the least recently used cached copies until the rest fit in `room` bytes."""
    files = [os.path.join(cache_dir, n) for n in os.listdir(cache_dir) if n.endswith(".tokens")]
    files.sort(key=_last_used)
    total = sum(os.path.getsize(f) for f in files)
    while files and total > room:
        oldest = files.pop(0)
        total -= os.path.getsize(oldest)
        os.remove(oldest)
        if os.path.exists(oldest + ".used"):
            os.remove(oldest + ".used")


def _converted(shards: Storage, manifest: ShardManifest, split: str, vocab_limit: int, cache_dir: str) -> str:
    """A shard set without flat files: its Parquet shards (each verified) written once as a flat file."""
    key = hashlib.sha256(json.dumps([vocab_limit] + [e.sha256 for e in manifest.split_shards(split)]).encode()).hexdigest()
    path = os.path.join(cache_dir, f"{key}.converted.tokens")
    with _node_lock(cache_dir, key[:32]):
        if not os.path.exists(path):
            tmp = f"{path}.part-{os.getpid()}"
            dtype = np.dtype(manifest.dtype).newbyteorder("<")
            with open(tmp, "wb") as f:
                for entry in manifest.split_shards(split):
                    f.write(read_shard(shards, entry, vocab_limit).astype(dtype, copy=False).tobytes())
            os.replace(tmp, path)
    return path
