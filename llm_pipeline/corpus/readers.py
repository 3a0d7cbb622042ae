"""Readers by format: plain text, JSON Lines and Parquet, each optionally compressed.

Every reader streams: nothing reads a file whole. A record the reader cannot turn into text (broken
JSON, a missing or non-string field, an oversized document, a corrupt compressed stream) comes out
as a `Record` with a reason, its location and a prefix of its bytes, and the reader carries on with
the rest of the file.
"""

from __future__ import annotations

import codecs
import json
import posixpath
import typing
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

Format = typing.Literal["auto", "text", "jsonl", "parquet"]
FORMATS = typing.get_args(Format)
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")  # Dolma and others ship JSON Lines as .json.gz
_PARQUET_SUFFIXES = (".parquet", ".pq")
# How much of a dropped record the quarantine keeps when the record is larger.
PREFIX_BYTES = 4096
_CHUNK = 1 << 20
# Parquet row groups are read whole by pyarrow; one larger than this is quarantined unread.
MAX_ROW_GROUP_BYTES = 512 * 1024 * 1024


@dataclass
class Record:
    location: str  # "" for a whole file, "line=N" (JSON Lines, 1-based) or "row=N" (Parquet, 0-based)
    text: str | None = None
    reason: str | None = None  # why no text: the record goes to quarantine
    detail: str = ""
    raw: bytes = b""  # the record's bytes (a prefix when it is large), for the quarantine
    raw_size: int = 0


def detect(name: str, format_override: str = "auto") -> tuple[str, str | None]:
    """(format, compression) from a file name; `format_override` replaces the guessed format."""
    base = posixpath.basename(name).lower()
    compression = next((c for suffix, c in COMPRESSIONS.items() if base.endswith(suffix)), None)
    if compression:
        base = base[: base.rfind(".")]
    if format_override != "auto":
        return format_override, compression
    if base.endswith(_JSONL_SUFFIXES):
        return "jsonl", compression
    if base.endswith(_PARQUET_SUFFIXES):
        return "parquet", compression
    return "text", compression


class CorruptStream(Exception):
    """The (compressed) byte stream broke off: what was read before it stands."""


class ZstdReader:
    """A .zst stream decoded frame after frame, which says when it breaks off.

    zstandard's own stream reader (what fsspec opens .zst files with) returns end-of-file when the
    input ends inside a frame: an upload cut short reads as a complete, shorter file, and the
    documents of its last frame vanish without a trace. Here input that ends inside a frame (its
    content, or the checksum its header announced) is an error, as it is for gzip, bz2 and xz;
    a frame's checksum is verified when present, and bytes after the last frame must be a frame."""

    def __init__(self, raw):
        self.raw = raw
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._frame_bytes = 0  # compressed bytes fed to it
        self._pending = b""

    def read1(self, n: int = -1) -> bytes:
        while True:
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                data = self.raw.read(_CHUNK)
                if not data:
                    if self._frame is not None and self._frame_bytes:
                        raise zstandard.ZstdError(
                            f"the stream ends inside a zstd frame ({self._frame_bytes} bytes of it read): "
                            "truncated, or its checksum missing"
                        )
                    return b""
            if self._frame is None:
                self._frame, self._frame_bytes = zstandard.ZstdDecompressor().decompressobj(), 0
            self._frame_bytes += len(data)
            out = self._frame.decompress(data)
            if self._frame.eof:
                self._pending, self._frame = self._frame.unused_data, None
            if out:
                return out

    read = read1

    def close(self) -> None:
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks(stream) -> Iterator[bytes]:
    """The stream's bytes as UTF-8 chunks: a UTF-8 BOM dropped, UTF-16 (by its BOM) re-encoded."""
    first = _read(stream, _CHUNK)
    if first.startswith(codecs.BOM_UTF8):
        first = first[len(codecs.BOM_UTF8) :]
    elif first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        decoder = codecs.getincrementaldecoder("utf-16")(errors="strict")
        chunk = first
        while chunk:
            yield decoder.decode(chunk).encode("utf-8", "surrogatepass")
            chunk = _read(stream, _CHUNK)
        yield decoder.decode(b"", final=True).encode("utf-8", "surrogatepass")
        return
    chunk = first
    while chunk:
        yield chunk
        chunk = _read(stream, _CHUNK)


