"""One storage root URI, everything under it through fsspec (file://, s3://, gs://, memory://).

Writes are atomic for readers: a file is written under a temporary name and renamed into place,
and multi-file artifacts write their manifest last, so readers trust only what a manifest lists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import posixpath
import stat
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
from fsspec.core import url_to_fs

from llm_pipeline.redact import redacted
from llm_pipeline.storage.names import check_relative_path

_CHUNK = 8 * 1024 * 1024


def sha256_file(fs, path: str) -> str:
    """The file's sha256; a local path must be a regular file (see open_regular)."""
    digest = hashlib.sha256()
    with open_regular(path) if is_local_fs(fs) else fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class StorageError(OSError):
    """An I/O error with the URI it happened at (credentials, permissions, network, a broken server)."""


class NotARegularFile(StorageError):
    """A name that should be a file is a FIFO, a device, a folder or a link: reading it could hang,
    never end (/dev/zero) or leave the folder (a link to elsewhere)."""


def open_regular(path: str, follow_links: bool = False) -> BinaryIO:
    """A local file opened for reading only when it is a regular file and (unless `follow_links`) not
    a link. Opened non-blocking, so a FIFO in its place cannot hang the open, and checked on the open
    descriptor, so nothing can be swapped in between the check and the read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link as the last part
            raise NotARegularFile(f"{path} is a symbolic link, not a regular file; refusing to follow it") from None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise NotARegularFile(f"{path} is {_kind(kind)}, not a regular file")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


def json_value(data: bytes, where: str) -> Any:
    """`data` parsed as JSON; ValueError naming `where` when it is not JSON (or nested too deeply to parse)."""
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not valid JSON: {bounded(str(e))}") from None
    except RecursionError:
        raise ValueError(f"{where} is not valid JSON: nested too deeply") from None


def _local_path(uri: str) -> str | None:
    """The local path a user's URI names (a plain path or file://), or None for a remote URI."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    return os.path.expanduser(uri.removeprefix("file://"))


_GCS_CREDENTIALS: list[str] = []  # the answer of the one look per process: "" found, else the problem


