"""Which files a corpus build reads, and why every other matched file is skipped.

`source_uri` is a literal location: glob characters in it are never patterns. `glob` and `exclude`
are the only patterns, matched against paths relative to the source. Every entry the patterns match
ends up in exactly one of two lists: files to read, or skipped with a reason, so the manifest can
account for all of them.

Local folders are walked without following symlinks blindly: a link is followed only when its
target lies inside the source folder, and a folder reached twice (a loop) is not entered again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import stat
from collections.abc import Collection
from dataclasses import dataclass

from fsspec.core import url_to_fs

from llm_pipeline.globs import Pattern, fnmatch_pattern, path_glob
from llm_pipeline.storage.folders import bounded, is_local_fs, with_credentials

# Names an upload or copy tool writes while a file is still arriving.
IN_FLIGHT_PATTERNS = ("*.tmp", "*.tmp-*", "*.part", "*.crdownload", "*._COPYING_", ".~*", "*.swp")


class CorpusSourceError(ValueError):
    """The source as a whole cannot be used (missing, unreadable, nothing matched)."""


class SourceMissing(CorpusSourceError):
    """The source does not exist (yet): for a landing folder, nothing has landed."""


class NothingMatched(CorpusSourceError):
    """The source exists and could be listed, but no entry matched the patterns."""


def display_name(name: str) -> str:
    """A path as text that can always be written and shown: bytes that are not UTF-8 (a POSIX name
    like b'\\xff\\xfe.txt', which Python holds as surrogate escapes) appear as \\xff escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_glob(glob: str) -> str:
    """`glob` if it is a pattern fsspec's glob rules accept, else ValueError naming it."""
    try:
        path_glob(glob)
    except ValueError as e:
        raise ValueError(f"glob {bounded(glob)!r} is not a valid pattern: {e}") from None
    return glob


def check_exclude(patterns: tuple[str, ...]) -> tuple[str, ...]:
    """`patterns` if each is a valid fnmatch pattern, else ValueError naming the first that is not."""
    for pattern in patterns:
        try:
            fnmatch_pattern(pattern)
        except ValueError as e:
            raise ValueError(f"exclude pattern {bounded(pattern)!r} is not a valid pattern: {e}") from None
    return patterns


@dataclass(frozen=True)
class SourceFile:
    path: str  # the filesystem's path (no protocol)
    uri: str  # what the manifest and the documents' `source` column show
    rel: str  # relative to the source folder
    size: int
    version: str = ""  # what changes when the content does: an object's ETag or generation, a file's local_version


@dataclass(frozen=True)
class SkippedEntry:
    uri: str
    rel: str
    reason: str
    size: int | None = None


@dataclass
class SourceListing:
    fs: object
    root_uri: str
    files: list[SourceFile]
    skipped: list[SkippedEntry]


def is_hidden_or_in_flight(name: str) -> bool:
    return name.startswith(".") or any(fnmatch.fnmatchcase(name, p) for p in IN_FLIGHT_PATTERNS)


def _matches(rel: str, glob: Pattern, exclude: tuple[str, ...]) -> bool:
    return glob.match(rel) and not any(fnmatch_pattern(pat).match(rel) for pat in exclude)