def _read(stream, n: int) -> bytes:
    # read1: a decompressor's read(n) discards what it decoded when it meets corruption on the way
    # to n bytes; read1 returns each piece as it is decoded, so everything before the damage is kept.
    try:
        return stream.read1(n) if hasattr(stream, "read1") else stream.read(n)
    except Exception as e:  # noqa: BLE001 - gzip, bz2, lzma, zstd and I/O errors all end the stream here
        raise CorruptStream(f"{type(e).__name__}: {e}") from None


def decode_text(data: bytes) -> tuple[str | None, str]:
    """(text, "") or (None, reason detail). A UTF-8 BOM is dropped; a UTF-16 BOM decodes as UTF-16."""
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return data.decode("utf-16"), ""
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as e:
        return None, f"{e.reason} at byte {e.start}"


def read_text(stream, max_doc_bytes: int) -> Iterator[Record]:
    """The whole file is one document; a file over `max_doc_bytes` is quarantined after reading that much."""
    buf = bytearray()
    try:
        for chunk in _raw_chunks(stream):
            buf += chunk
            if len(buf) > max_doc_bytes:
                yield Record(
                    "",
                    reason="too_long",
                    detail=f"document larger than {max_doc_bytes} bytes (read no further)",
                    raw=bytes(buf[:PREFIX_BYTES]),
                    raw_size=len(buf),
                )
                return
    except CorruptStream as e:
        yield Record("", reason="corrupt_stream", detail=f"after {len(buf)} bytes: {e}", raw=bytes(buf[:PREFIX_BYTES]), raw_size=len(buf))
        return
    data = bytes(buf)
    text, detail = decode_text(data)
    if text is None:
        reason = "invalid_utf16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "invalid_utf8"
        yield Record("", reason=reason, detail=detail, raw=data[:PREFIX_BYTES] if len(data) > PREFIX_BYTES else data, raw_size=len(data))
        return
    yield Record("", text=text, raw_size=len(data))


def _raw_chunks(stream) -> Iterator[bytes]:
    while chunk := _read(stream, _CHUNK):
        yield chunk


def _newlines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Chunks with every line ending as \n: \r\n (Windows) and a lone \r (old Mac) too. JSON text
    never holds a raw CR inside a value, so this cannot split a record. A CR that ends a chunk waits
    for the next one, which may start with its LF."""
    held = b""
    for chunk in chunks:
        chunk = held + chunk
        held = b""
        if chunk.endswith(b"\r"):
            chunk, held = chunk[:-1], b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        yield chunk
    if held:
        yield b"\n"


def _lines(stream, max_line_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(line, its full length) for each line; a line over the limit comes back as a prefix with its length."""
    pending = b""
    oversize = -1  # >= 0 while inside a line already known to be too long: its length so far
    prefix = b""
    for chunk in _newlines(_chunks(stream)):
        pieces = chunk.split(b"\n")
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if oversize >= 0:
                oversize += len(piece)
                if not last:
                    yield prefix, oversize
                    oversize, prefix = -1, b""
                continue
            line = pending + piece if pending else piece
            pending = b""
            if len(line) > max_line_bytes:
                if last:
                    oversize, prefix = len(line), line[:PREFIX_BYTES]
                else:
                    yield line[:PREFIX_BYTES], len(line)
            elif last:
                pending = line
            else:
                yield line, len(line)
    if oversize >= 0:
        yield prefix, oversize
    elif pending:
        yield pending, len(pending)


