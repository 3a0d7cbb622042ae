"""Exact and near dedup against everything kept before, out of core: see index.py for the layout."""

from llm_pipeline.corpus.dedup.index import DedupIndex, DedupIndexError, Segment, SegmentRecord, memory_budget, rebuild_hint

__all__ = ["DedupIndex", "DedupIndexError", "Segment", "SegmentRecord", "memory_budget", "rebuild_hint"]
