"""A corpus's dedup segment made again from its stored documents (the index's one source of truth)."""

from __future__ import annotations

import pyarrow.parquet as pq

from llm_pipeline.corpus.dedup.index import DedupIndex, DedupIndexError, Segment, memory_budget
from llm_pipeline.corpus.manifest import read_corpus_manifest
from llm_pipeline.corpus.near_dedup import document_signatures
from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST, read_manifest

_REBUILD_MEMORY_MB = 256


def find_corpora(folder: Storage) -> list[Storage]:
    """`folder` itself when it is a corpus, else every corpus below it (by its manifest), sorted."""
    if folder.exists(MANIFEST):
        return [folder]
    found = []
    for path in sorted(folder.fs.find(folder.path)):
        rel = path[len(folder.path.rstrip("/")) + 1 :]
        if rel.endswith("/" + MANIFEST) or rel == MANIFEST:
            corpus = folder.child(*rel.split("/")[:-1])
            if read_manifest(corpus, ("kind",), "manifest").get("kind") == "raw_corpus":
                found.append(corpus)
    if not found:
        raise FileNotFoundError(f"no corpus (a raw_corpus manifest.json) at or under {folder.uri}")
    return found


def rebuild_segment(corpus: Storage, local: str, force: bool = False) -> dict:
    manifest = read_corpus_manifest(corpus)
    if not force:
        try:
            Segment("", corpus)
            return {"outcome": "kept", "reason": "its segment is readable"}
        except DedupIndexError:
            pass
    near = manifest.near_dedup.enabled
    threshold = manifest.near_dedup.threshold if near else None
    index = DedupIndex(threshold, (), local, memory_budget(_REBUILD_MEMORY_MB))
    for shard in manifest.shards:
        with corpus.open_read(shard.name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=2048, columns=["id", "text"]):
                ids = batch.column("id").to_pylist()
                sigs = document_signatures(batch.column("text").to_pylist()) if near else None
                index.add_kept(ids, sigs)
    if index.kept != manifest.documents:
        raise DedupIndexError(f"{corpus.uri}: its shards hold {index.kept} documents where its manifest says {manifest.documents}")
    record = index.write_segment(corpus, local)
    return {"outcome": "rebuilt", "documents": record.documents, "bytes": record.bytes}


__all__ = ["find_corpora", "rebuild_segment"]
