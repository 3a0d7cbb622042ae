"""The landing folder, watched at a cost that does not grow with what it already holds.

A *delivery* is one entry directly under the landing folder: a folder (of any depth) or a single
file. The sensor's cursor holds the *open* deliveries only, each file with its identity (size and
version): taken, or seen once and waiting to be seen unchanged. A delivery whose files were all
taken and that has not changed for `quiet_seconds` is *sealed*: its identities move to a ledger
under the storage root and no tick lists it again. So a tick lists

- the top level of the landing folder, to find new deliveries: on a local disk only when the
  folder's own modification time changed (an entry added, renamed or removed there); on an object
  store, one LIST call per 1,000 deliveries;
- the open deliveries, file by file;

and reads the ledger's index (one short line per sealed delivery) only when a name it does not
know appears. What was taken before costs nothing per tick, and the cursor stays the size of the
open deliveries.

The contract this asks of whoever delivers: new data goes into a new delivery once the old one
has been quiet for `quiet_seconds` (an hour by default). A file written into a sealed delivery is
not taken, and the sensor says nothing about it, since it no longer looks there.

A tick killed anywhere loses and doubles nothing: the ledger records a delivery as sealed only
with identities the cursor already holds as taken, and whichever of the two a restarted tick reads,
it takes the same files.
"""

from __future__ import annotations

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
    list_sources,
)
from llm_pipeline.storage.folders import Storage, bounded, is_local_fs

CURSOR_VERSION = 2
# A folder's mtime is only trusted once it is this much older than the look that read it: a change
# in the same clock tick of the filesystem would leave it unchanged ("racy" timestamps, as git says).
RACY_SECONDS = 2.0


class LandingError(RuntimeError):
    """The landing folder could not be looked at, or the sensor's cursor cannot be read: a tick that
    fails with this names what failed, instead of reading as 'nothing new'."""


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
    # The landing folder's mtime (ns) at the last full look at its top level; None: look again.
    top_version: str | None = None

    def dumps(self) -> str:
        deliveries = {name: {"taken": d.taken, "seen": d.seen, "state": d.state, "since": d.since} for name, d in self.open.items()}
        return json.dumps({"v": CURSOR_VERSION, "top_version": self.top_version, "open": deliveries}, sort_keys=True)


@dataclass
class LandingScan:
    """One look at the landing folder."""

    ready: dict[str, str]  # complete new files, relative path -> identity: the next batch
    arriving: int  # files seen once, to be taken on the next tick if unchanged
    cursor: str
    refused: list[str]  # entries that cannot be taken, each "path (reason)"
    listed: list[str]  # the deliveries whose files this tick listed
    sealed: list[str]  # the deliveries sealed by this tick


def _is_map_of_str(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _top(rel: str) -> str:
    return rel.split("/", 1)[0]


def read_cursor(cursor: str | None, now: float) -> LandingCursor:
    """The sensor's state; LandingError naming the way out when it is not one this release writes.
    The previous release's cursor (every file taken, flat) becomes open deliveries, quiet from now."""
    if not cursor:
        return LandingCursor()
    try:
        state = json.loads(cursor)
        if not isinstance(state, dict):
            raise TypeError("the cursor is not a JSON object")
        if state.get("v") is None and set(state) == {"taken", "seen"}:
            return _from_flat(state["taken"], state["seen"], now)
        if state.get("v") != CURSOR_VERSION or not isinstance(state.get("open"), dict):
            raise TypeError(f"unknown cursor version {state.get('v')!r}")
        top_version = state.get("top_version")
        if top_version is not None and not isinstance(top_version, str):
            raise TypeError("top_version must be a string")
        out = LandingCursor(top_version=top_version)
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


_INDEX_CACHE: dict[str, tuple[tuple | None, dict[str, float]]] = {}


class Ledger:
    """Sealed deliveries of one landing folder, under the storage root: an index (name -> when sealed)
    and, per delivery, the identities of the files taken from it."""

    def __init__(self, root: Storage, landing_uri: str):
        self.folder = root.child("landing_ledger", hashlib.sha256(landing_uri.encode()).hexdigest()[:16])

    def index(self) -> dict[str, float]:
        """Read again only when the file changed: the sensor's process lives on between ticks."""
        version = self._index_version()
        if version is None:
            return {}
        cached = _INDEX_CACHE.get(self.folder.full("index.json"))
        if cached is not None and cached[0] == version:
            return cached[1]
        index = self.folder.read_json("index.json")
        if not (isinstance(index, dict) and all(type(v) in (int, float) for v in index.values())):
            raise LandingError(f"the landing ledger's index {self.folder.uri}/index.json is not a map of delivery names to times")
        _INDEX_CACHE[self.folder.full("index.json")] = (version, index)
        return index

    def _index_version(self) -> tuple | None:
        try:
            info = self.folder.fs.info(self.folder.full("index.json"))
        except FileNotFoundError:
            return None
        return tuple(str(info.get(key)) for key in ("size", "ino", "mtime", "ETag", "etag", "generation", "LastModified"))

    def seal(self, deliveries: dict[str, Delivery], now: float) -> None:
        # The deliveries first, the index last: an index entry always has its delivery's record.
        for name, d in deliveries.items():
            self.folder.child("deliveries").write_json(self._record(name), {"name": name, "taken": d.taken})
        index = {**self.index(), **dict.fromkeys(deliveries, now)}
        self.folder.write_json("index.json", index)
        self.folder.fs.invalidate_cache(self.folder.path)
        _INDEX_CACHE[self.folder.full("index.json")] = (self._index_version(), index)

    def taken(self, name: str) -> dict[str, str]:
        return self.folder.child("deliveries").read_json(self._record(name))["taken"]

    @staticmethod
    def _record(name: str) -> str:
        return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".json"


def _top_level(fs, root: str, local: bool) -> tuple[set[str], str | None]:
    """Names directly under the landing folder, and (locally) the folder's mtime if it can be trusted."""
    if local:
        before = os.stat(root).st_mtime_ns
        names = set(os.listdir(root))
        trusted = before == os.stat(root).st_mtime_ns and time.time() - before / 1e9 > RACY_SECONDS
        return names, str(before) if trusted else None
    base = root.rstrip("/")
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False) if p.rstrip("/") != base}, None


