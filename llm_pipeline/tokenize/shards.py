"""Token shards: `train-NNNNN.parquet` / `val-NNNNN.parquet` plus a manifest written last.

One row per document: its token ids followed by EOS, as a list of the smallest unsigned integer
type that fits the vocabulary. The split is a function of the document id alone, so the same
corpus and config give byte-identical shards.

Encoding streams: a reader thread prefetches document batches, the encoder uses every core, and the
shared shard writer (storage/parquet_shards.py) compresses row groups in its own thread, so memory
stays bounded by a few batches plus one compressed shard per split whatever the corpus size.
"""

from __future__ import annotations

import hashlib
from collections import deque

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from tokenizers import Tokenizer

from llm_pipeline.corpus.build import iter_documents
from llm_pipeline.corpus.manifest import read_corpus_manifest
from llm_pipeline.evaluate.contamination import CONTAMINATION_MIN_OVERLAP, CONTAMINATION_NGRAM
from llm_pipeline.faults import crash_point
from llm_pipeline.prefetch import prefetch
from llm_pipeline.ray_cluster import Executor
from llm_pipeline.settings import Settings
from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import write_manifest
from llm_pipeline.storage.parquet_shards import ParquetShards
from llm_pipeline.tokenize.bpe import smallest_uint_type
from llm_pipeline.tokenize.decontaminate import HeldOutNgrams, decontaminated
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.flat_tokens import FlatWriter
from llm_pipeline.tokenize.manifest import (
    DroppedCounts,
    FlatSplit,
    ShardDecontamination,
    ShardManifest,
    Split,
    SplitRule,
    SplitTotals,
    TokenShard,
)

SPLITS: tuple[Split, ...] = ("train", "val")


class ShardConfig(Settings):
    val_fraction: float = Field(default=0.05, gt=0, lt=1, description="share of documents (by id hash) held out for validation")
    tokens_per_shard: int = Field(default=50_000_000, gt=0, description="tokens per Parquet shard file")
    row_group_rows: int = Field(default=1024, gt=0, description="documents per Parquet row group")
    encode_batch_docs: int = Field(default=512, gt=0, description="documents per encoder call")
    executor: Executor = Field(
        default="local", description="local: this machine's cores; ray: each corpus row group encoded by a Ray task on the cluster"
    )
    decontaminate_ngram: int = Field(
        default=CONTAMINATION_NGRAM,
        ge=0,
        le=64,
        description="drop training documents that would put a validation document over the contamination gate, "
        "comparing n-grams of this many tokens (the gate's contamination_ngram); 0 keeps every training document",
    )
    decontaminate_min_overlap: float = Field(
        default=CONTAMINATION_MIN_OVERLAP,
        gt=0,
        le=1,
        description="a training document is dropped when keeping it would put this share of some validation "
        "document's n-grams in the training split (the gate's contamination_min_overlap)",
    )


