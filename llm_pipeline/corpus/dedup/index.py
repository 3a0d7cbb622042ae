"""The persistent dedup index: every kept document's content id and LSH band keys, out of core.

Each batch's corpus holds its own segment of the index under `dedup/`, written with the corpus and
so visible exactly when its manifest is (a build killed on the way leaves the index as it was):

    dedup/documents.npy   one row per kept document, in corpus order: the 16-byte id, then (with near
                          dedup) the 64 MinHash values; uint8
    dedup/exact.npy       [id's first 8 bytes, id's last 8 bytes, row] sorted: the exact-duplicate keys
    dedup/bands.npy       [band key, row] sorted, each key once (its first document): the LSH buckets
    dedup/*.fences.npy    every 256th key of the run beside it
    dedup/segment.json    the segment's record: rows of each file, near dedup on or off

A build looks up only its own documents' keys (keys.py): in the earlier batches' runs (fences, then
the blocks that can hold them; runs.py), merged as they pile up (compaction.py), and in its own kept
documents', held in memory up to a budget and then spilled to local disk as sorted runs. Its memory
is bounded whatever the history or the batch size; its time grows with its own size. On a Ray
cluster the keys live in one worker per key range (on_ray.py). This module makes the decisions.

Documents are numbered by (batch position << 40 | row): earlier batches first, then this build's
own in order, so "the smallest number" is "the first kept", as a dedup holding everything in memory
would decide.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llm_pipeline.corpus.dedup.compaction import Piece, compacted, cover, read_compactions
from llm_pipeline.corpus.dedup.keys import NONE, SHIFT, KeyIndex, Keys
from llm_pipeline.corpus.dedup.runs import HEADER, NpyWriter, StoredRun, parse_header, read_ranges
from llm_pipeline.corpus.near_dedup import BANDS, NUM_PERM, band_keys
from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST

SEGMENT = "dedup"
RECORD = "segment.json"
FORMAT = 1
ID_BYTES = 16
SIG_BYTES = NUM_PERM * 4
_ROW_MASK = (1 << SHIFT) - 1


class DedupIndexError(ValueError):
    """An earlier batch's index is missing or damaged: refused, never read as empty (that would let
    every duplicate of that batch through)."""


def rebuild_hint(corpus_uri: str) -> str:
    return f"rebuild it from the stored corpus with: python -m llm_pipeline.corpus.dedup rebuild {corpus_uri}"


@dataclass(frozen=True)
class SegmentRecord:
    documents: int
    near_dedup: bool
    exact_rows: int
    band_rows: int
    bytes: int

    def to_json(self) -> dict:
        return {"format": FORMAT, **self.__dict__}

    @classmethod
    def from_json(cls, value, what: str) -> SegmentRecord:
        fields = {"documents": int, "near_dedup": bool, "exact_rows": int, "band_rows": int, "bytes": int}
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise DedupIndexError(f"{what} is not a dedup segment record of format {FORMAT}")
        for name, kind in fields.items():
            if type(value.get(name)) is not kind or (kind is int and value[name] < 0):
                raise DedupIndexError(f"{what}: {name} must be a {'non-negative whole number' if kind is int else 'true or false'}")
        return cls(**{name: value[name] for name in fields})


def _checked_documents(folder: Storage, rows: int, width: int) -> None:
    expected = HEADER + rows * width
    size = folder.size("documents.npy")
    if size != expected:
        raise DedupIndexError(f"dedup index file {folder.uri}/documents.npy has {size:,} bytes where its record says {expected:,}")
    shape = parse_header(read_ranges(folder, "documents.npy", [0], [HEADER])[0], f"{folder.uri}/documents.npy")
    if shape != (rows, width, np.dtype(np.uint8)):
        raise DedupIndexError(f"dedup index file {folder.uri}/documents.npy holds {shape[:2]} where its record says {(rows, width)}")


def _document_rows(folder: Storage, width: int, rows: Sequence[int]) -> list[bytes]:
    """Rows of a documents.npy (id, signature) by row number: locally or on storage."""
    starts = [HEADER + r * width for r in rows]
    return read_ranges(folder, "documents.npy", starts, [s + width for s in starts])


class Segment:
    """One earlier batch's part of the index, opened (sizes and headers checked), never loaded whole."""

    def __init__(self, batch: str, corpus: Storage):
        self.batch, self.corpus_uri = batch, corpus.uri
        self.folder = folder = corpus.child(SEGMENT)
        try:
            if not corpus.exists(MANIFEST):
                raise FileNotFoundError(f"{corpus.uri} has no {MANIFEST}: its build did not finish, so nothing of it is in the index")
            if not folder.exists(RECORD):
                raise FileNotFoundError(f"{folder.uri}/{RECORD} is missing")
            # its files' sizes and headers are checked against the record: a changed record or file does not pass
            self.record = record = SegmentRecord.from_json(folder.read_json(RECORD, limit=1 << 16), f"{folder.uri}/{RECORD}")
            self.exact = StoredRun(folder, "exact.npy", record.exact_rows, 3)
            self.bands = StoredRun(folder, "bands.npy", record.band_rows, 2) if record.near_dedup else None
            self.width = ID_BYTES + (SIG_BYTES if record.near_dedup else 0)
            _checked_documents(folder, record.documents, self.width)
        except (ValueError, OSError) as e:
            raise DedupIndexError(f"batch {batch}'s dedup index cannot be used: {e}; {rebuild_hint(corpus.uri)}") from None

    def document_rows(self, rows: Sequence[int]) -> list[bytes]:
        return _document_rows(self.folder, self.width, rows)


