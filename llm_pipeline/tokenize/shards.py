"""Token shards: `train-NNNNN.parquet` / `val-NNNNN.parquet` plus a manifest written last.

One row per document: its token ids followed by EOS, as a list of the smallest unsigned integer
type that fits the vocabulary. The split is a function of the document id alone, so the same
corpus and config give byte-identical shards.

Encoding streams: a reader thread prefetches document batches, the encoder uses every core, and a
writer thread compresses and writes finished shards, so memory stays bounded by a few batches
plus two shards whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline.corpus.build import iter_documents
from llm_pipeline.finite import check_finite_fields
from llm_pipeline.storage import Storage
from llm_pipeline.tokenize.bpe import smallest_uint_type
from llm_pipeline.tokenize.encoder import DocumentEncoder

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardConfig:
    val_fraction: float = 0.05
    tokens_per_shard: int = 50_000_000
    row_group_rows: int = 1024
    encode_batch_docs: int = 512

    def __post_init__(self):
        check_finite_fields(self)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("tokens_per_shard", "row_group_rows", "encode_batch_docs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def split_of(doc_id: str, val_fraction: float) -> str:
    """Deterministic: a document's split depends only on its id (a content hash)."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


class _Background:
    """One worker thread fed through a bounded queue; errors surface in the caller."""

    def __init__(self, maxsize: int):
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None

    def check(self):
        if self.error is not None:
            raise self.error


def _prefetch(iterator, depth: int = 2):
    """Yield from `iterator`, produced in a background thread up to `depth` items ahead."""
    bg, done = _Background(depth), object()

    def run():
        try:
            for item in iterator:
                bg.queue.put(item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            bg.error = e
        bg.queue.put(done)

    threading.Thread(target=run, daemon=True).start()
    while (item := bg.queue.get()) is not done:
        yield item
    bg.check()


class _ShardSink:
    """Writes shard tables in a background thread, in submission order."""

    def __init__(self, out: Storage, row_group_rows: int):
        self.out, self.row_group_rows = out, row_group_rows
        self.bg = _Background(1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while (job := self.bg.queue.get()) is not None:
            if self.bg.error is not None:
                continue
            name, table, entry = job
            try:
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink, compression="zstd", row_group_size=self.row_group_rows)
                data = sink.getvalue().to_pybytes()
                self.out.write_bytes(name, data)
                entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            except BaseException as e:  # noqa: BLE001 - re-raised by close()
                self.bg.error = e

    def submit(self, name: str, table: pa.Table, entry: dict) -> None:
        self.bg.check()
        self.bg.queue.put((name, table, entry))

    def close(self) -> None:
        self.bg.queue.put(None)
        self.thread.join()
        self.bg.check()


class _SplitWriter:
    def __init__(self, split: str, dtype: str, cfg: ShardConfig, sink: _ShardSink):
        self.split, self.cfg, self.sink = split, cfg, sink
        self.np_dtype = np.dtype(dtype)
        self.rows: list[np.ndarray] = []
        self.tokens = 0
        self.shards: list[dict] = []

    def add(self, ids: np.ndarray) -> None:
        self.rows.append(ids)
        self.tokens += len(ids)
        if self.tokens >= self.cfg.tokens_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        offsets = np.zeros(len(self.rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in self.rows], out=offsets[1:])
        flat = np.concatenate(self.rows)
        table = pa.table({"tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))})
        entry = {"name": f"{self.split}-{len(self.shards):05d}.parquet", "split": self.split,
                 "documents": len(self.rows), "tokens": self.tokens, "max_id": int(flat.max())}
        self.shards.append(entry)  # bytes and sha256 are filled in by the sink
        self.sink.submit(entry["name"], table, entry)
        self.rows, self.tokens = [], 0


def write_shards(
    corpus: Storage, out: Storage, encoder: DocumentEncoder, vocab_size: int, tokenizer_sha256: str, cfg: ShardConfig
) -> dict:
    """Encode the corpus in bounded batches and write shards + manifest. Returns the manifest."""
    dtype = smallest_uint_type(vocab_size)
    sink = _ShardSink(out, cfg.row_group_rows)
    writers = {s: _SplitWriter(s, dtype, cfg, sink) for s in SPLITS}
    eos = np.array([encoder.eos_id], dtype=dtype)
    text_bytes = {s: 0 for s in SPLITS}
    pending: deque[tuple[str, int]] = deque()  # (split, UTF-8 bytes) of documents in flight, in order

    def texts():
        for batch in _prefetch(iter_documents(corpus, batch_size=cfg.encode_batch_docs)):
            for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                pending.append((split_of(doc_id, cfg.val_fraction), len(text.encode("utf-8"))))
                yield text

    try:
        for ids in encoder.encode_stream(texts(), window=2 * cfg.encode_batch_docs):
            split, nbytes = pending.popleft()
            if ids.size and int(ids.max()) >= vocab_size:  # would wrap around in the shard's dtype
                raise ValueError(f"token id {int(ids.max())} is >= vocab_size {vocab_size}: the tokenizer's ids do not fit "
                                 f"the vocabulary the shards are written for")
            writers[split].add(np.concatenate([ids.astype(dtype, copy=False), eos]))
            text_bytes[split] += nbytes
        for w in writers.values():
            w.flush()
    finally:
        sink.close()
    totals = {}
    for split, w in writers.items():
        totals[split] = {
            "documents": sum(s["documents"] for s in w.shards),
            "tokens": sum(s["tokens"] for s in w.shards),
            "text_bytes": text_bytes[split],
        }
    manifest = {
        "kind": "tokenized_shards",
        "tokenizer_sha256": tokenizer_sha256,
        "vocab_size": vocab_size,
        "eos_id": encoder.eos_id,
        "dtype": dtype,
        "encoder_engine": encoder.engine,
        "split_rule": {"hash": "sha256(document id)[:8] / 2**32 < val_fraction -> val", "val_fraction": cfg.val_fraction},
        "tokens_per_shard": cfg.tokens_per_shard,
        "row_group_rows": cfg.row_group_rows,
        "splits": totals,
        "shards": writers["train"].shards + writers["val"].shards,
    }
    out.write_json(MANIFEST, manifest)
    return manifest


class ShardError(ValueError):
    pass


_MANIFEST_KEYS = ("tokenizer_sha256", "vocab_size", "dtype", "shards", "splits")


def read_manifest(shards: Storage, expected_tokenizer_sha256: str | None = None) -> dict:
    if not shards.exists(MANIFEST):
        raise ShardError(f"no shard manifest at {shards.uri}/{MANIFEST}")
    try:
        manifest = shards.read_json(MANIFEST)
    except ValueError as e:
        raise ShardError(str(e)) from None
    missing = [k for k in _MANIFEST_KEYS if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise ShardError(f"shard manifest {shards.uri}/{MANIFEST} lacks {', '.join(missing)}")
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
    manifests = {shards.uri: read_manifest(shards) for shards in shard_sets}
    check_one_tokenizer(manifests, expected_tokenizer_sha256)
    work = []
    for shards in shard_sets:
        manifest = manifests[shards.uri]
        limit = min(manifest["vocab_size"], vocab_size or manifest["vocab_size"])
        work += [(shards, entry, limit) for entry in manifest["shards"] if entry["split"] == split]
    if not work:
        raise ShardError(f"no {split} tokens in {', '.join(f'{s.uri}/{MANIFEST}' for s in shard_sets)}")
    parts = list(_prefetch((read_shard(shards, entry, limit) for shards, entry, limit in work), depth=2))
    return np.concatenate(parts), manifests[shard_sets[0].uri]