def list_sources(
    source_uri: str,
    glob: str,
    exclude: tuple[str, ...] = (),
    include_hidden: bool = False,
    max_bytes: int | None = None,
    storage_options: dict | None = None,
    only: Collection[str] | None = None,
    within: Collection[str] | None = None,
) -> SourceListing:
    """Files to read under `source_uri`, in sorted order, and every other matched entry with its reason.

    `only` (relative paths, or relative path -> identity) restricts the listing to those files: a landed batch is a fixed set of
    files, and one of them gone since it landed is skipped as `missing`.

    `max_bytes` caps the stored bytes read: files are taken in order while they fit, and a file that
    would overflow the budget is skipped as `over_max_bytes` (a later, smaller file may still fit).

    `within` (names of entries directly under `source_uri`) restricts the walk to those entries, so
    the landing sensor lists the deliveries that can hold something new and no other.

    With `only` as a mapping, each file's identity (`size:version`, as the landing sensor recorded
    it) must still be what it was: a file changed since is skipped as `changed_since_landing`, not read.

    Entries that cannot be read as files are skipped with their reason, never dropped unseen: a
    name that is not UTF-8 (`undecodable_name`), a FIFO, socket or device (`not_a_regular_file`),
    a folder that cannot be listed (`unreadable_folder`).
    """
    try:
        fs, root = url_to_fs(source_uri, **with_credentials(source_uri, storage_options or {}))
        fs.invalidate_cache(root)  # a long-lived process (the sensor's) must see what landed since
        exists = fs.exists(root)
    except Exception as e:  # noqa: BLE001 - credentials, endpoint, permissions: name the URI
        raise CorpusSourceError(f"corpus source_uri {source_uri!r} cannot be listed: {type(e).__name__}: {bounded(str(e))}") from None
    if not exists:
        # exists() answers False for any error on some filesystems, and HTTP's info() raises
        # FileNotFoundError for a refused connection or a 500 too, the cause attached: only a store
        # that says "not found" makes the source missing.
        try:
            fs.info(root)
            problem: BaseException | None = None
        except FileNotFoundError as e:
            problem = e.__cause__
            if problem is None or isinstance(problem, FileNotFoundError) or getattr(problem, "status", None) in (404, 410):
                raise SourceMissing(f"corpus source_uri {bounded(source_uri)!r} does not exist") from None
        except Exception as e:  # noqa: BLE001 - aiohttp's and botocore's errors are not OSErrors
            problem = e
        if problem is not None:
            raise CorpusSourceError(
                f"corpus source_uri {bounded(source_uri)!r} cannot be reached: {type(problem).__name__}: {bounded(str(problem))}"
            )
        raise SourceMissing(f"corpus source_uri {bounded(source_uri)!r} does not exist")
    is_local = is_local_fs(fs)
    pattern = path_glob(glob)
    files: list[SourceFile] = []
    skipped: list[SkippedEntry] = []
    root_uri = fs.unstrip_protocol(root).rstrip("/")
    try:
        walk = _walk_local(root, exclude, within) if is_local else _walk_remote(fs, root, within)
        for rel, kind, size, is_dir, path, version in walk:
            uri = f"{root_uri}/{rel}" if rel else root_uri
            shown = display_name(rel)
            if shown != rel:
                # Not UTF-8: no batch key, manifest or document source can carry the name. Named, counted, not read.
                if only is None or is_dir:
                    skipped.append(SkippedEntry(f"{root_uri}/{shown}", shown, "undecodable_name", size))
            elif kind != "file":
                # Not read: counted when it names a matched file, or a folder that may hold some.
                if (only is None or rel in only) and (is_dir or _matches(rel, pattern, exclude)):
                    skipped.append(SkippedEntry(uri, rel, kind))
            elif rel and not _matches(rel, pattern, exclude) or only is not None and rel not in only:
                continue
            elif not include_hidden and any(is_hidden_or_in_flight(part) for part in rel.split("/")):
                skipped.append(SkippedEntry(uri, rel, "hidden_or_in_flight", size))
            elif isinstance(only, dict) and only[rel] and not same_file(only[rel], f"{size}:{version}"):
                skipped.append(SkippedEntry(uri, rel, "changed_since_landing", size))
            else:
                files.append(SourceFile(path, uri, rel, size, version))
    except OSError as e:
        raise CorpusSourceError(f"corpus source_uri {source_uri!r} cannot be listed: {bounded(str(e))}") from None

    if only is not None:
        found = {f.rel for f in files} | {s.rel for s in skipped}
        skipped += [SkippedEntry(f"{root_uri}/{rel}", rel, "missing") for rel in set(only) - found]
    files.sort(key=lambda f: f.rel)
    skipped.sort(key=lambda s: s.rel)
    if max_bytes is not None:
        files, over = _apply_budget(files, max_bytes)
        skipped = sorted(skipped + over, key=lambda s: s.rel)
    if not files and not skipped:
        raise NothingMatched(f"corpus source_uri {source_uri!r} has no files matching glob {glob!r}")
    return SourceListing(fs, fs.unstrip_protocol(root), files, skipped)


def _apply_budget(files: list[SourceFile], max_bytes: int) -> tuple[list[SourceFile], list[SkippedEntry]]:
    taken, over, total = [], [], 0
    for f in files:
        if total + f.size <= max_bytes:
            taken.append(f)
            total += f.size
        else:
            over.append(SkippedEntry(f.uri, f.rel, "over_max_bytes", f.size))
    return taken, over


def _prunable(rel_dir: str, exclude: tuple[str, ...]) -> bool:
    """True when an exclude pattern matches every path under the folder (e.g. `site-packages/*`)."""
    probe = f"{rel_dir}/\0probe/\0"
    return any(fnmatch_pattern(pat).match(probe) for pat in exclude)


