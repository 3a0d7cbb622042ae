"""Token shards: `train-NNNNN.parquet` / `val-NNNNN.parquet` plus a manifest written last.

One row per document: its token ids followed by EOS, as a list of the smallest unsigned integer
type that fits the vocabulary. The split is a function of the document id alone, so the same
corpus and config give byte-identical shards.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline.corpus.build import iter_documents
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
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("tokens_per_shard", "row_group_rows", "encode_batch_docs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def split_of(doc_id: str, val_fraction: float) -> str:
    """Deterministic: a document's split depends only on its id (a content hash)."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


class _SplitWriter:
    def __init__(self, out: Storage, split: str, dtype: str, cfg: ShardConfig):
        self.out, self.split, self.cfg = out, split, cfg
        self.type = pa.list_(getattr(pa, dtype)())
        self.np_dtype = np.dtype(dtype)
        self.rows: list[np.ndarray] = []
        self.tokens = 0
        self.documents = 0
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
        values = pa.array(np.concatenate(self.rows).astype(self.np_dtype, copy=False))
        column = pa.LargeListArray.from_arrays(pa.array(offsets), values).cast(pa.large_list(values.type))
        table = pa.table({"tokens": column})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=self.cfg.row_group_rows)
        data = sink.getvalue().to_pybytes()
        name = f"{self.split}-{len(self.shards):05d}.parquet"
        self.out.write_bytes(name, data)
        self.shards.append(
            {"name": name, "split": self.split, "documents": len(self.rows), "tokens": self.tokens,
             "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        self.documents += len(self.rows)
        self.rows, self.tokens = [], 0


def write_shards(
    corpus: Storage, out: Storage, encoder: DocumentEncoder, vocab_size: int, tokenizer_sha256: str, cfg: ShardConfig
) -> dict:
    """Encode the corpus in bounded batches and write shards + manifest. Returns the manifest."""
    dtype = smallest_uint_type(vocab_size)
    writers = {s: _SplitWriter(out, s, dtype, cfg) for s in SPLITS}
    eos = np.array([encoder.eos_id], dtype=np.int64)
    text_bytes = {s: 0 for s in SPLITS}
    for batch in iter_documents(corpus, batch_size=cfg.encode_batch_docs):
        ids_col, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
        for doc_id, text, ids in zip(ids_col, texts, encoder.encode_batch(texts)):
            split = split_of(doc_id, cfg.val_fraction)
            writers[split].add(np.concatenate([np.asarray(ids, dtype=np.int64), eos]))
            text_bytes[split] += len(text.encode("utf-8"))
    totals = {}
    for split, w in writers.items():
        w.flush()
        totals[split] = {
            "documents": sum(s["documents"] for s in w.shards),
            "tokens": sum(s["tokens"] for s in w.shards),
            "text_bytes": text_bytes[split],
        }
    for split in SPLITS:
        if totals[split]["tokens"] == 0:
            raise ValueError(
                f"the {split} split is empty: the corpus has {sum(t['documents'] for t in totals.values())} "
                f"document(s); add documents or change val_fraction ({cfg.val_fraction})"
            )
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


def load_split_tokens(shards: Storage, split: str, expected_tokenizer_sha256: str | None = None) -> tuple[np.ndarray, dict]:
    """All tokens of one split as one flat array, each shard checked against the manifest first."""
    if not shards.exists(MANIFEST):
        raise ShardError(f"no shard manifest at {shards.uri}/{MANIFEST}")
    manifest = shards.read_json(MANIFEST)
    if expected_tokenizer_sha256 and manifest["tokenizer_sha256"] != expected_tokenizer_sha256:
        raise ShardError(
            f"shards at {shards.uri} were made with tokenizer {manifest['tokenizer_sha256'][:12]}, "
            f"not the expected {expected_tokenizer_sha256[:12]}"
        )
    parts = []
    for shard in (s for s in manifest["shards"] if s["split"] == split):
        name = shard["name"]
        if not shards.exists(name):
            raise ShardError(f"shard {shards.uri}/{name} listed in the manifest is missing")
        data = shards.read_bytes(name)
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise ShardError(f"shard {shards.uri}/{name} does not match its sha256 in the manifest")
        try:
            column = pq.read_table(pa.BufferReader(data), columns=["tokens"]).column("tokens")
        except (pa.ArrowException, OSError) as e:
            raise ShardError(f"shard {shards.uri}/{name} is not a readable Parquet file: {e}") from e
        values = np.concatenate([c.values.to_numpy(zero_copy_only=False) for c in column.chunks])
        if len(values) != shard["tokens"]:
            raise ShardError(f"shard {shards.uri}/{name} has {len(values)} tokens, manifest says {shard['tokens']}")
        parts.append(values)
    if not parts:
        raise ShardError(f"no {split} shards listed in {shards.uri}/{MANIFEST}")
    return np.concatenate(parts), manifest