def with_credentials(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """`storage_options` for `uri`; for gs://, Google Cloud's credentials found before any request, or
    StorageError naming where they are looked for. Left to itself, gcsfs tries each way in turn and
    then retries the request with backoff: a minute before it fails (S3: seconds). Found, gcsfs is
    pointed at them (token "google_default") and does not try the others."""
    if not uri.startswith(("gs://", "gcs://")) or "token" in storage_options or "token" in fsspec.config.conf.get("gcs", {}):
        return storage_options
    if os.environ.get("STORAGE_EMULATOR_HOST"):  # a local GCS API server: gcsfs talks to it anonymously
        return storage_options
    if not _GCS_CREDENTIALS:
        import google.auth
        from google.auth.exceptions import GoogleAuthError

        try:
            google.auth.default()  # GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default, the metadata server
            _GCS_CREDENTIALS.append("")
        except GoogleAuthError as e:
            _GCS_CREDENTIALS.append(bounded(str(e), 200))
    if _GCS_CREDENTIALS[0]:
        raise StorageError(
            f"{bounded(uri)}: no Google Cloud credentials here: set GOOGLE_APPLICATION_CREDENTIALS to a service account's key "
            "file, run `gcloud auth application-default login`, or run on a GCE/GKE machine with a service account "
            f"({_GCS_CREDENTIALS[0]})"
        )
    return {**storage_options, "token": "google_default"}


def read_named_file(uri: str, what: str, limit: int, **storage_options: Any) -> bytes:
    """The bytes of a file a user named in a setting or an argument (`what` says which), on any fsspec
    URI. Refused by name, before anything else reads it: a FIFO, a device, a socket or a folder in its
    place (reading could hang or never end; a link to a regular file is followed), a file over `limit`
    bytes, a missing one, one the storage refuses (credentials, network)."""
    shown = f"{what} {bounded(uri)!r}"
    try:
        path = _local_path(uri)
        if path is not None:
            try:
                handle = open_regular(path, follow_links=True)
            except NotARegularFile as e:
                raise ValueError(f"{shown}: {str(e).removeprefix(path + ' ')}") from None
        else:
            handle = fsspec.open(uri, "rb", **with_credentials(uri, storage_options)).open()
        with handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ValueError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{shown}: is a folder, not a file") from None
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - botocore's and gcsfs's errors are not OSErrors
        raise ValueError(f"{shown} cannot be read: {type(e).__name__}: {bounded(str(e))}") from None
    if len(data) > limit:
        raise ValueError(f"{shown} is larger than {limit:,} bytes, too large for what it should hold")
    return data


def check_named_file(uri: str, what: str) -> None:
    """A settings check, before any work: a local path a user named must be a regular file (links
    followed). Remote URIs are read, and refused by name, when the work starts."""
    path = _local_path(uri)
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{what} {bounded(uri)!r}: no such file") from None
    except OSError as e:
        raise ValueError(f"{what} {bounded(uri)!r} cannot be read: {bounded(str(e))}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {bounded(uri)!r} is {_kind(mode)}, not a regular file")


def read_named_json_object(uri: str, what: str, limit: int = 16 << 20, **storage_options: Any) -> dict:
    """A JSON object (a mapping) from a file a user named; see read_named_file."""
    value = json_value(read_named_file(uri, what, limit, **storage_options), f"{what} {bounded(uri)!r}")
    if not isinstance(value, dict):
        raise ValueError(f"{what} {bounded(uri)!r} must hold a JSON object, got {type(value).__name__}")
    return value


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def json_bytes(value: Any) -> bytes:
    """The one way a JSON file is written: indented, keys sorted (stable bytes, stable hashes), a final newline."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _names_uri(method):
    """Errors from the filesystem come back naming the URI: an S3 credential error alone says nothing
    about which bucket. A missing file stays FileNotFoundError, which callers handle."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, StorageError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001 - botocore's errors are not OSErrors
            where = f"{self.uri}/{args[0]}" if args and isinstance(args[0], str) and args[0] else self.uri
            raise StorageError(f"{where}: {type(e).__name__}: {e}") from e

    return wrapper


class Storage:
    """A directory-like view of one URI. `Storage("s3://bucket/x").child("a", "b")` is `s3://bucket/x/a/b`."""

    def __init__(self, uri: str, **storage_options: Any):
        if not uri:
            raise ValueError("storage root URI is empty")
        if "://" not in uri:
            uri = os.path.abspath(os.path.expanduser(uri))
        self.uri = uri.rstrip("/") or "/"
        self.storage_options = storage_options
        self.fs, self.path = url_to_fs(self.uri, **with_credentials(self.uri, storage_options))
        self.path = self.path.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def is_local(self) -> bool:
        return is_local_fs(self.fs)

    def child(self, *parts: str) -> Storage:
        """A folder below this one. Each part must stay inside: no absolute paths, no `..`."""
        for part in parts:
            check_relative_path(part, f"path under {self.uri}")
        sub = Storage.__new__(Storage)
        sub.fs, sub.storage_options = self.fs, self.storage_options
        sub.path = posixpath.join(self.path, *parts)
        sub.uri = _join_uri(self.uri, *parts)
        return sub

    @property
    def name(self) -> str:
        """The last part of the URI."""
        return posixpath.basename(self.path)

    def parent(self) -> Storage:
        """The folder above this one, with the same options."""
        sub = Storage.__new__(Storage)
        sub.fs, sub.storage_options = self.fs, self.storage_options
        sub.path = posixpath.dirname(self.path) or "/"
        sub.uri = self.uri[: len(self.uri) - len(self.name)].rstrip("/") or self.uri
        return sub

    def full(self, name: str) -> str:
        """The path of `name` below this folder. Every name, written or read from a manifest, obeys the
        one rule for relative paths: nothing joined here can leave the folder."""
        return posixpath.join(self.path, check_relative_path(name, f"file name under {self.uri}"))

    @contextlib.contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        """`name` opened for reading. Locally it must be a regular file reached through no link
        below this folder: a FIFO, a device or a link (to a file elsewhere, or to /dev/zero) is refused."""
        path = self.full(name)
        if not self.is_local:
            with self.fs.open(path, "rb") as f:
                yield f
            return
        parent = self.path
        for part in name.split("/")[:-1]:
            parent = os.path.join(parent, part)
            if os.path.islink(parent):
                raise NotARegularFile(f"{self.uri}/{name}: {part} is a symbolic link; refusing to follow it")
        try:
            handle = open_regular(path)
        except NotARegularFile as e:
            raise NotARegularFile(f"{self.uri}/{name}: {str(e).removeprefix(path + ' ')}") from None
        with handle:
            yield handle

    @_names_uri
    def exists(self, name: str = "") -> bool:
        return self.fs.exists(self.full(name) if name else self.path)

    @_names_uri
    def makedirs(self) -> None:
        self.fs.makedirs(self.path, exist_ok=True)

    @_names_uri
    def listdir(self) -> list[str]:
        """Names (not paths) directly under this folder; empty if it does not exist."""
        if not self.fs.exists(self.path):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.path, detail=False))

    @_names_uri
    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The file's bytes; with `limit`, a file larger than that is refused by name (a small JSON
        value or pointer is never allowed to fill memory)."""
        with self.open_read(name) as f:
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise ValueError(f"{self.uri}/{name} is larger than {limit:,} bytes, too large for what it should hold")
        return data

    def read_json(self, name: str, limit: int = 256 << 20) -> Any:
        return json_value(self.read_bytes(name, limit), f"{self.uri}/{name}")

    @_names_uri
    def _write_atomic(self, name: str, write) -> None:
        """Atomic for readers: a reader sees the old file, no file, or the whole new one. Locally,
        `write(path)` fills a temporary file that is renamed into place; object stores make a single
        PUT visible atomically (a rename there would be a copy), so `write` targets the name."""
        target = self.full(name)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if not self.is_local:
            write(target)
            return
        tmp = f"{target}.tmp-{uuid.uuid4().hex}"
        write(tmp)
        os.replace(tmp, target)

    def write_bytes(self, name: str, data: bytes) -> None:
        self._write_atomic(name, lambda path: self.fs.pipe_file(path, data))

    def write_json(self, name: str, value: Any) -> None:
        self.write_bytes(name, json_bytes(value))

    @_names_uri
    def sha256(self, name: str) -> str:
        digest = hashlib.sha256()
        with self.open_read(name) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    @_names_uri
    def size(self, name: str) -> int:
        return int(self.fs.size(self.full(name)))

    @_names_uri
    def put_file(self, local_path: str, name: str) -> None:
        """Copy a local file in, atomically for readers."""
        self._write_atomic(name, lambda path: self.fs.put_file(local_path, path))

    @_names_uri
    def get_file(self, name: str, local_path: str) -> None:
        if not self.is_local:
            self.fs.get_file(self.full(name), local_path)
            return
        with self.open_read(name) as src, open(local_path, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)

    @_names_uri
    def download_dir(self, local_dir: str, skip_existing: bool = False) -> None:
        """Copy every file of this folder under local_dir; skip_existing keeps local files whose size matches."""
        for path, info in self.fs.find(self.path, detail=True).items():
            rel = posixpath.relpath(path, self.path)
            dest = os.path.join(local_dir, *rel.split("/"))
            if skip_existing and os.path.exists(dest) and os.path.getsize(dest) == info.get("size"):
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            self.get_file(rel, dest)

    @_names_uri
    def remove(self, name: str = "") -> None:
        target = self.full(name) if name else self.path
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def local_path(self) -> str | None:
        """The OS path of this folder when the storage is local, else None."""
        return self.path if self.is_local else None


def bounded(text: str, limit: int = 300) -> str:
    """An error message quotes at most `limit` characters of what it is about, whatever the input, and
    no credential (llm_pipeline.redact): what it quotes is often a URI, or a library's message naming one."""
    if len(text) <= limit:
        return redacted(text)
    # Redacted past the cut, so a credential the limit splits is still recognised whole.
    return f"{redacted(text[: limit + 1024])[:limit]}... ({len(text):,} characters)"


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def is_local_fs(fs) -> bool:
    """The one answer to "is this the local disk?" (which decides atomic renames, regular-file checks, caching)."""
    return "file" in _protocols(fs)


def _join_uri(uri: str, *parts: str) -> str:
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}" if rest else f"{scheme}://{posixpath.join(*parts)}"
    return posixpath.join(uri, *parts)
