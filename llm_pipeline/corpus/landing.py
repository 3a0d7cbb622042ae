"""The landing folder, watched at a cost that does not grow with what it already holds.

A *delivery* is one entry directly under the landing folder: a folder (of any depth) or a single
file. The sensor's cursor holds the *open* deliveries only, each file with its identity (size and
version): taken, or seen once and waiting to be seen unchanged. A delivery whose files were all
taken and that has not changed for `quiet_seconds` is *sealed*: its identities move to a ledger
under the storage root, with the delivery's own identity (a local entry's inode, mtime and ctime; an
object's ETag). So a tick lists

- the top level of the landing folder, to find new deliveries: on a local disk only when the
  folder's own identity changed (an entry added, renamed or removed there); on an object store,
  one LIST call per 1,000 deliveries. A sealed delivery whose own identity changed there (a folder
  deleted and made again, a file replaced by rename) is audited at once;
- the open deliveries, file by file;
- a few sealed deliveries in turn (the *audit*: about AUDIT_FILES_PER_TICK files), compared with the
  ledger, so a file written into a sealed delivery, at any depth, is found within one round of it.

A sealed delivery holding a new or changed file is *reopened*: its new files are taken like any
others, and the tick names it. It reads the ledger's index (one short line per sealed delivery)
only when it changed. What was taken before costs a bounded audit per tick, and the cursor stays
the size of the open deliveries.

A tick killed anywhere loses and doubles nothing: the ledger records a delivery as sealed only
with identities the cursor already holds as taken, and whichever of the two a restarted tick reads,
it takes the same files. An index lost from the ledger is rebuilt from its delivery records; a
ledger lost whole is refused by name (the cursor counts what was sealed), never read as "nothing
was taken".
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

from fsspec.core import url_to_fs

from llm_pipeline.corpus.sources import (
    CorpusSourceError,
    NothingMatched,
    SourceMissing,
    display_name,
    list_sources,
    object_version,
    same_file,
)
from llm_pipeline.storage.folders import Storage, bounded, is_local_fs, with_credentials

CURSOR_VERSION = 3
# A folder's identity is only trusted once a listing made this long after it was first seen agrees
# with it: a change in the same clock tick of the filesystem would leave it unchanged ("racy"
# timestamps, as git says). Measured on this process's clock, so a skewed NFS server does not matter.
RACY_SECONDS = 2.0
# Sealed deliveries compared with the ledger per tick: as many as hold AUDIT_FILES_PER_TICK files
# taken (one at least), AUDIT_PER_TICK at most. A tick's cost stays bounded (a few ms per thousand
# files), and a file written into a sealed delivery is found within one round of the ledger.
AUDIT_FILES_PER_TICK = 1000
AUDIT_PER_TICK = 8


class LandingError(RuntimeError):
    """The landing folder could not be looked at, or the sensor's cursor or ledger cannot be read: a
    tick that fails with this names what failed, instead of reading as 'nothing new'."""


@dataclass
class Delivery:
    """An open delivery: files taken (relative to the landing folder -> identity), files seen once and
    still to be confirmed, a digest of what the last listing showed and since when it shows that."""

    taken: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)
    state: str = ""
    since: float = 0.0


@dataclass
class LandingCursor:
    open: dict[str, Delivery] = field(default_factory=dict)
    # The landing folder's identity at the last full look at its top level that can be trusted; None: look again.
    top_version: str | None = None
    # An identity seen by a look, and when: trusted by a later look RACY_SECONDS on that still sees it.
    top_pending: tuple[str, float] | None = None
    sealed: int = 0  # deliveries the ledger holds at least: a ledger lost whole is told from an empty one
    audit_after: str = ""  # the sealed delivery the audit looked at last

    def dumps(self) -> str:
        deliveries = {name: {"taken": d.taken, "seen": d.seen, "state": d.state, "since": d.since} for name, d in self.open.items()}
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "top_version": self.top_version,
                "top_pending": list(self.top_pending) if self.top_pending else None,
                "sealed": self.sealed,
                "audit_after": self.audit_after,
                "open": deliveries,
            },
            sort_keys=True,
        )


@dataclass
class LandingScan:
    """One look at the landing folder."""

    ready: dict[str, str]  # complete new files, relative path -> identity: the next batch
    arriving: int  # files seen once, to be taken on the next tick if unchanged
    cursor: str
    refused: list[str]  # entries that cannot be taken, each "path (reason)"
    listed: list[str]  # the open deliveries whose files this tick listed
    sealed: list[str]  # the deliveries sealed by this tick
    audited: list[str] = field(default_factory=list)  # sealed deliveries compared with the ledger
    reopened: list[str] = field(default_factory=list)  # sealed deliveries found holding new or changed files
    notes: list[str] = field(default_factory=list)  # what the ledger had to repair, for the tick's log


def _is_map_of_str(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _top(rel: str) -> str:
    return rel.split("/", 1)[0]


def read_cursor(cursor: str | None, now: float) -> LandingCursor:
    """The sensor's state; LandingError naming the way out when it is not one this release writes.
    Earlier releases' cursors carry over: version 2 lacks the audit's fields, the first one (every
    file taken, flat) becomes open deliveries, quiet from now."""
    if not cursor:
        return LandingCursor()
    try:
        state = json.loads(cursor)
        if not isinstance(state, dict):
            raise TypeError("the cursor is not a JSON object")
        if state.get("v") is None and set(state) == {"taken", "seen"}:
            return _from_flat(state["taken"], state["seen"], now)
        if state.get("v") not in (2, CURSOR_VERSION) or not isinstance(state.get("open"), dict):
            raise TypeError(f"unknown cursor version {state.get('v')!r}")
        top_version, pending = state.get("top_version"), state.get("top_pending")
        if top_version is not None and not isinstance(top_version, str):
            raise TypeError("top_version must be a string")
        if pending is not None and not (
            isinstance(pending, list) and len(pending) == 2 and isinstance(pending[0], str) and type(pending[1]) in (int, float)
        ):
            raise TypeError("top_pending must be [identity, time]")
        sealed, audit_after = state.get("sealed", 0), state.get("audit_after", "")
        if type(sealed) is not int or not isinstance(audit_after, str):
            raise TypeError("sealed must be an integer and audit_after a string")
        out = LandingCursor(
            top_version=top_version, top_pending=tuple(pending) if pending else None, sealed=sealed, audit_after=audit_after
        )
        for name, d in state["open"].items():
            if not (isinstance(d, dict) and _is_map_of_str(d.get("taken")) and _is_map_of_str(d.get("seen"))):
                raise TypeError(f"delivery {name!r}: taken and seen must map file names to identities")
            if not isinstance(d.get("state"), str) or type(d.get("since")) not in (int, float):
                raise TypeError(f"delivery {name!r}: state must be a string and since a number")
            out.open[name] = Delivery(d["taken"], d["seen"], d["state"], float(d["since"]))
        return out
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise LandingError(
            f"new_corpus_sensor's cursor is not one this release writes ({type(e).__name__}: {bounded(str(e), 120)}; "
            f"cursor starts {cursor[:60]!r}). Clear it to go on: `dagster sensor cursor new_corpus_sensor --delete`, "
            "or the sensor's page in the UI. The files in the landing folder are then taken once more as one new "
            "batch, whose documents dedup drops as duplicates of the earlier batches."
        ) from None


def _from_flat(taken, seen, now: float) -> LandingCursor:
    if not (_is_map_of_str(taken) and _is_map_of_str(seen)):
        raise TypeError("taken and seen must map file names to identities")
    out = LandingCursor()
    for part, files in (("taken", taken), ("seen", seen)):
        for rel, ident in files.items():
            getattr(out.open.setdefault(_top(rel), Delivery(since=now)), part)[rel] = ident
    return out


@dataclass(frozen=True)
class Sealed:
    at: float  # when it was sealed
    entry: str  # the delivery's own identity then ("" where the store shows none: a folder on an object store)
    files: int = 1  # files taken from it: what auditing it costs


@dataclass(frozen=True)
class _Index:
    version: tuple
    entries: dict[str, Sealed]
    names: list[str]  # sorted, for the audit's turn


_INDEX_CACHE: dict[str, _Index] = {}


class Ledger:
    """Sealed deliveries of one landing folder, under the storage root: an index (name -> when sealed
    and the delivery's identity then) and, per delivery, the identities of the files taken from it."""

    def __init__(self, root: Storage, landing_uri: str):
        self.folder = root.child("landing_ledger", hashlib.sha256(landing_uri.encode()).hexdigest()[:16])
        self.notes: list[str] = []

    def index(self) -> dict[str, Sealed]:
        return self._index().entries

    def sorted_names(self) -> list[str]:
        return self._index().names

    def _index(self) -> _Index:
        """Read again only when the file changed: the sensor's process lives on between ticks."""
        key = self.folder.full("index.json")
        version = self._index_version()
        if version is None:
            return self._rebuilt()
        cached = _INDEX_CACHE.get(key)
        if cached is not None and cached.version == version:
            return cached
        raw = self.folder.read_json("index.json")
        if not isinstance(raw, dict):
            raise LandingError(f"the landing ledger's index {self.folder.uri}/index.json is not a map of delivery names")
        entries = {name: self._sealed(name, value) for name, value in raw.items()}
        index = _INDEX_CACHE[key] = _Index(version, entries, sorted(entries))
        return index

    def _sealed(self, name: str, value) -> Sealed:
        if type(value) in (int, float):  # written before the index kept the delivery's identity
            return Sealed(float(value), "")
        if (
            isinstance(value, list)
            and len(value) == 3
            and type(value[0]) in (int, float)
            and isinstance(value[1], str)
            and type(value[2]) is int
        ):
            return Sealed(float(value[0]), value[1], value[2])
        raise LandingError(
            f"the landing ledger's index {self.folder.uri}/index.json: delivery {name[:200]!r} is not [time, identity, files]"
        )

    def _rebuilt(self) -> _Index:
        """No index: an empty ledger, or an index lost from one (deleted by hand, a partial restore),
        made again from the delivery records, which are written before the index names them."""
        records = self.folder.child("deliveries")
        records.fs.invalidate_cache(records.path)
        names = sorted(n for n in records.listdir() if n.endswith(".json")) if records.exists() else []
        if not names:
            return _Index((), {}, [])
        entries: dict[str, Sealed] = {}
        for file in names:
            record = records.read_json(file)
            if not (isinstance(record, dict) and isinstance(record.get("name"), str) and _is_map_of_str(record.get("taken"))):
                raise LandingError(f"the landing ledger's delivery record {records.uri}/{file} is not a delivery record (name, taken)")
            entries[record["name"]] = Sealed(float(record.get("sealed_at") or 0.0), str(record.get("entry") or ""), len(record["taken"]))
        self._write_index(entries)
        self.notes.append(f"the landing ledger's index was missing: rebuilt from its {len(entries)} delivery records in {records.uri}")
        return self._index()

    def _index_version(self) -> tuple | None:
        self.folder.fs.invalidate_cache(self.folder.path)
        try:
            info = self.folder.fs.info(self.folder.full("index.json"))
        except FileNotFoundError:
            return None
        return tuple(str(info.get(key)) for key in ("size", "ino", "mtime", "ETag", "etag", "generation", "LastModified"))

    def _write_index(self, entries: dict[str, Sealed]) -> None:
        self.folder.write_json("index.json", {name: [s.at, s.entry, s.files] for name, s in sorted(entries.items())})
        self.folder.fs.invalidate_cache(self.folder.path)
        _INDEX_CACHE[self.folder.full("index.json")] = _Index(self._index_version() or (), dict(entries), sorted(entries))

    def seal(self, deliveries: dict[str, tuple[Delivery, str]], now: float) -> None:
        """Seal each delivery with its files taken and its own identity. The records first, the index
        last: an index entry always has its delivery's record."""
        for name, (d, entry) in deliveries.items():
            record = {"name": name, "taken": d.taken, "sealed_at": now, "entry": entry}
            self.folder.child("deliveries").write_json(self._record(name), record)
        self._write_index({**self.index(), **{name: Sealed(now, entry, len(d.taken)) for name, (d, entry) in deliveries.items()}})

    def note_entries(self, entries: dict[str, str]) -> None:
        """Record the current identity of sealed deliveries found unchanged in what they hold."""
        index = self.index()
        self._write_index(
            {**index, **{name: Sealed(index[name].at, entry, index[name].files) for name, entry in entries.items() if name in index}}
        )

    def taken(self, name: str) -> dict[str, str]:
        try:
            record = self.folder.child("deliveries").read_json(self._record(name))
        except FileNotFoundError:
            record = None
        except Exception as e:  # noqa: BLE001 - the storage root's credentials, a damaged file: named
            raise LandingError(
                f"new_corpus_sensor cannot read the landing ledger's record of delivery {name[:200]!r}: {type(e).__name__}: "
                f"{bounded(str(e))}"
            ) from None
        if not (isinstance(record, dict) and _is_map_of_str(record.get("taken"))):
            raise LandingError(f"the landing ledger's record of delivery {name[:200]!r} is not a delivery record (name, taken)")
        return record["taken"]

    @staticmethod
    def _record(name: str) -> str:
        return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json"


def _local_identity(st: os.stat_result) -> str:
    return f"{st.st_ino}.{st.st_mtime_ns}.{st.st_ctime_ns}"


def _entry_identity(root: str, name: str, local: bool, files: dict[str, str]) -> str:
    """A delivery's own identity: a local entry's; an object's (a file delivery) on an object store."""
    if local:
        try:
            return _local_identity(os.lstat(os.path.join(root, name)))
        except OSError:
            return ""
    return files.get(name, "")


def _top_level(fs, root: str, local: bool, sealed: dict[str, Sealed]) -> tuple[dict[str, str], str]:
    """Names directly under the landing folder with their identity ("" where not known or not needed:
    only sealed deliveries are compared), and (locally) the folder's own identity before the listing."""
    if local:
        version = _local_identity(os.stat(root))
        with os.scandir(root) as it:
            entries = list(it)
        out = {}
        for e in entries:
            try:
                out[e.name] = _local_identity(e.stat(follow_symlinks=False)) if e.name in sealed else ""
            except OSError:
                out[e.name] = ""  # gone since the folder was read
        return out, version
    base = root.rstrip("/")
    out = {}
    for info in fs.ls(base, detail=True):
        path = info["name"].rstrip("/")
        if path != base:
            out[path.rsplit("/", 1)[-1]] = f"{int(info.get('size') or 0)}:{object_version(info)}" if info.get("type") == "file" else ""
    return out, ""


def _trust_top(state: LandingCursor, before: str, after: str, now: float) -> None:
    """Skip the next top-level listing only when a listing made RACY_SECONDS after this identity was
    first seen still saw it: every change that shares the identity's clock tick was in that listing."""
    if before != after:
        state.top_version, state.top_pending = None, None
    elif state.top_pending and state.top_pending[0] == after and now - state.top_pending[1] >= RACY_SECONDS:
        state.top_version, state.top_pending = after, None
    elif not state.top_pending or state.top_pending[0] != after:
        state.top_version, state.top_pending = None, (after, now)


def _audit_turn(names: list[str], index: dict[str, Sealed], after: str, skip: dict) -> list[str]:
    """The sealed deliveries audited next, after `after` round the ledger, open ones left out."""
    if not names:
        return []
    start = bisect.bisect_right(names, after)
    turn: list[str] = []
    files = 0
    for i in range(min(len(names), AUDIT_PER_TICK + len(skip))):
        name = names[(start + i) % len(names)]
        if name not in skip:
            turn.append(name)
            files += index[name].files
        if len(turn) == AUDIT_PER_TICK or files >= AUDIT_FILES_PER_TICK:
            break
    return turn


def scan(
    uri: str, storage_options: dict, cursor: str | None, ledger: Ledger, quiet_seconds: float, now: float | None = None
) -> LandingScan:
    """Files under the landing folder `uri` that are new or changed and complete.

    A file is known by its identity, path + size + version (an object's ETag or generation, a local
    file's mtime, ctime and inode), not by a time watermark: a late file with an old mtime, or one
    renamed into an open delivery, is new. It is taken once its identity is the same on two ticks in
    a row (an upload still growing is not), and again only if its content changes. Hidden files and
    in-flight names (*.part, *.tmp, ...) are judged relative to the landing folder, with the corpus
    stage's own listing. A folder that cannot be listed raises LandingError.
    """
    now = time.time() if now is None else now
    state = read_cursor(cursor, now)
    suspects: dict[str, str] = {}  # sealed deliveries whose own identity changed -> that identity
    failed = f"new_corpus_sensor cannot list the landing folder: {bounded(uri)!r}"
    try:
        fs, root = url_to_fs(uri, **with_credentials(uri, storage_options))
        fs.invalidate_cache(root)  # the sensor's process lives on: see what landed since
        exists = fs.exists(root)
        local = is_local_fs(fs)
    except Exception as e:  # noqa: BLE001 - permissions, credentials, an endpoint: named
        raise LandingError(f"{failed}: {type(e).__name__}: {bounded(str(e))}") from None
    if not exists:
        return LandingScan({}, 0, state.dumps(), [], [], [])
    try:
        index = ledger.index()
    except LandingError:
        raise
    except Exception as e:  # noqa: BLE001 - the storage root's credentials, a damaged file: named
        raise LandingError(
            f"new_corpus_sensor cannot read the landing ledger {ledger.folder.uri}: {type(e).__name__}: {bounded(str(e))}"
        ) from None
    try:
        if len(index) < state.sealed:
            raise LandingError(
                f"the landing ledger {ledger.folder.uri} holds {len(index)} sealed deliveries, and this sensor sealed "
                f"{state.sealed}: it was deleted or restored from an older copy. Restore it; or, to take every "
                "delivery in the landing folder again as one new batch (dedup drops what was taken before), clear "
                "the cursor: `dagster sensor cursor new_corpus_sensor --delete`."
            )
        if not local or state.top_version != _local_identity(os.stat(root)):
            entries, before = _top_level(fs, root, local, index)
            if local:
                _trust_top(state, before, _local_identity(os.stat(root)), now)
            for name in [n for n, d in state.open.items() if n not in entries and not d.taken]:
                del state.open[name]  # gone before anything was taken from it (an upload renamed away)
            for name in sorted(set(entries) - set(state.open) - set(index)):
                state.open[name] = Delivery(since=now)
            unknown: dict[str, str] = {}
            for name, entry in entries.items():
                if name in index and name not in state.open and entry and entry != index[name].entry:
                    # A sealed name whose entry changed: replaced, made again, or written into (locally, its top folder).
                    (suspects if index[name].entry else unknown)[name] = entry
            if unknown:  # sealed before the ledger kept identities: keep them from now on
                ledger.note_entries(unknown)
        state.sealed = max(state.sealed, len(index))
        turn = _audit_turn(ledger.sorted_names(), index, state.audit_after, state.open)
        audited = sorted(set(suspects) | set(turn))
    except LandingError:
        raise
    except Exception as e:  # noqa: BLE001 - permissions, credentials, a FIFO in the folder's place: named
        raise LandingError(f"{failed}: {type(e).__name__}: {bounded(str(e))}") from None

    try:
        if not state.open and not audited:
            files, skipped = [], []
        else:
            listing = list_sources(uri, "**/*", storage_options=storage_options, within=set(state.open) | set(audited))
            files, skipped = listing.files, listing.skipped
    except (SourceMissing, NothingMatched):
        files, skipped = [], []
    except CorpusSourceError as e:
        raise LandingError(f"new_corpus_sensor cannot list the landing folder: {e}") from None

    current: dict[str, dict[str, str]] = {name: {} for name in [*state.open, *audited]}
    for f in files:
        current.setdefault(_top(f.rel), {})[f.rel] = f"{f.size}:{f.version}"
    if turn:
        state.audit_after = turn[-1]
    reopened, unchanged = [], {}
    for name in audited:
        taken = ledger.taken(name)
        if any(not same_file(taken.get(rel), ident) for rel, ident in current[name].items()):
            state.open[name] = Delivery(taken=dict(taken), since=now)
            reopened.append(name)
        elif name in suspects:
            unchanged[name] = suspects[name]
    if unchanged:
        ledger.note_entries(unchanged)

    # In-flight entries count as a change: a delivery is not sealed while an upload into it moves.
    in_flight: dict[str, list[str]] = {}
    for s in skipped:
        in_flight.setdefault(_top(s.rel), []).append(f"{s.rel} {s.reason} {s.size}")
    listed = sorted(state.open)
    ready: dict[str, str] = {}
    arriving = 0
    to_seal: dict[str, tuple[Delivery, str]] = {}
    for name in listed:
        d = state.open[name]
        fresh = {rel: ident for rel, ident in current[name].items() if not same_file(d.taken.get(rel), ident)}
        confirmed = {rel: ident for rel, ident in sorted(fresh.items()) if d.seen.get(rel) == ident}
        d.taken.update(confirmed)
        d.seen = {rel: ident for rel, ident in fresh.items() if rel not in confirmed}
        ready.update(confirmed)
        arriving += len(d.seen)
        digest = hashlib.sha256(json.dumps([sorted(current[name].items()), sorted(in_flight.get(name, []))]).encode()).hexdigest()[:16]
        if digest != d.state:
            d.state, d.since = digest, now
        elif not d.seen and not confirmed and now - d.since >= quiet_seconds:
            to_seal[name] = (d, _entry_identity(root, name, local, current[name]))
    if to_seal:
        ledger.seal(to_seal, now)
        for name in to_seal:
            del state.open[name]
        state.sealed = max(state.sealed, len(ledger.index()))
    # What a quiet sealed delivery holds that cannot be taken was named while it was open: not again each round.
    quiet = {display_name(name) for name in audited if name not in reopened}
    refused = [f"{s.rel} ({s.reason})" for s in skipped if s.reason != "hidden_or_in_flight" and _top(s.rel) not in quiet]
    return LandingScan(ready, arriving, state.dumps(), refused, listed, sorted(to_seal), audited, reopened, ledger.notes)
