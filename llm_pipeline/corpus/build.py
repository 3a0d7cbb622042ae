"""Build the cleaned corpus: read files from a source URI, filter, dedup, write Parquet + manifest.

Dropped documents are not lost: they go to quarantine Parquet files with the reason.
"""

from __future__ import annotations

import fnmatch
import posixpath
import sysconfig
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from llm_pipeline.corpus.filters import FilterConfig, NearDuplicateIndex, document_id, quality_reason
from llm_pipeline.storage import Storage

DOCUMENT_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])
QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string()), ("content", pa.binary())])
MANIFEST = "manifest.json"


def default_corpus_uri() -> str:
    """The Python standard library's own source: a real corpus present on every machine that runs us."""
    return sysconfig.get_paths()["stdlib"]


class CorpusSourceError(ValueError):
    pass


@dataclass(frozen=True)
class CorpusConfig:
    source_uri: str = field(default_factory=default_corpus_uri)
    glob: str = "**/*.py"
    # Relative-path patterns to skip. The default keeps the stdlib corpus the same on every
    # machine: installed packages under site-packages differ from one to the next.
    exclude: tuple[str, ...] = ("site-packages/*", "dist-packages/*")
    max_bytes: int = 8_000_000
    shard_bytes: int = 64_000_000
    filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self):
        if not self.source_uri:
            raise ValueError("source_uri is empty")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")
        if self.shard_bytes <= 0:
            raise ValueError(f"shard_bytes must be > 0, got {self.shard_bytes}")


def list_source_files(
    source_uri: str, glob: str, exclude: tuple[str, ...] = (), storage_options: dict | None = None
) -> tuple[object, list[str]]:
    """The files under source_uri matching glob, in a stable (sorted) order. Raises if there are none."""
    fs, root = url_to_fs(source_uri, **(storage_options or {}))
    if not fs.exists(root):
        raise CorpusSourceError(f"corpus source_uri {source_uri!r} does not exist")
    if fs.isfile(root):
        return fs, [root]
    root = root.rstrip("/")
    paths = sorted(
        p
        for p in fs.glob(posixpath.join(root, glob))
        if not any(fnmatch.fnmatchcase(posixpath.relpath(p, root), pat) for pat in exclude) and fs.isfile(p)
    )
    if not paths:
        raise CorpusSourceError(f"corpus source_uri {source_uri!r} has no files matching glob {glob!r}")
    return fs, paths


def _read_sources(fs, paths: list[str], max_bytes: int) -> Iterator[tuple[str, bytes]]:
    total = 0
    for path in paths:
        if total >= max_bytes:
            return
        data = fs.cat_file(path)
        total += len(data)
        yield path, data


class _ShardWriter:
    """Writes rows into Parquet files named `<prefix>-NNNNN.parquet`, each written atomically."""

    def __init__(self, out: Storage, prefix: str, schema: pa.Schema, shard_bytes: int):
        self.out, self.prefix, self.schema, self.shard_bytes = out, prefix, schema, shard_bytes
        self.rows: list[dict] = []
        self.bytes = 0
        self.files: list[dict] = []

    def add(self, row: dict, nbytes: int) -> None:
        self.rows.append(row)
        self.bytes += nbytes
        if self.bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"{self.prefix}-{len(self.files):05d}.parquet"
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.out.write_bytes(name, sink.getvalue().to_pybytes())
        self.files.append({"name": name, "rows": len(self.rows), "sha256": self.out.sha256(name)})
        self.rows, self.bytes = [], 0


def build_corpus(cfg: CorpusConfig, out: Storage, storage_options: dict | None = None) -> dict:
    """Read, clean and write the corpus under `out`. Returns the manifest (also written last)."""
    fs, paths = list_source_files(cfg.source_uri, cfg.glob, cfg.exclude, storage_options)
    docs = _ShardWriter(out, "documents", DOCUMENT_SCHEMA, cfg.shard_bytes)
    quarantine = _ShardWriter(out, "quarantine", QUARANTINE_SCHEMA, cfg.shard_bytes)
    seen_ids: set[str] = set()
    near = NearDuplicateIndex(cfg.filters.near_dedup_threshold) if cfg.filters.near_dedup else None
    dropped: dict[str, int] = {}
    files_read = bytes_read = doc_count = text_bytes = 0

    for path, data in _read_sources(fs, paths, cfg.max_bytes):
        files_read += 1
        bytes_read += len(data)
        source = fs.unstrip_protocol(path)
        reason = None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            reason, text = "invalid_utf8", ""
        if reason is None:
            text = text.replace("\r\n", "\n")
            reason = quality_reason(text, cfg.filters)
        if reason is None:
            doc_id = document_id(text)
            if doc_id in seen_ids:
                reason = "exact_duplicate"
            elif near is not None and near.is_near_duplicate(text):
                reason = "near_duplicate"
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            quarantine.add({"source": source, "reason": reason, "content": data}, len(data))
            continue
        seen_ids.add(doc_id)
        encoded_len = len(text.encode("utf-8"))
        docs.add({"id": doc_id, "text": text, "source": source}, encoded_len)
        doc_count += 1
        text_bytes += encoded_len

    docs.flush()
    quarantine.flush()
    if doc_count == 0:
        raise CorpusSourceError(
            f"corpus source_uri {cfg.source_uri!r}: all {files_read} files were dropped ({dropped}); "
            f"see the quarantine files under {out.uri}"
        )
    manifest = {
        "kind": "raw_corpus",
        "source_uri": cfg.source_uri,
        "glob": cfg.glob,
        "files_matched": len(paths),
        "files_read": files_read,
        "bytes_read": bytes_read,
        "documents": doc_count,
        "text_bytes": text_bytes,
        "dropped": dict(sorted(dropped.items())),
        "shards": docs.files,
        "quarantine": quarantine.files,
    }
    out.write_json(MANIFEST, manifest)
    return manifest


def iter_documents(corpus: Storage, batch_size: int = 1024, columns=("id", "text")) -> Iterator[pa.RecordBatch]:
    """Stream the corpus's documents in bounded batches, in manifest order."""
    manifest = corpus.read_json(MANIFEST)
    for shard in manifest["shards"]:
        with corpus.fs.open(corpus.full(shard["name"]), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=list(columns)):
                yield batch