def _walk_local(root: str, exclude: tuple[str, ...] = (), within: Collection[str] | None = None):
    """(relative path, kind, size, is a folder, path to read, version) for every file and every link not followed.

    kind: "file", "symlink_outside_source", "symlink_loop" or "broken_symlink". Files are read at their
    resolved path, so a link swapped after the listing cannot lead the reader out of the source.
    """
    real_root = os.path.realpath(root)
    if os.path.isfile(real_root):
        st = os.stat(real_root)
        yield "", "file", st.st_size, False, real_root, local_version(st)
        return
    seen_dirs = {real_root}
    stack = [("", real_root)]
    while stack:
        rel_dir, real_dir = stack.pop()
        try:
            entries: list[os.DirEntry] | list[_NamedEntry]
            if within is not None and not rel_dir:  # the named entries alone: no read of the whole folder
                entries = _named_entries(real_dir, within)
            else:
                with os.scandir(real_dir) as it:
                    entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if not rel_dir:
                raise
            # A subfolder we may not read (or one too deep for the OS): named and counted, the rest goes on.
            yield rel_dir, "unreadable_folder", None, True, None, e.strerror or type(e).__name__
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                yield from _local_entry(entry, rel, real_root, seen_dirs, stack, exclude)
            except OSError:  # gone or replaced since the folder was read
                yield rel, "unreadable", None, False, None, ""


class _NamedEntry:
    """What `_local_entry` reads of an os.DirEntry, for an entry known by name."""

    def __init__(self, folder: str, name: str):
        self.name, self.path = name, os.path.join(folder, name)
        self._stat = os.lstat(self.path)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self._stat.st_mode)

    def is_dir(self, follow_symlinks: bool = False) -> bool:
        return stat.S_ISDIR(self._stat.st_mode)

    def is_file(self, follow_symlinks: bool = False) -> bool:
        return stat.S_ISREG(self._stat.st_mode)

    def stat(self, follow_symlinks: bool = False) -> os.stat_result:
        return self._stat


def _named_entries(folder: str, names: Collection[str]) -> list[_NamedEntry]:
    entries = []
    for name in sorted(names):
        with contextlib.suppress(FileNotFoundError):  # not there (any more): nothing to list
            entries.append(_NamedEntry(folder, name))
    return entries


def _local_entry(entry: os.DirEntry | _NamedEntry, rel: str, real_root: str, seen_dirs: set, stack: list, exclude: tuple[str, ...]):
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if not os.path.exists(target):
            yield rel, "broken_symlink", None, False, None, ""
        elif os.path.commonpath([real_root, target]) != real_root:
            yield rel, "symlink_outside_source", None, os.path.isdir(target), None, ""
        elif os.path.isdir(target):
            if target in seen_dirs:
                yield rel, "symlink_loop", None, True, None, ""
            else:
                seen_dirs.add(target)
                stack.append((rel, target))
        elif os.path.isfile(target):
            stat = os.stat(target)
            yield rel, "file", stat.st_size, False, target, local_version(stat)
        else:
            yield rel, "not_a_regular_file", None, False, None, ""
    elif entry.is_dir(follow_symlinks=False):
        # No link on the way here, so the path is real already.
        if entry.path not in seen_dirs and not _prunable(rel, exclude):
            seen_dirs.add(entry.path)
            stack.append((rel, entry.path))
    elif entry.is_file(follow_symlinks=False):
        stat = entry.stat(follow_symlinks=False)
        yield rel, "file", stat.st_size, False, entry.path, local_version(stat)
    else:  # a FIFO, socket or device: reading it could hang or never end
        yield rel, "not_a_regular_file", None, False, None, ""


def _walk_remote(fs, root: str, within: Collection[str] | None = None):
    """Object stores have no links; one listing call gives every object with its size."""
    if fs.isfile(root):
        info = fs.info(root)
        yield "", "file", int(info.get("size") or 0), False, root, object_version(info)
        return
    base = root.rstrip("/")
    found: dict = {}
    for top in [base] if within is None else [f"{base}/{name}" for name in sorted(within)]:
        found.update(fs.find(top, withdirs=False, detail=True))  # a name that is one object: that object
    for path, info in sorted(found.items()):
        if info.get("type") == "file":
            yield posixpath.relpath(path, base), "file", int(info.get("size") or 0), False, path, object_version(info)


def local_version(st: os.stat_result) -> str:
    """mtime, ctime and inode: `touch -r`, `rsync -a` or a restore can put a rewritten file's size and
    mtime back, but not its ctime (set by the kernel on every change) or, when replaced, its inode."""
    return f"{st.st_mtime_ns}.{st.st_ctime_ns}.{st.st_ino}"


def same_file(recorded: str | None, current: str) -> bool:
    """Whether a file's identity (`size:version`) is the one recorded. A local identity recorded before
    versions carried ctime and inode (`size:mtime`) is compared on what it holds."""
    if recorded is None:
        return False
    if recorded == current:
        return True
    version = recorded.partition(":")[2]
    return version.isdigit() and current.startswith(f"{recorded}.")


def object_version(info: dict) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""
