"""Clean one source file: read its records, filter them, hash and sign what is kept.

This is the part of the corpus build that runs on every core: each worker process takes whole files
and spools its results to local Arrow files (candidate documents with their MinHash signatures, and
quarantined records). The build then merges the spools in file order, which is where deduplication
decides, so the output does not depend on how many workers there were.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from dataclasses import dataclass, field

import fsspec.compression
import pyarrow as pa
from fsspec.core import url_to_fs

from llm_pipeline.corpus.cleaning import Rules, clean_many, preset_for
from llm_pipeline.corpus.filters import FilterConfig, document_id
from llm_pipeline.corpus.near_dedup import NUM_PERM, document_signatures
from llm_pipeline.corpus.readers import PREFIX_BYTES, Record, ZstdReader, detect, read_jsonl, read_parquet, read_text
from llm_pipeline.corpus.sources import SourceFile
from llm_pipeline.storage.folders import bounded, is_local_fs, open_regular

CANDIDATE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("location", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("signature", pa.binary(NUM_PERM * 4)),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("location", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("content", pa.binary()),
        ("content_bytes", pa.int64()),
    ]
)
# Documents cleaned together (the Gopher rules count n-grams for a batch at once in numpy): 128 or
# 4 M characters measured as fast as any larger batch, and a batch's text stays small beside the spool.
_CLEAN_BATCH_RECORDS = 128
_CLEAN_BATCH_CHARS = 4_000_000
_SPOOL_ROWS = 2048
_SPOOL_BYTES = 16 * 1024 * 1024
_REMOTE_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class CleanOptions:
    root_uri: str
    storage_options: dict
    format: str
    text_field: str
    filters: FilterConfig
    quarantine_content_bytes: int
    rules: Rules

    @property
    def max_doc_bytes(self) -> int:
        return 4 * self.filters.max_chars  # UTF-8 needs at most 4 bytes a character

    @property
    def max_line_bytes(self) -> int:
        return 6 * self.filters.max_chars + 65536  # JSON may escape a character as \\uXXXX


@dataclass
class FileResult:
    index: int
    format: str
    preset: str = ""
    records: int = 0
    candidates: int = 0
    decoded_bytes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    modified: dict[str, int] = field(default_factory=dict)  # documents kept with their text changed, by step
    examples: dict[str, str] = field(default_factory=dict)  # first detail per reason
    error: str | None = None  # a bug, not bad data: the build stops and names the file


def record_source(file_uri: str, location: str) -> str:
    """A document's `source`: its file's URI, and `#line=N` / `#row=N` for a record inside it.
    '%' and '#' in the URI are percent-encoded (as in a URI fragment's path), so the first '#' always
    starts the location and no file's name can pass for a line of another file."""
    uri = file_uri.replace("%", "%25").replace("#", "%23")
    return f"{uri}#{location}" if location else uri


def candidates_path(spool: str, index: int) -> str:
    return os.path.join(spool, f"{index:07d}-candidates.arrow")


def quarantine_path(spool: str, index: int) -> str:
    return os.path.join(spool, f"{index:07d}-quarantine.arrow")


class _Spool:
    """Buffered rows written to one Arrow IPC file as record batches of bounded size."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.columns: dict[str, list] = {name: [] for name in schema.names}
        self.bytes = 0
        self.writer: pa.ipc.RecordBatchFileWriter | None = None

    def add(self, nbytes: int, **row) -> None:
        for name, value in row.items():
            self.columns[name].append(value)
        self.bytes += nbytes
        if len(self.columns[self.schema.names[0]]) >= _SPOOL_ROWS or self.bytes >= _SPOOL_BYTES:
            self.flush()

    def __len__(self) -> int:
        return len(self.columns[self.schema.names[0]])

    def flush(self) -> None:
        if self.writer is None:
            self.writer = pa.ipc.new_file(self.path, self.schema)
        if len(self):
            self.writer.write_batch(
                pa.record_batch([pa.array(self.columns[n], self.schema.field(n).type) for n in self.schema.names], schema=self.schema)
            )
        self.columns = {name: [] for name in self.schema.names}
        self.bytes = 0

    def close(self) -> None:
        self.flush()
        assert self.writer is not None  # flush made it
        self.writer.close()


class _Candidates(_Spool):
    """Kept-so-far documents: signatures are computed per batch (one rensa call for many documents)."""

    def __init__(self, path: str, near_dedup: bool):
        super().__init__(path, CANDIDATE_SCHEMA)
        self.near_dedup = near_dedup

    def add_document(self, doc_id: str, text: str, source: str, location: str, language: str | None, language_score: float | None) -> None:
        self.add(
            len(text),
            id=doc_id,
            text=text,
            source=source,
            location=location,
            language=language,
            language_score=language_score,
            signature=None,
        )

    def flush(self) -> None:
        if self.near_dedup and len(self):
            sigs = document_signatures(self.columns["text"])
            self.columns["signature"] = [row.tobytes() for row in sigs]
        super().flush()


def clean_file(file: SourceFile, index: int, opts: CleanOptions, spool: str, fs=None) -> FileResult:
    """Read, filter and sign one file into the spool. Bad data becomes quarantine rows, never an exception."""
    fs = fs if fs is not None else url_to_fs(opts.root_uri, **opts.storage_options)[0]
    fmt, compression = detect(file.rel or file.path, opts.format)
    preset = preset_for(file.rel or file.path, opts.filters.preset)
    steps = opts.filters.steps_for(preset)
    result = FileResult(index, fmt, preset if opts.filters.steps is None else "steps")
    candidates = _Candidates(candidates_path(spool, index), opts.filters.near_dedup)
    quarantine = _Spool(quarantine_path(spool, index), QUARANTINE_SCHEMA)

    def drop(record: Record, reason: str, detail: str, content: bytes, size: int) -> None:
        detail = bounded(detail, 500)  # a field name or column list of any size stays a short message
        result.dropped[reason] = result.dropped.get(reason, 0) + 1
        where = record_source(file.uri, record.location)
        result.examples.setdefault(reason, f"{where}: {detail}" if detail else where)
        cap = opts.quarantine_content_bytes
        quarantine.add(
            min(len(content), cap),
            source=file.uri,
            location=record.location,
            reason=reason,
            detail=detail,
            content=content[:cap],
            content_bytes=size,
        )

    def settle(batch: list[tuple[Record, str | None]]) -> None:
        """A batch of records, in order: the cleaning steps on the texts, then each record kept or dropped."""
        texts = [text for _, text in batch if text is not None]
        outcomes = iter(clean_many(texts, steps, opts.rules))
        for record, text in batch:
            if text is None:
                drop(record, record.reason or "no_text", record.detail, record.raw, record.raw_size)
                continue
            outcome = next(outcomes)
            if outcome.reason is not None:
                encoded = text.encode("utf-8", "surrogatepass")  # the text as it came, before any step changed it
                reason = outcome.reason
                drop(record, reason, outcome.detail, encoded[:PREFIX_BYTES] if reason == "too_long" else encoded, len(encoded))
                continue
            for step in outcome.modified:
                result.modified[step] = result.modified.get(step, 0) + 1
            source = record_source(file.uri, record.location)
            candidates.add_document(
                document_id(outcome.text), outcome.text, source, record.location, outcome.language, outcome.language_score
            )
            result.candidates += 1

    try:
        batch: list[tuple[Record, str | None]] = []
        batch_chars = 0
        for record in _records(fs, file, fmt, compression, opts):
            result.records += 1
            result.decoded_bytes += record.raw_size
            text = record.text
            if text is not None:
                if text.startswith("\ufeff"):
                    text = text[1:]
                if "\r" in text:  # every line-ending convention (\r\n, old Mac \r) stored as \n
                    text = text.replace("\r\n", "\n").replace("\r", "\n")
                batch_chars += len(text)
            batch.append((record, text))
            # batches of a fixed size in records and characters: what is decided never depends on them
            if len(batch) >= _CLEAN_BATCH_RECORDS or batch_chars >= _CLEAN_BATCH_CHARS:
                settle(batch)
                batch, batch_chars = [], 0
        settle(batch)
        candidates.close()
        quarantine.close()
    except Exception:  # noqa: BLE001 - reported with the file's name; the build stops
        result.error = f"{file.uri}: {traceback.format_exc()}"
    return result


def _records(fs, file: SourceFile, fmt: str, compression: str | None, opts: CleanOptions):
    remote = not is_local_fs(fs)
    try:
        if fmt == "parquet" and compression:
            yield Record(
                "", reason="unreadable", detail=f"{compression}-compressed Parquet is not supported; Parquet compresses its own pages"
            )
            return
        # Locally only a regular file is opened: a FIFO or device swapped in since the listing cannot hang the read.
        with fs.open(file.path, "rb", block_size=_REMOTE_BLOCK) if remote else open_regular(file.path) as raw:
            if fmt == "parquet":
                yield from read_parquet(raw, opts.text_field, opts.max_doc_bytes)
                return
            with _decompressed(raw, compression) as f:
                if fmt == "jsonl":
                    yield from read_jsonl(f, opts.text_field, opts.max_line_bytes)
                else:
                    yield from read_text(f, opts.max_doc_bytes)
    except OSError as e:  # cannot open at all: permissions, vanished or replaced since the listing
        yield Record("", reason="unreadable", detail=bounded(f"{type(e).__name__}: {e}"))


def _decompressed(raw, compression: str | None):
    """The file's decompressed bytes; zstd through our own reader, which reports a frame cut short."""
    if compression is None:
        return contextlib.nullcontext(raw)
    if compression == "zstd":
        return ZstdReader(raw)
    return fsspec.compression.compr[compression](raw, mode="rb")


def clean_files_elsewhere(files: list[tuple[int, SourceFile]], opts: CleanOptions) -> list[tuple[FileResult, dict[str, bytes]]]:
    """`clean_file` for each (index, file) on another machine (one Ray task for several files: a task
    costs milliseconds to schedule, a small file less to clean): each file's result with its spool
    files as bytes, by name."""
    fs = url_to_fs(opts.root_uri, **opts.storage_options)[0]
    out = []
    with tempfile.TemporaryDirectory(prefix="llm-pipeline-clean-") as spool:
        for index, file in files:
            result = clean_file(file, index, opts, spool, fs)
            spooled = {}
            for path in (candidates_path(spool, index), quarantine_path(spool, index)):
                with open(path, "rb") as f:
                    spooled[os.path.basename(path)] = f.read()
                os.remove(path)
            out.append((result, spooled))
    return out


def worker_main(tasks, results, opts: CleanOptions, spool: str) -> None:
    """A worker process: clean files from `tasks` until None, reporting each FileResult."""
    fs = url_to_fs(opts.root_uri, **opts.storage_options)[0]
    while (task := tasks.get()) is not None:
        index, file = task
        results.put(clean_file(file, index, opts, spool, fs))
