"""Earlier batches' key runs merged when they pile up: the index's LSM levels across batches.

Every batch's segment holds its own sorted runs, so a build looking up its keys would read one run
per earlier batch. Tiered compaction keeps that number logarithmic: a "piece" is one batch's segment
(level 0) or a compaction of FAN_IN pieces of one level (that level + 1); when the last FAN_IN pieces
have one level, their runs are merged into one per kind, written under the compactions folder
(`<storage root>/dedup_index/<id>/`) with `covers.json` last, which names the batches it covers (by
name and corpus URI). A compaction is a cache: the segments stay the source of truth, a compaction
whose batches are no longer exactly those of the build (a batch rebuilt since) is not used, and a
killed compaction (no `covers.json`) is never read. A piece's document numbers are relative to its
first batch: a lookup adds the piece's position.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from llm_pipeline.corpus.dedup.keys import SHIFT
from llm_pipeline.corpus.dedup.runs import NpyWriter, Renumbered, StoredRun, merge
from llm_pipeline.storage.folders import Storage

COVERS = "covers.json"
FAN_IN = 4  # pieces of one level merged at a time: each batch's keys rewritten log4(batches) times


@dataclass
class Piece:
    """Consecutive earlier batches' keys: one batch's segment, or a compaction of several."""

    start: int  # position of its first batch among the build's earlier batches
    covers: list[list[str]]  # [batch, corpus URI] of each batch, in order
    documents: int
    exact: StoredRun
    bands: StoredRun | None
    level: int = 0


def read_compactions(folder: Storage, near: bool) -> list[Piece]:
    """Every finished, readable compaction under `folder` (start 0: placed by `cover`). One that cannot
    be read is passed over: its batches' own segments answer instead."""
    found = []
    for name in folder.listdir():
        sub = folder.child(name)
        try:
            if not sub.exists(COVERS):
                continue
            record = sub.read_json(COVERS, limit=64 << 20)
            exact = StoredRun(sub, "exact.npy", int(record["exact_rows"]), 3)
            bands = StoredRun(sub, "bands.npy", int(record["band_rows"]), 2) if near else None
            if near != bool(record["near_dedup"]):
                continue
            found.append(Piece(0, [list(c) for c in record["covers"]], int(record["documents"]), exact, bands, int(record["level"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def cover(segments: Sequence[Piece], compactions: Sequence[Piece]) -> list[Piece]:
    """The fewest pieces covering the batches in order: at each position the compaction covering the
    most batches from there, else that batch's own segment."""
    pieces, i = [], 0
    while i < len(segments):
        fits = [c for c in compactions if len(c.covers) > 1 and c.covers == [s.covers[0] for s in segments[i : i + len(c.covers)]]]
        best = max(fits, key=lambda c: len(c.covers), default=None)
        if best is None:
            pieces.append(segments[i])
            i += 1
        else:
            pieces.append(Piece(i, best.covers, best.documents, best.exact, best.bands, best.level))
            i += len(best.covers)
    return pieces


def compacted(pieces: list[Piece], folder: Storage, near: bool) -> list[Piece]:
    """`pieces` with every tail of FAN_IN pieces of one level merged into one, written under `folder`."""
    while len(pieces) >= FAN_IN and len({p.level for p in pieces[-FAN_IN:]}) == 1:
        tail = pieces[-FAN_IN:]
        pieces = pieces[:-FAN_IN] + [_merged(tail, folder, near)]
    return pieces


def _merged(tail: list[Piece], folder: Storage, near: bool) -> Piece:
    start = tail[0].start
    sub = folder.child(uuid.uuid4().hex)
    counts = {}
    with tempfile.TemporaryDirectory(prefix="llm-pipeline-compaction-") as local:
        kinds = [("exact", 3, False)] + ([("bands", 2, True)] if near else [])
        for kind, width, first_per_key in kinds:
            inputs = [Renumbered(getattr(p, kind), (p.start - start) << SHIFT) for p in tail]
            counts[kind] = merge(inputs, NpyWriter(os.path.join(local, f"{kind}.npy"), width), first_per_key)
            for name in (f"{kind}.npy", f"{kind}.fences.npy"):
                sub.put_file(os.path.join(local, name), name)
    covers = [c for p in tail for c in p.covers]
    documents = sum(p.documents for p in tail)
    level = tail[0].level + 1
    record = {"covers": covers, "level": level, "documents": documents, "near_dedup": near}
    sub.write_json(COVERS, record | {"exact_rows": counts["exact"], "band_rows": counts.get("bands", 0)})
    exact = StoredRun(sub, "exact.npy", counts["exact"], 3)
    bands = StoredRun(sub, "bands.npy", counts["bands"], 2) if near else None
    return Piece(start, covers, documents, exact, bands, level)
