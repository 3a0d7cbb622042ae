"""The training data: token shards read and verified, then packed into shuffled windows.

Reading (`load_tokens`): every shard of the chosen sets is checked against its manifest (sha256,
Parquet, token count, id range) before any is used, so nothing trains on corrupted data.

Windows (`TokenWindows`): stateless, so resume is exact.

The train split is one token stream (documents separated by EOS). It is cut into
non-overlapping windows of `seq_len + 1` tokens. Epoch e visits them in the order of a
permutation seeded by (seed, e); micro-step k of rank r takes the r-th slice of the k-th
global micro-batch. The whole loader state is k, saved in every checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from llm_pipeline.prefetch import prefetch
from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST, ManifestError, read_manifest


class TokenWindows:
    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        # Kept in the shards' own dtype (uint16 for most vocabularies): a quarter of int64's memory.
        # Only each gathered batch is widened.
        self.tokens = tokens
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_windows = (len(tokens) - 1) // seq_len
        per_step = micro_batch * world_size
        if self.num_windows < per_step:
            raise ValueError(
                f"the train split has {len(tokens)} tokens: {self.num_windows} windows of seq_len {seq_len}, "
                f"fewer than one micro-batch across ranks ({micro_batch} x {world_size}); use more data or smaller batches"
            )
        self.batches_per_epoch = self.num_windows // per_step
        self._offsets = np.arange(seq_len + 1)
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.num_windows)
        return self._perm

    def batch(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(micro_step, self.batches_per_epoch)
        start = (index * self.world_size + self.rank) * self.micro_batch
        windows = self._permutation(epoch)[start : start + self.micro_batch]
        chunk = torch.from_numpy(self.tokens[(windows * self.seq_len)[:, None] + self._offsets].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


class ShardError(ManifestError):
    """Token shards that cannot be trusted: the message names the set or the shard."""


_MANIFEST_KEYS = ("tokenizer_sha256", "vocab_size", "dtype", "shards", "splits")


def read_shard_manifest(shards: Storage, expected_tokenizer_sha256: str | None = None) -> dict:
    manifest = read_manifest(shards, _MANIFEST_KEYS, "shard manifest", ShardError)
    if expected_tokenizer_sha256 and manifest["tokenizer_sha256"] != expected_tokenizer_sha256:
        raise ShardError(
            f"shards at {shards.uri} were made with tokenizer {manifest['tokenizer_sha256'][:12]}, "
            f"not the expected {expected_tokenizer_sha256[:12]}"
        )
    return manifest


def read_shard(shards: Storage, entry: dict, vocab_size: int) -> np.ndarray:
    """One shard's tokens, checked against its manifest entry (presence, sha256, Parquet, count, id range)."""
    name = entry["name"]
    if not shards.exists(name):
        raise ShardError(f"shard {shards.uri}/{name} listed in the manifest is missing")
    data = shards.read_bytes(name)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ShardError(f"shard {shards.uri}/{name} does not match its sha256 in the manifest")
    try:
        column = pq.read_table(pa.BufferReader(data), columns=["tokens"]).column("tokens")
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"shard {shards.uri}/{name} is not a readable Parquet file: {e}") from e
    values = np.concatenate([c.values.to_numpy(zero_copy_only=False) for c in column.chunks])
    if len(values) != entry["tokens"]:
        raise ShardError(f"shard {shards.uri}/{name} has {len(values)} tokens, manifest says {entry['tokens']}")
    largest = int(values.max()) if len(values) else 0
    if largest >= vocab_size or entry.get("max_id", 0) >= vocab_size:
        raise ShardError(f"shard {shards.uri}/{name} holds token id {max(largest, entry.get('max_id', 0))}, "
                         f"outside the vocabulary of {vocab_size}")
    return values


def load_split_tokens(shards: Storage, split: str, expected_tokenizer_sha256: str | None = None,
                      vocab_size: int | None = None) -> tuple[np.ndarray, dict]:
    """One shard set's tokens of `split`; see load_tokens (an empty split is an error here)."""
    return load_tokens([shards], split, expected_tokenizer_sha256, vocab_size)


def check_one_tokenizer(manifests: dict[str, dict], expected_tokenizer_sha256: str | None = None) -> None:
    """Refuse shard sets made with different tokenizers (or not with the expected one), naming them."""
    by_tokenizer: dict[str, list[str]] = {}
    for where, manifest in manifests.items():
        by_tokenizer.setdefault(manifest["tokenizer_sha256"], []).append(where)
    expected = expected_tokenizer_sha256 or next(iter(by_tokenizer), "")
    wrong = {sha: names for sha, names in by_tokenizer.items() if sha != expected}
    if wrong:
        listed = "; ".join(f"{', '.join(names)} made with tokenizer {sha[:12]}" for sha, names in sorted(wrong.items()))
        raise ShardError(f"shards with mixed tokenizers: {listed}; expected tokenizer {expected[:12]}. "
                         "Re-tokenize them with the current tokenizer (a backfill of tokenized_shards) first")


def load_tokens(shard_sets: list[Storage], split: str, expected_tokenizer_sha256: str | None = None,
                vocab_size: int | None = None) -> tuple[np.ndarray, dict]:
    """All tokens of one split of several shard sets (in order) as one flat array. Every shard is verified before any is used, so
    nothing is trained on corrupted data; reads run ahead in a thread (remote storage overlaps).
    Ids must be below `vocab_size` (the model's), and below the manifest's own vocabulary."""
    shards, manifest = iter_tokens(shard_sets, split, expected_tokenizer_sha256, vocab_size)
    return np.concatenate(list(shards)), manifest


def iter_tokens(shard_sets: list[Storage], split: str, expected_tokenizer_sha256: str | None = None,
                vocab_size: int | None = None) -> tuple[Iterator[np.ndarray], dict]:
    """load_tokens one verified shard at a time (for a pass over the split that need not hold it all),
    and the first set's manifest. The manifests are read and checked before this returns."""
    manifests = {shards.uri: read_shard_manifest(shards) for shards in shard_sets}
    check_one_tokenizer(manifests, expected_tokenizer_sha256)
    work = []
    for shards in shard_sets:
        manifest = manifests[shards.uri]
        limit = min(manifest["vocab_size"], vocab_size or manifest["vocab_size"])
        work += [(shards, entry, limit) for entry in manifest["shards"] if entry["split"] == split]
    if not work:
        raise ShardError(f"no {split} tokens in {', '.join(f'{s.uri}/{MANIFEST}' for s in shard_sets)}")
    return prefetch((read_shard(shards, entry, limit) for shards, entry, limit in work), depth=2), manifests[shard_sets[0].uri]
