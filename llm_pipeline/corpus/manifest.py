"""A corpus batch's manifest.json: one definition for the writer (corpus/build.py) and every reader
(the asset's metadata and checks, the shard writer, the dedup rebuild, the command line).

Stored as JSON, written last (storage/manifests.py). `read_corpus_manifest` reads it back through
the model, so a renamed field fails `mypy` where it is read, and a file that lacks one fails by name.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST, ManifestError, parsed, read_manifest
from llm_pipeline.storage.parquet_shards import ParquetFile


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReadFile(Record):
    """A source file that was read."""

    uri: str
    size: int
    outcome: Literal["read"] = "read"
    format: str
    preset: str  # the cleaning preset its documents went through
    records: int
    documents: int  # kept
    dropped: dict[str, int]  # by reason


class SkippedFile(Record):
    """A matched entry that was not read, and why (corpus/sources.py)."""

    uri: str
    size: Optional[int]  # None when it is gone
    outcome: Literal["skipped"] = "skipped"
    reason: str


SourceFile = Annotated[ReadFile | SkippedFile, Field(discriminator="outcome")]


class Decontaminated(Record):
    tasks: tuple[str, ...]
    n: int
    items: Optional[int] = None  # the tasks' items, when the decontamination step ran
    items_too_short: Optional[int] = None


class Cleaning(Record):
    preset: str
    files_by_preset: dict[str, int]
    steps: dict[str, tuple[str, ...]]  # by preset ("steps": the steps given instead of a preset's)
    languages: tuple[str, ...]
    min_language_score: float
    rule_settings: dict[str, float]
    decontaminated_against: Decontaminated


class SegmentSummary(Record):
    """The batch's dedup index segment (corpus/dedup/index.py SegmentRecord)."""

    format: int
    documents: int
    near_dedup: bool
    exact_rows: int
    band_rows: int
    bytes: int


class DedupIndexSummary(Record):
    segment: SegmentSummary
    earlier_documents: int  # in the earlier batches' segments the batch was deduplicated against
    earlier_bytes: int


class EarlierBatch(Record):
    batch: str
    uri: str


class NearDedupSettings(Record):
    enabled: bool
    threshold: float
    num_perm: int
    bands: int
    shingle_words: int
    library: str


class CorpusManifest(Record):
    kind: Literal["raw_corpus"] = "raw_corpus"
    source_uri: str
    glob: str
    exclude: tuple[str, ...]
    format: str
    text_field: str
    files_listed: Optional[tuple[str, ...]]  # the landed batch's files, when the batch names them
    max_bytes: Optional[int]
    files_matched: int
    files_read: int
    files_skipped: int
    skipped: dict[str, int]  # files, by reason
    records: int
    documents: int  # kept
    text_bytes: int  # of the kept documents' text, UTF-8
    bytes_read: int
    decoded_bytes: int
    dropped: dict[str, int]  # documents, by reason
    modified: dict[str, int]  # documents, by formatting step
    cleaning: Cleaning
    dropped_examples: dict[str, str]  # a document's start, by reason
    duplicates_of_earlier_batches: int
    dedup_index: DedupIndexSummary
    deduplicated_against: tuple[EarlierBatch, ...]
    near_dedup: NearDedupSettings
    shards: tuple[ParquetFile, ...]  # documents-*.parquet, in order (storage/parquet_shards.py)
    quarantine: tuple[ParquetFile, ...]
    files: tuple[SourceFile, ...]  # every matched file, by URI

    def summary(self) -> dict:
        """The manifest without its per-file and per-shard lists: what a person or a log line wants."""
        return self.model_dump(mode="json", exclude={"files", "shards", "quarantine", "dropped_examples"}) | {
            "shards": len(self.shards),
            "quarantine_files": len(self.quarantine),
        }

    def not_as_landed(self) -> list[str]:
        """The files of a landed batch that were gone or changed when it was read."""
        return [f.uri for f in self.files if isinstance(f, SkippedFile) and f.reason in ("missing", "changed_since_landing")]


def read_corpus_manifest(corpus: Storage) -> CorpusManifest:
    """The corpus batch's manifest, every field checked; ManifestError naming the file and the field otherwise."""
    data = read_manifest(corpus, ("kind",), "corpus manifest")
    if data.get("kind") != "raw_corpus":
        raise ManifestError(f"{corpus.uri}/{MANIFEST} holds a {data.get('kind')!r} manifest, not a raw_corpus one")
    return parsed(CorpusManifest, data, f"corpus manifest {corpus.uri}/{MANIFEST}")