class DedupIndex:
    """Exact (content id) and near (MinHash LSH) dedup of this build's documents, in order, against
    everything kept before them: the earlier batches' segments and this build's own kept documents.

    `decide` takes the candidates of one file part in order and returns which to keep;
    `write_segment` writes this build's segment. Decisions are those of a dedup holding everything in
    memory (llm_pipeline_tests/reference_dedup.py): first kept wins, earlier batches first, exact
    before near, a near candidate (the first kept document of a shared band bucket, band by band)
    dropped when its estimated Jaccard reaches the threshold.
    The keys are looked up and added by `keys`: a local `KeyIndex`, or Ray workers (dedup/on_ray.py)
    made by `keys_on` from the same arguments. With `compactions` (a folder), the earlier batches'
    runs are read through their compactions there, and compacted when they pile up (compaction.py).
    """

    def __init__(
        self,
        near_threshold: float | None,
        earlier: Sequence[tuple[str, Storage]],
        spool: str,
        memory_bytes: int,
        keys_on: Callable[..., Keys] = KeyIndex,
        compactions: Storage | None = None,
    ):
        self.threshold = near_threshold
        self.segments = [Segment(name, corpus) for name, corpus in earlier]
        if near_threshold is not None:
            for segment in self.segments:
                if not segment.record.near_dedup:
                    raise DedupIndexError(
                        f"batch {segment.batch}'s dedup index has no MinHash signatures (near dedup was off); "
                        "rebuild it with near_dedup on, or turn near_dedup off"
                    )
        self.own = len(self.segments)  # this build's batch position
        near = near_threshold is not None
        pieces = [Piece(i, [[s.batch, s.corpus_uri]], s.record.documents, s.exact, s.bands) for i, s in enumerate(self.segments)]
        if compactions is not None and pieces:
            pieces = compacted(cover(pieces, read_compactions(compactions, near)), compactions, near)
        self.runs_per_kind = len(pieces)
        self.keys = keys_on([(p.start << SHIFT, p.exact, p.bands) for p in pieces], self.own, spool, memory_bytes)
        self.spool = spool
        self.width = ID_BYTES + (SIG_BYTES if near_threshold is not None else 0)
        self.documents = NpyWriter(os.path.join(spool, "documents.npy"), self.width, np.uint8, fences=False)
        self.kept = 0
        self.earlier_duplicates = 0
        self.lookup_seconds = 0.0

    @property
    def history_documents(self) -> int:
        return sum(s.record.documents for s in self.segments)

    @property
    def history_bytes(self) -> int:
        return sum(s.record.bytes for s in self.segments)

    def decide(self, ids: list[str], sigs: np.ndarray | None) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """(keep mask, [(row, reason, detail)] for the dropped rows) of these candidates, in order."""
        n = len(ids)
        started = time.perf_counter()
        raw_ids = [bytes.fromhex(i) for i in ids]
        halves = np.frombuffer(b"".join(raw_ids), dtype=">u8").reshape(n, 2).astype(np.uint64)
        exact_before = self._first_exact(halves)
        threshold = self.threshold if self.threshold is not None else 2.0  # above any similarity: never used then
        near = self.threshold is not None and sigs is not None
        if near:
            assert sigs is not None
            keys = band_keys(sigs)
            flat = keys.reshape(-1)
            queries, back = np.unique(flat, return_inverse=True)
            owners = self.keys.band_owners(queries)[back].reshape(n, BANDS)
            known = self._fetch(np.unique(owners[owners != np.uint64(NONE)]).tolist())
            keys_list, owners_list = keys.tolist(), owners.tolist()
        self.lookup_seconds += time.perf_counter() - started

        keep = np.ones(n, dtype=bool)
        drops: list[tuple[int, str, str]] = []
        own_ids: dict[str, int] = {}
        own_buckets: dict[int, int] = {}
        own_rows: dict[int, int] = {}  # number -> row of this chunk, for documents kept in it
        next_number = (self.own << SHIFT) | self.kept
        halves_list = halves.tolist()
        for row, doc_id in enumerate(ids):
            earlier = exact_before.get((halves_list[row][0], halves_list[row][1]))
            if earlier is None:
                earlier = own_ids.get(doc_id)
            if earlier is not None:
                keep[row] = False
                drops.append((row, "exact_duplicate", f"same text as {self._describe(earlier, doc_id)}"))
                continue
            if near:
                assert sigs is not None
                match = None
                for band in range(BANDS):
                    owner = owners_list[row][band]
                    if owner != NONE:
                        other_id, other_sig = known[owner]
                    else:
                        owner = own_buckets.get(keys_list[row][band])
                        if owner is None:
                            continue
                        other_id, other_sig = ids[own_rows[owner]], sigs[own_rows[owner]]
                    similarity = float(np.mean(other_sig == sigs[row]))
                    if similarity >= threshold:
                        match = owner, other_id, similarity
                        break
                if match is not None:
                    keep[row] = False
                    owner, other_id, similarity = match
                    drops.append(
                        (row, "near_duplicate", f"near duplicate of {self._describe(owner, other_id)} (estimated Jaccard {similarity:.2f})")
                    )
                    continue
                for key in keys_list[row]:
                    own_buckets.setdefault(key, next_number)
            own_ids[doc_id] = next_number
            own_rows[next_number] = row
            next_number += 1
        self._remember(keep, raw_ids, halves, sigs, keys if near else None)
        return keep, drops

    def add_kept(self, ids: list[str], sigs: np.ndarray | None) -> None:
        """Documents known to be kept, in order, added without a decision (a segment made again)."""
        raw_ids = [bytes.fromhex(i) for i in ids]
        halves = np.frombuffer(b"".join(raw_ids), dtype=">u8").reshape(len(ids), 2).astype(np.uint64)
        keys = band_keys(sigs) if sigs is not None and self.threshold is not None else None
        self._remember(np.ones(len(ids), dtype=bool), raw_ids, halves, sigs, keys)

    def _describe(self, number: int, doc_id: str) -> str:
        batch = number >> SHIFT
        if batch == self.own:
            return f"document {doc_id}"
        self.earlier_duplicates += 1
        return f"document {doc_id} of earlier batch {self.segments[batch].batch}"

    def _remember(
        self, keep: np.ndarray, raw_ids: list[bytes], halves: np.ndarray, sigs: np.ndarray | None, keys: np.ndarray | None
    ) -> None:
        rows = np.flatnonzero(keep)
        if not rows.size:
            return
        numbers = np.arange(self.kept, self.kept + rows.size, dtype=np.uint64)
        ids = np.frombuffer(b"".join(raw_ids[r] for r in rows), dtype=np.uint8).reshape(rows.size, ID_BYTES)
        if sigs is not None and self.threshold is not None:
            ids = np.concatenate([ids, np.ascontiguousarray(sigs[rows], dtype="<u4").view(np.uint8)], axis=1)
        self.documents.append(ids)
        self.documents.f.flush()  # read back by row when a later document collides with one of these
        band_rows = np.zeros((0, 2), np.uint64) if keys is None else np.column_stack([keys[rows].reshape(-1), np.repeat(numbers, BANDS)])
        self.keys.add(np.column_stack([halves[rows], numbers]), band_rows)
        self.kept += rows.size

    def _first_exact(self, halves: np.ndarray) -> dict[tuple[int, int], int]:
        """{(first half, second half): number} of the first kept document with each of these ids."""
        found: dict[tuple[int, int], int] = {}
        for first, second, number in self.keys.exact_matches(np.unique(halves[:, 0])).tolist():
            if found.get((first, second), NONE) > number:
                found[(first, second)] = number
        return found

    def _fetch(self, numbers: list[int]) -> dict[int, tuple[str, np.ndarray]]:
        """{number: (id, signature)} of kept documents, read by row from their batch's documents file."""
        by_batch: dict[int, list[int]] = {}
        for number in numbers:
            by_batch.setdefault(number >> SHIFT, []).append(number & _ROW_MASK)
        out = {}
        for batch, rows in by_batch.items():
            if batch == self.own:
                data = _document_rows(Storage(self.spool), self.width, rows)
            else:
                data = self.segments[batch].document_rows(rows)
            for row, raw in zip(rows, data):
                out[(batch << SHIFT) | row] = (raw[:ID_BYTES].hex(), np.frombuffer(raw[ID_BYTES:], dtype="<u4"))
        return out

    def write_segment(self, out: Storage, local: str) -> SegmentRecord:
        """This build's segment, written under `out`/dedup (the files first, the record last)."""
        rows = self.documents.close()
        near = self.threshold is not None
        exact_rows, band_rows = self.keys.finish(local, near)
        names = ["documents.npy", "exact.npy", "exact.fences.npy"] + (["bands.npy", "bands.fences.npy"] if near else [])
        if os.path.join(self.spool, "documents.npy") != os.path.join(local, "documents.npy"):
            os.replace(os.path.join(self.spool, "documents.npy"), os.path.join(local, "documents.npy"))
        folder = out.child(SEGMENT)
        size = 0
        for name in names:
            folder.put_file(os.path.join(local, name), name)
            size += os.path.getsize(os.path.join(local, name))
        record = SegmentRecord(documents=rows, near_dedup=near, exact_rows=exact_rows, band_rows=band_rows, bytes=size)
        folder.write_json(RECORD, record.to_json())
        return record


def memory_budget(megabytes: int) -> int:
    """Bytes of kept-document keys held in memory before a spill: a quarter of the setting, since
    sorting and merging the in-memory tables briefly needs about three times what they hold."""
    return megabytes * 1_000_000 // 4
