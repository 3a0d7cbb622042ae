"""Landed batches: which files of a landing folder form one delivery of corpus data.

A batch is the set of files that became complete in the landing folder between two looks at it
(one sensor tick): a delivery, whatever its folder layout. Its record, written under the storage
root before the batch is announced, fixes which files (and which versions of them) the batch is,
so the batch can be rebuilt or backfilled later from the record alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.names import check_name

BATCHES = "batches"
# The built-in corpus (or the configured source_uri) is a batch of its own under this key.
BUILTIN_BATCH = "builtin"


def batch_key(files: dict[str, str], now: dt.datetime | None = None) -> str:
    """Short, stable and sortable: landing time plus a hash of the files and their versions."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{_digest(files)}"


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{rel} {ident}" for rel, ident in sorted(files.items())).encode()).hexdigest()[:8]


def find_batch(root: Storage, files: dict[str, str]) -> str | None:
    """The key of a batch already recorded with exactly these files (and versions), if any."""
    folder = root.child(BATCHES)
    folder.fs.invalidate_cache(folder.path)
    if not folder.exists():
        return None
    suffix = f"-{_digest(files)}.json"
    for name in sorted(n for n in folder.listdir() if n.endswith(suffix)):
        if folder.read_json(name).get("files") == dict(sorted(files.items())):
            return name[: -len(".json")]
    return None


def write_batch(root: Storage, key: str, source_uri: str, files: dict[str, str]) -> None:
    root.child(BATCHES).write_json(
        f"{check_name(key, 'batch key')}.json", {"key": key, "source_uri": source_uri, "files": dict(sorted(files.items()))}
    )


def read_batch(root: Storage, key: str) -> dict:
    folder = root.child(BATCHES)
    name = f"{check_name(key, 'batch key')}.json"
    if not folder.exists(name):
        raise FileNotFoundError(
            f"batch {key!r} has no record at {folder.uri}/{name}; only the landing sensor and '{BUILTIN_BATCH}' make batches"
        )
    record = folder.read_json(name)
    if not (isinstance(record, dict) and isinstance(record.get("source_uri"), str) and isinstance(record.get("files"), dict)):
        raise ValueError(f"batch record {folder.uri}/{name} is not a batch record (source_uri, files)")
    return record