def scan(
    uri: str, storage_options: dict, cursor: str | None, ledger: Ledger, quiet_seconds: float, now: float | None = None
) -> LandingScan:
    """Files under the landing folder `uri` that are new or changed and complete.

    A file is known by its identity, path + size + version (an object's ETag, a file's mtime), not by
    a time watermark: a late file with an old mtime, or one renamed into an open delivery, is new.
    It is taken once its identity is the same on two ticks in a row (an upload still growing is
    not), and never again unless its content changes while its delivery is open. Hidden files and
    in-flight names (*.part, *.tmp, ...) are judged relative to the landing folder, with the corpus
    stage's own listing. A folder that cannot be listed raises LandingError.
    """
    now = time.time() if now is None else now
    state = read_cursor(cursor, now)
    try:
        fs, root = url_to_fs(uri, **storage_options)
        fs.invalidate_cache(root)  # the sensor's process lives on: see what landed since
        exists = fs.exists(root)
        local = is_local_fs(fs)
        if not exists:
            return LandingScan({}, 0, state.dumps(), [], [], [])
        if not local or state.top_version is None or state.top_version != str(os.stat(root).st_mtime_ns):
            names, state.top_version = _top_level(fs, root, local)
            for name in [n for n, d in state.open.items() if n not in names and not d.taken]:
                del state.open[name]  # gone before anything was taken from it (an upload renamed away)
            index = ledger.index() if names - set(state.open) else {}
            for name in sorted(names - set(state.open) - set(index)):
                state.open[name] = Delivery(since=now)
    except LandingError:
        raise
    except Exception as e:  # noqa: BLE001 - permissions, credentials, a FIFO in the folder's place: named
        raise LandingError(f"new_corpus_sensor cannot list the landing folder: {uri!r}: {type(e).__name__}: {bounded(str(e))}") from None

    listed = sorted(state.open)
    try:
        if not listed:
            files, skipped = [], []
        else:
            listing = list_sources(uri, "**/*", storage_options=storage_options, within=set(listed))
            files, skipped = listing.files, listing.skipped
    except (SourceMissing, NothingMatched):
        files, skipped = [], []
    except CorpusSourceError as e:
        raise LandingError(f"new_corpus_sensor cannot list the landing folder: {e}") from None

    current: dict[str, dict[str, str]] = {name: {} for name in listed}
    for f in files:
        current.setdefault(_top(f.rel), {})[f.rel] = f"{f.size}:{f.version}"
    # In-flight entries count as a change: a delivery is not sealed while an upload into it moves.
    in_flight: dict[str, list[str]] = {}
    for s in skipped:
        in_flight.setdefault(_top(s.rel), []).append(f"{s.rel} {s.reason} {s.size}")
    ready: dict[str, str] = {}
    arriving = 0
    to_seal: dict[str, Delivery] = {}
    for name in listed:
        d = state.open[name]
        fresh = {rel: ident for rel, ident in current[name].items() if d.taken.get(rel) != ident}
        confirmed = {rel: ident for rel, ident in sorted(fresh.items()) if d.seen.get(rel) == ident}
        d.taken.update(confirmed)
        d.seen = {rel: ident for rel, ident in fresh.items() if rel not in confirmed}
        ready.update(confirmed)
        arriving += len(d.seen)
        digest = hashlib.sha256(json.dumps([sorted(current[name].items()), sorted(in_flight.get(name, []))]).encode()).hexdigest()[:16]
        if digest != d.state:
            d.state, d.since = digest, now
        elif not d.seen and not confirmed and now - d.since >= quiet_seconds:
            to_seal[name] = d
    if to_seal:
        ledger.seal(to_seal, now)
        for name in to_seal:
            del state.open[name]
    refused = [f"{s.rel} ({s.reason})" for s in skipped if s.reason != "hidden_or_in_flight"]
    return LandingScan(ready, arriving, state.dumps(), refused, listed, sorted(to_seal))