def read_jsonl(stream, text_field: str, max_line_bytes: int) -> Iterator[Record]:
    """One document per JSON object line, its text in `text_field`. Blank lines are not records."""
    line_no = 0
    try:
        for line, size in _lines(stream, max_line_bytes):
            line_no += 1
            if size > len(line):
                yield Record(
                    f"line={line_no}", reason="too_long", detail=f"line of {size} bytes exceeds {max_line_bytes}", raw=line, raw_size=size
                )
                continue
            if not line.strip():
                continue
            yield _json_record(line, line_no, text_field)
    except CorruptStream as e:
        yield Record(f"line={line_no + 1}", reason="corrupt_stream", detail=f"the stream broke off after line {line_no}: {e}")


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _numbers_as_text(line: bytes):
    """The record orjson refused for a number it cannot hold (a 5,000-digit integer, 1e999): valid JSON
    whose text belongs in the corpus. Every number becomes a float (inf when too large: only the text
    is kept); None if the line is not JSON."""
    try:
        return json.loads(line, parse_int=float, parse_float=float, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return None


def _json_record(line: bytes, line_no: int, text_field: str) -> Record:
    location = f"line={line_no}"
    raw = line[:PREFIX_BYTES]
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        value = None if "UTF-8" in str(e) else _numbers_as_text(line)
        if value is None:
            reason = "invalid_utf8" if "UTF-8" in str(e) else "invalid_json"
            return Record(location, reason=reason, detail=str(e), raw=raw, raw_size=len(line))
    if not isinstance(value, dict):
        return Record(location, reason="invalid_json", detail=f"a JSON {type(value).__name__}, not an object", raw=raw, raw_size=len(line))
    if text_field not in value:
        fields = ", ".join(sorted(map(str, value))[:10])
        return Record(
            location, reason="missing_text_field", detail=f"no field {text_field!r}; fields: {fields}", raw=raw, raw_size=len(line)
        )
    text = value[text_field]
    if text is None:
        return Record(location, reason="null_text", detail=f"{text_field!r} is null", raw=raw, raw_size=len(line))
    if not isinstance(text, str):
        return Record(location, reason="non_string_text", detail=f"{text_field!r} is a {type(text).__name__}", raw=raw, raw_size=len(line))
    return Record(location, text=text, raw_size=len(line))


def read_parquet(file, text_field: str, max_doc_bytes: int, batch_rows: int = 1024) -> Iterator[Record]:
    """One document per row of `text_field`, read one row group (in bounded batches) at a time."""
    try:
        pf = pq.ParquetFile(file)
    except (pa.ArrowException, OSError, ValueError) as e:
        yield Record("", reason="unreadable", detail=f"not a readable Parquet file: {e}")
        return
    schema = pf.schema_arrow
    if text_field not in schema.names:
        yield Record(
            "",
            reason="missing_text_field",
            detail=f"no column {text_field!r}; columns: {', '.join(schema.names[:20])}",
            raw_size=pf.metadata.num_rows,
        )
        return
    column_type = schema.field(text_field).type
    if not is_text_type(column_type):
        yield Record(
            "",
            reason="non_string_text",
            detail=f"column {text_field!r} is {column_type}, not a string column",
            raw_size=pf.metadata.num_rows,
        )
        return
    row = 0
    for group in range(pf.metadata.num_row_groups):
        meta = pf.metadata.row_group(group)
        if meta.total_byte_size > MAX_ROW_GROUP_BYTES:
            yield Record(
                f"row={row}",
                reason="row_group_too_large",
                detail=f"row group {group} ({meta.num_rows} rows, {meta.total_byte_size} bytes) exceeds {MAX_ROW_GROUP_BYTES}",
            )
            row += meta.num_rows
            continue
        try:
            batches = pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=[text_field])
            for batch in batches:
                for text in batch.column(0).to_pylist():
                    yield _parquet_record(text, row, text_field, max_doc_bytes)
                    row += 1
        except (pa.ArrowException, OSError) as e:
            yield Record(f"row={row}", reason="corrupt_stream", detail=f"row group {group} cannot be read: {e}")
            row = sum(pf.metadata.row_group(g).num_rows for g in range(group + 1))


def is_text_type(arrow_type: pa.DataType) -> bool:
    """Every way a Parquet writer stores a string column: string, large_string, string_view, or a
    dictionary of one of them (a pandas category column, or pyarrow's read_dictionary)."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type)


def _parquet_record(text: str | None, row: int, text_field: str, max_doc_bytes: int) -> Record:
    if text is None:
        return Record(f"row={row}", reason="null_text", detail=f"{text_field!r} is null")
    if len(text) > max_doc_bytes // 4 and len(encoded := text.encode("utf-8")) > max_doc_bytes:
        return Record(
            f"row={row}",
            reason="too_long",
            detail=f"document of {len(encoded)} bytes exceeds {max_doc_bytes}",
            raw=encoded[:PREFIX_BYTES],
            raw_size=len(encoded),
        )
    return Record(f"row={row}", text=text)
