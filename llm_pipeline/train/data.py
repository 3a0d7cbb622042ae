"""The training data: token shards read and verified, then cut into shuffled windows and mixed.

Reading (`read_shard_manifest`, `read_shard`; train/token_store.py maps what they verify): every
shard of the chosen sets is checked against its manifest (sha256, Parquet, token count, id range)
before any is used, so nothing trains on corrupted data.

Windows: stateless, so resume is exact, at any world size. A source's token stream (its shard
sets, documents separated by EOS) is cut into non-overlapping windows of `seq_len + 1` tokens
(`TokenWindows`). The run draws global samples 0, 1, 2, ...: `DataMixture` says which source
sample g comes from and which of that source's samples it is; sample j of a source is window
perm_e[j mod n] of its epoch e = j // n, a permutation seeded by (seed, source, e). Micro-step
k takes the global samples from k x micro_batch x world on, rank r the r-th slice of them
(`MicroBatches`). The whole loader state is the number of global samples drawn, saved in every
checkpoint: the same number resumes the same stream on any world size.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST, ManifestError, parsed, read_manifest
from llm_pipeline.tokenize.bpe import made_with_another_tokenizer
from llm_pipeline.tokenize.manifest import ShardManifest, TokenShard
from llm_pipeline.train.config import MIX_BLOCK, mixture_shares
from llm_pipeline.train.summary import SourceMix


class TokenWindows:
    """One source's windows: sample j is window perm_e[j mod n] of epoch e = j // n."""

    def __init__(self, tokens, seq_len: int, seed: int = 0, source: int = 0, name: str = "train"):
        # Kept in the shards' own dtype (uint16 for most vocabularies), usually memory-mapped
        # (train/token_store.py): only each gathered batch is widened.
        self.tokens, self.seq_len, self.name = tokens, seq_len, name
        self.seed, self.source = seed, source
        self.num_windows = (len(tokens) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(f"the train split of {name} has {len(tokens)} tokens: not one window of seq_len {seq_len}")
        self._offsets = np.arange(seq_len + 1)
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, self.source, epoch])
            # int32 where it fits: the one per-rank array that grows with the data (4 bytes a window)
            index_type = np.int32 if self.num_windows < 2**31 else np.int64
            self._epoch, self._perm = epoch, rng.permutation(np.arange(self.num_windows, dtype=index_type))
        return self._perm

    def windows(self, samples: np.ndarray) -> np.ndarray:
        """Rows of seq_len + 1 token ids (int64) for this source's samples."""
        epochs, index = np.divmod(samples, self.num_windows)
        starts = np.empty(len(samples), dtype=np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            starts[at] = self._permutation(int(epoch))[index[at]].astype(np.int64) * self.seq_len
        return np.asarray(self.tokens[starts[:, None] + self._offsets]).astype(np.int64)


class DataMixture:
    """Which source each global sample comes from, and which of that source's samples it is."""

    def __init__(self, sources: list[TokenWindows], weights: list[float], seed: int = 0):
        if len(sources) != len(weights) or not sources:
            raise ValueError("a mixture needs one weight per source")
        self.sources, self.seed = sources, seed
        shares = np.asarray(mixture_shares(list(weights)), dtype=np.float64)
        self.weights = shares
        # Largest remainder: each block's counts sum to MIX_BLOCK, each within one sample of its share.
        exact = shares * MIX_BLOCK
        counts = np.floor(exact).astype(np.int64)
        counts[np.argsort(-(exact - counts), kind="stable")[: MIX_BLOCK - counts.sum()]] += 1
        if (counts == 0).any():
            names = [s.name for s, c in zip(sources, counts) if c == 0]
            raise ValueError(f"mixture weight of {', '.join(names)} is below 1/{MIX_BLOCK} of the total")
        self.block_counts = counts
        self._block, self._labels, self._ranks = -1, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    def _layout(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Each position's source in `block`, and its rank among that source's positions."""
        if block != self._block:
            labels = np.random.default_rng([self.seed, block]).permutation(np.repeat(np.arange(len(self.sources)), self.block_counts))
            ranks = np.empty(MIX_BLOCK, dtype=np.int64)
            for source in range(len(self.sources)):
                at = labels == source
                ranks[at] = np.arange(at.sum())
            self._block, self._labels, self._ranks = block, labels, ranks
        return self._labels, self._ranks

    def assign(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, sample of that source) of each global sample."""
        if len(self.sources) == 1:
            return np.zeros(len(samples), dtype=np.int64), samples
        blocks, positions = np.divmod(samples, MIX_BLOCK)
        source, index = np.empty_like(samples), np.empty_like(samples)
        for block in np.unique(blocks):
            at = blocks == block
            labels, ranks = self._layout(int(block))
            source[at] = labels[positions[at]]
            index[at] = block * self.block_counts[source[at]] + ranks[positions[at]]
        return source, index

    def drawn(self, samples: int) -> np.ndarray:
        """How many of the first `samples` global samples each source gave."""
        full, rest = divmod(samples, MIX_BLOCK)
        counts = full * self.block_counts
        if rest and len(self.sources) > 1:
            counts = counts + np.bincount(self._layout(full)[0][:rest], minlength=len(self.sources))
        elif rest:
            counts = counts + rest
        return counts

    def windows(self, samples: np.ndarray) -> np.ndarray:
        source, index = self.assign(samples)
        rows = np.empty((len(samples), self.sources[0].seq_len + 1), dtype=np.int64)
        for s in np.unique(source):
            at = source == s
            rows[at] = self.sources[int(s)].windows(index[at])
        return rows

    def realized(self, samples: int) -> dict[str, SourceMix]:
        """The mix the first `samples` samples realized, per source."""
        drawn = self.drawn(samples)
        return {
            source.name: SourceMix(
                weight=float(weight),
                samples=int(n),
                share=float(n / max(samples, 1)),
                tokens=int(n) * source.seq_len,
                epochs=float(n / source.num_windows),
            )
            for source, weight, n in zip(self.sources, self.weights, drawn)
        }


class MicroBatches:
    """One rank's micro-batches: its slice of the global samples from `first_sample` on."""

    def __init__(self, mixture: DataMixture, micro_batch: int, rank: int = 0, world_size: int = 1):
        self.mixture, self.micro_batch, self.rank, self.world_size = mixture, micro_batch, rank, world_size
        windows = sum(s.num_windows for s in mixture.sources)
        if windows < micro_batch * world_size:
            raise ValueError(
                f"the train split has {windows} windows of seq_len {mixture.sources[0].seq_len}, fewer than one micro-batch "
                f"across ranks ({micro_batch} x {world_size}); use more data or smaller batches"
            )

    @property
    def samples_per_micro_step(self) -> int:
        return self.micro_batch * self.world_size

    def at(self, first_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch (inputs, targets) whose first global sample is `first_sample`."""
        start = first_sample + self.rank * self.micro_batch
        chunk = torch.from_numpy(self.mixture.windows(np.arange(start, start + self.micro_batch, dtype=np.int64)))
        return chunk[:, :-1], chunk[:, 1:]


class Prefetcher:
    """The loader's next micro-batch, gathered in a background thread while the current step runs.

    A micro-batch is a pure function of its first global sample, so reading ahead changes nothing but
    when the work happens: the gather (numpy, mostly outside the GIL) overlaps the step's forward
    and backward (torch, outside the GIL). On a GPU the micro-batch comes back in pinned memory, so its
    copy to the device does not block."""

    def __init__(self, loader: MicroBatches, first_sample: int, pin: bool = False):
        self.loader, self.pin = loader, pin
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-prefetch")
        self._at, self._next = first_sample, self._pool.submit(self._gather, first_sample)

    def _gather(self, first_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.loader.at(first_sample)
        x, y = x.contiguous(), y.contiguous()
        return (x.pin_memory(), y.pin_memory()) if self.pin else (x, y)

    def take(self, first_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The micro-batch at `first_sample` (the one read ahead), and the one after it starts."""
        x, y = self._next.result() if first_sample == self._at else self._gather(first_sample)
        self._at = first_sample + self.loader.samples_per_micro_step
        self._next = self._pool.submit(self._gather, self._at)
        return x, y

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ShardError(ManifestError):
    """Token shards that cannot be trusted: the message names the set or the shard."""


_MANIFEST_KEYS = ("tokenizer_sha256", "vocab_size", "dtype", "shards", "splits")


TOKEN_DTYPES = ("uint16", "uint32")


def _hex(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shard_manifest(manifest: dict, where: str) -> None:
    """Every field a reader uses has the type and range it must: ShardError naming the first that does not.
    Names are checked where they are joined (Storage.full), by the one rule for relative paths."""

    def refuse(field: str, value) -> None:
        shown = repr(value)
        raise ShardError(f"shard manifest {where}: {field} is invalid: {shown[:200]}{'...' if len(shown) > 200 else ''}")

    if manifest["dtype"] not in TOKEN_DTYPES:
        refuse("dtype", manifest["dtype"])
    if not (_count(manifest["vocab_size"]) and 0 < manifest["vocab_size"] <= 2**32):
        refuse("vocab_size", manifest["vocab_size"])
    if not isinstance(manifest["shards"], list):
        refuse("shards", manifest["shards"])
    for i, entry in enumerate(manifest["shards"]):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and entry.get("split") in ("train", "val")
            and _hex(entry.get("sha256"))
            and _count(entry.get("tokens"))
            and _count(entry.get("max_id", 0))
        ):
            refuse(f"shards[{i}]", entry)
    flat = manifest.get("flat", {})
    if not isinstance(flat, dict):
        refuse("flat", flat)
    for split, entry in flat.items():
        tokens, docs = (entry.get("tokens"), entry.get("docs")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(entry, dict) and entry.get("dtype") == manifest["dtype"]):
            refuse(f"flat.{split}.dtype", entry.get("dtype") if isinstance(entry, dict) else entry)
        if not (
            isinstance(tokens, dict)
            and isinstance(tokens.get("name"), str)
            and _hex(tokens.get("sha256"))
            and _count(tokens.get("count"))
            and _count(tokens.get("max_id"))
            and tokens.get("bytes") == tokens["count"] * np.dtype(entry["dtype"]).itemsize
        ):
            refuse(f"flat.{split}.tokens", tokens)
        if not (isinstance(docs, dict) and isinstance(docs.get("name"), str) and _hex(docs.get("sha256")) and _count(docs.get("count"))):
            refuse(f"flat.{split}.docs", docs)


def read_shard_manifest(shards: Storage, expected_tokenizer_sha256: str | None = None) -> ShardManifest:
    data = read_manifest(shards, _MANIFEST_KEYS, "shard manifest", ShardError)
    where = f"{shards.uri}/{MANIFEST}"
    _check_shard_manifest(data, where)
    manifest = parsed(ShardManifest, data, f"shard manifest {where}", ShardError)
    if expected_tokenizer_sha256 and manifest.tokenizer_sha256 != expected_tokenizer_sha256:
        raise ShardError(
            f"shards at {shards.uri} were made with tokenizer {manifest.tokenizer_sha256[:12]}, "
            f"not the expected {expected_tokenizer_sha256[:12]}"
        )
    return manifest


def read_shard(shards: Storage, entry: TokenShard, vocab_size: int) -> np.ndarray:
    """One shard's tokens, checked against its manifest entry (presence, sha256, Parquet, count, id range)."""
    name = entry.name
    try:
        data = shards.read_bytes(name)
    except FileNotFoundError:
        raise ShardError(f"shard {shards.uri}/{name} listed in the manifest is missing") from None
    except (OSError, ValueError) as e:
        raise ShardError(f"shard {shards.uri}/{name}: {e}") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ShardError(f"shard {shards.uri}/{name} does not match its sha256 in the manifest")
    try:
        column = pq.read_table(pa.BufferReader(data), columns=["tokens"]).column("tokens")
    except (pa.ArrowException, OSError) as e:
        raise ShardError(f"shard {shards.uri}/{name} is not a readable Parquet file: {e}") from e
    values = np.concatenate([c.values.to_numpy(zero_copy_only=False) for c in column.chunks])
    if len(values) != entry.tokens:
        raise ShardError(f"shard {shards.uri}/{name} has {len(values)} tokens, manifest says {entry.tokens}")
    largest = int(values.max()) if len(values) else 0
    if largest >= vocab_size or entry.max_id >= vocab_size:
        raise ShardError(f"shard {shards.uri}/{name} holds token id {max(largest, entry.max_id)}, outside the vocabulary of {vocab_size}")
    return values


def check_one_tokenizer(manifests: dict[str, ShardManifest], expected_tokenizer_sha256: str | None = None) -> None:
    """Refuse shard sets made with different tokenizers (or not with the expected one), naming them."""
    made_with = {where: manifest.tokenizer_sha256 for where, manifest in manifests.items()}
    expected = expected_tokenizer_sha256 or next(iter(made_with.values()), "")
    wrong: dict[str, list[str]] = {}
    for where, sha in made_with_another_tokenizer(made_with, expected).items():
        wrong.setdefault(str(sha), []).append(where)
    if wrong:
        listed = "; ".join(f"{', '.join(names)} made with tokenizer {sha[:12]}" for sha, names in sorted(wrong.items()))
        raise ShardError(
            f"shards with mixed tokenizers: {listed}; expected tokenizer {expected[:12]}. "
            "Re-tokenize them with the current tokenizer (a backfill of tokenized_shards) first"
        )


def checked_manifests(shard_sets: list[Storage], expected_tokenizer_sha256: str | None = None) -> dict[str, ShardManifest]:
    """Every set's shard manifest by URI, all made with one tokenizer (the expected one, if given)."""
    manifests = {shards.uri: read_shard_manifest(shards) for shards in shard_sets}
    check_one_tokenizer(manifests, expected_tokenizer_sha256)
    return manifests


def id_limit(manifest: ShardManifest, vocab_size: int | None) -> int:
    """Ids must be below the model's vocabulary and below the manifest's own."""
    return min(manifest.vocab_size, vocab_size or manifest.vocab_size)