def split_of(doc_id: str, val_fraction: float) -> Split:
    """Deterministic: a document's split depends only on its id (a content hash)."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


class _SplitWriter:
    """One split's documents, each a row of token ids (EOS-terminated), into the shared shard writer."""

    def __init__(self, split: Split, dtype: str, cfg: ShardConfig, out: Storage):
        self.split, self.batch_rows = split, cfg.row_group_rows
        schema = pa.schema([("tokens", pa.large_list(pa.from_numpy_dtype(np.dtype(dtype))))])
        self.writer = ParquetShards(out, split, schema, cfg.tokens_per_shard, cfg.row_group_rows)
        self.rows: list[np.ndarray] = []
        self.row_max: list[np.ndarray] = []  # each document's largest id, for each shard's max_id
        self.flat = FlatWriter(split, dtype)
        self.out = out

    def add(self, ids: np.ndarray) -> None:
        self.rows.append(ids)
        self.flat.add(ids)
        if len(self.rows) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        offsets = np.zeros(len(self.rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in self.rows], out=offsets[1:])
        flat = np.concatenate(self.rows)
        self.row_max.append(np.maximum.reduceat(flat, offsets[:-1]))  # every row holds at least EOS
        self.writer.append(pa.table({"tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat))}))
        self.rows = []

    def close(self) -> list[TokenShard]:
        self.flush()
        files, row_max, start = self.writer.close(), np.concatenate(self.row_max or [np.zeros(0, np.int64)]), 0
        shards = []
        for f in files:
            shards.append(
                TokenShard(
                    name=f.name,
                    split=self.split,
                    documents=f.rows,
                    tokens=f.size,
                    max_id=int(row_max[start : start + f.rows].max()),
                    bytes=f.bytes,
                    sha256=f.sha256,
                )
            )
            start += f.rows
        return shards

    def finish_flat(self) -> FlatSplit:
        return self.flat.finish(self.out)

    def abort(self, error: BaseException) -> None:
        self.writer.abort(error)
        self.flat.abort()


def write_shards(
    corpus: Storage, out: Storage, encoder: DocumentEncoder, vocab_size: int, tokenizer_sha256: str, cfg: ShardConfig, ray_address: str = ""
) -> ShardManifest:
    """Encode the corpus in bounded batches and write shards + manifest. Returns the manifest.
    With `executor: ray`, the encoding runs on the Ray cluster at `ray_address` (a driver address)."""
    held_out = _held_out_ngrams(corpus, encoder, cfg)
    if cfg.executor == "ray":
        on_ray = _documents_on_ray(corpus, encoder, cfg, ray_address)
        return write_token_documents(out, on_ray, vocab_size, encoder.eos_id, tokenizer_sha256, cfg, encoder.engine, held_out)
    pending: deque[tuple[str, int]] = deque()  # (split, UTF-8 bytes) of documents in flight, in order

    def texts():
        for batch in prefetch(iter_documents(corpus, batch_size=cfg.encode_batch_docs)):
            for doc_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                pending.append((split_of(doc_id, cfg.val_fraction), len(text.encode("utf-8"))))
                yield text

    def documents():
        for ids in encoder.encode_stream(texts(), window=2 * cfg.encode_batch_docs):
            split, nbytes = pending.popleft()
            yield split, ids, nbytes

    return write_token_documents(out, documents(), vocab_size, encoder.eos_id, tokenizer_sha256, cfg, encoder.engine, held_out)


def _held_out_ngrams(corpus: Storage, encoder: DocumentEncoder, cfg: ShardConfig) -> HeldOutNgrams | None:
    """The validation split's n-grams, read and encoded before any shard is written (a twentieth of the
    encoding at the default val_fraction), so that each training document can be decided as it streams."""
    if not cfg.decontaminate_ngram:
        return None

    def val_texts():
        for batch in prefetch(iter_documents(corpus, batch_size=cfg.encode_batch_docs)):
            val = [i for i, doc_id in enumerate(batch.column("id").to_pylist()) if split_of(doc_id, cfg.val_fraction) == "val"]
            yield from batch.column("text").take(pa.array(val, type=pa.int64())).to_pylist()  # only these become strings

    val = encoder.encode_stream(val_texts(), window=2 * cfg.encode_batch_docs)
    return HeldOutNgrams(val, cfg.decontaminate_ngram, cfg.decontaminate_min_overlap)


def _documents_on_ray(corpus: Storage, encoder: DocumentEncoder, cfg: ShardConfig, address: str):
    """(split, ids, UTF-8 bytes) per document in corpus order, each row group of the corpus's Parquet
    files encoded by a Ray task (the tokenizer shipped once through the object store). Every node
    must reach the corpus URI. The same encoder, so the same ids: the shards are byte-identical."""
    import ray

    from llm_pipeline.ray_cluster import cluster_cpus, connected, ordered_map

    if not address:
        raise ValueError(
            "tokenized_shards executor 'ray' needs the Ray cluster's address (LLM_PIPELINE_RAY_ADDRESS; on the command line --ray-address)"
        )
    manifest = read_corpus_manifest(corpus)
    with connected(address):
        tokenizer = ray.put(encoder.tokenizer.to_str())
        units = []
        for shard in manifest.shards:
            with corpus.open_read(shard.name) as f:
                groups = pq.ParquetFile(f).num_row_groups
            units += [
                (corpus.uri, corpus.storage_options, shard.name, g, tokenizer, encoder.engine, cfg.val_fraction) for g in range(groups)
            ]
        for documents in ordered_map(encode_row_group, units, 2 * max(1, cluster_cpus())):
            yield from documents


_ENCODERS: dict[str, DocumentEncoder] = {}  # a Ray worker's encoders, by tokenizer: built once per process


def encode_row_group(
    corpus_uri: str, storage_options: dict, shard: str, row_group: int, tokenizer_json: str, engine: str, val_fraction: float
) -> list[tuple[str, np.ndarray, int]]:
    """One row group of a corpus Parquet file encoded (a Ray task): (split, ids, UTF-8 bytes) per document."""
    key = hashlib.sha256(tokenizer_json.encode()).hexdigest() + engine
    if key not in _ENCODERS:
        _ENCODERS[key] = DocumentEncoder(Tokenizer.from_str(tokenizer_json), engine)
    with Storage(corpus_uri, **storage_options).open_read(shard) as f:
        table = pq.ParquetFile(f).read_row_group(row_group, columns=["id", "text"])
    doc_ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    encoded = _ENCODERS[key].encode_stream(texts, window=len(texts) or 1)
    return [(split_of(d, val_fraction), ids, len(t.encode("utf-8"))) for d, t, ids in zip(doc_ids, texts, encoded)]


def write_token_documents(
    out: Storage,
    documents,
    vocab_size: int,
    eos_id: int,
    tokenizer_sha256: str,
    cfg: ShardConfig,
    encoder_engine: str,
    held_out: HeldOutNgrams | None = None,
) -> ShardManifest:
    """Shards, flat files and manifest from (split, token ids, UTF-8 bytes of the text) per document,
    in order; EOS is appended to each. With `held_out`, the training documents it refuses are left out
    and counted. Returns the manifest."""
    dropped = {"documents": 0, "tokens": 0, "text_bytes": 0}
    if held_out is not None:
        documents = decontaminated(documents, held_out, dropped)
    dtype = smallest_uint_type(vocab_size)
    writers = {s: _SplitWriter(s, dtype, cfg, out) for s in SPLITS}
    eos = np.array([eos_id], dtype=dtype)
    text_bytes = {s: 0 for s in SPLITS}
    try:
        for split, ids, nbytes in documents:
            if ids.size and int(ids.max()) >= vocab_size:  # would wrap around in the shard's dtype
                raise ValueError(
                    f"token id {int(ids.max())} is >= vocab_size {vocab_size}: the tokenizer's ids do not fit "
                    f"the vocabulary the shards are written for"
                )
            writers[split].add(np.concatenate([ids.astype(dtype, copy=False), eos]))
            text_bytes[split] += nbytes
    except BaseException as e:
        for w in writers.values():
            w.abort(e)
        raise
    shards = {split: w.close() for split, w in writers.items()}
    manifest = ShardManifest(
        tokenizer_sha256=tokenizer_sha256,
        vocab_size=vocab_size,
        eos_id=eos_id,
        dtype=dtype,
        encoder_engine=encoder_engine,
        split_rule=SplitRule(hash="sha256(document id)[:8] / 2**32 < val_fraction -> val", val_fraction=cfg.val_fraction),
        decontamination=None
        if held_out is None
        else ShardDecontamination(n=held_out.n, min_overlap=held_out.min_overlap, dropped_as_eval_overlap=DroppedCounts(**dropped)),
        tokens_per_shard=cfg.tokens_per_shard,
        row_group_rows=cfg.row_group_rows,
        splits={
            split: SplitTotals(
                documents=sum(s.documents for s in written), tokens=sum(s.tokens for s in written), text_bytes=text_bytes[split]
            )
            for split, written in shards.items()
        },
        shards=(*shards["train"], *shards["val"]),
        flat={split: w.finish_flat() for split, w in writers.items()},  # each split as one memory-mappable array (train/token_store.py)
    )
    crash_point("shards_before_manifest")  # the crash tests: every shard written, no manifest yet
    write_manifest(out, manifest.model_dump(mode="json"))
    return manifest
