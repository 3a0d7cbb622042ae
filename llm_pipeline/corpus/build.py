"""Build the cleaned corpus: list the source, clean files on every core, dedup in order, write Parquet.

    list_sources   which files, and why each other matched entry is skipped   (sources.py)
    clean_file     read by format, filter, id and MinHash per document      (clean.py, in workers)
    merge          exact and near dedup in file order, Parquet shards       (here, one process)

Dropped records are not lost: they go to quarantine Parquet files with their reason, location and
content (a prefix when large). Every matched file is listed in the manifest with its outcome.
Output is byte-identical whatever the number of workers: workers only spool, the merge decides.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from llm_pipeline.corpus.clean import (
    QUARANTINE_SCHEMA,
    CleanOptions,
    FileResult,
    candidates_path,
    clean_file,
    clean_files_elsewhere,
    quarantine_path,
    worker_main,
)
from llm_pipeline.corpus.cleaning import Rules, tuned_rules
from llm_pipeline.corpus.cleaning.decontamination import EvalNgrams, harness_item_texts
from llm_pipeline.corpus.cleaning.language import check_languages
from llm_pipeline.corpus.dedup import DedupIndex, memory_budget
from llm_pipeline.corpus.dedup.keys import KeyIndex, Keys
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.corpus.manifest import (
    Cleaning,
    CorpusManifest,
    Decontaminated,
    DedupIndexSummary,
    EarlierBatch,
    NearDedupSettings,
    ReadFile,
    SegmentSummary,
    SkippedFile,
    read_corpus_manifest,
)
from llm_pipeline.corpus.near_dedup import BANDS, NUM_PERM, SHINGLE
from llm_pipeline.corpus.readers import PREFIX_BYTES, Format
from llm_pipeline.corpus.sources import (
    CorpusSourceError,
    SourceFile,
    SourceListing,
    check_exclude,
    check_glob,
    is_hidden_or_in_flight,
    list_sources,
)
from llm_pipeline.faults import crash_point
from llm_pipeline.ray_cluster import Executor
from llm_pipeline.settings import Settings
from llm_pipeline.storage.folders import Storage, bounded
from llm_pipeline.storage.manifests import write_manifest
from llm_pipeline.storage.parquet_shards import ParquetShards, payload_bytes

__all__ = ["CorpusConfig", "CorpusSourceError", "build_corpus", "iter_documents", "DOCUMENT_SCHEMA", "QUARANTINE_SCHEMA"]

# language and language_score: the language step's verdict (null where the file's steps have none)
DOCUMENT_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("language", pa.string()), ("language_score", pa.float64())]
)
DUPLICATE_REASONS = frozenset({"exact_duplicate", "near_duplicate"})
# The built-in corpus is capped so that the demo stays a demo; a given source is read whole by default.
BUILTIN_CORPUS_MAX_BYTES = 8_000_000
# The built-in corpus is the standard library's Python source. Its excludes keep it the same on every
# machine: installed packages under site-packages differ from one to the next. A given source reads
# every file under it, the reader chosen by each file's name.
BUILTIN_GLOB = "**/*.py"
BUILTIN_EXCLUDE = ("site-packages/*", "dist-packages/*")
# Below this much input, worker processes cost more to start than they save.
_INLINE_BYTES = 16 * 1024 * 1024


def default_corpus_uri() -> str:
    """The Python standard library's own source: a real corpus present on every machine that runs us."""
    return sysconfig.get_paths()["stdlib"]


class CorpusConfig(Settings):
    source_uri: str = Field(
        default_factory=default_corpus_uri, min_length=1, description="fsspec URI of a folder or file, taken literally (no patterns)"
    )
    glob: str | None = Field(
        default=None,
        description=(
            "which files under source_uri to read (the only pattern, with exclude); unset: every file (the reader chosen by "
            f"each name), and {BUILTIN_GLOB!r} for the built-in corpus"
        ),
    )
    exclude: tuple[str, ...] | None = Field(
        default=None, description=(f"relative path patterns to skip; unset: none, and {', '.join(BUILTIN_EXCLUDE)} for the built-in corpus")
    )
    format: Format = Field(
        default="auto", description="auto: from each file name (.jsonl/.json/.ndjson, .parquet, else text; .gz/.bz2/.xz/.zst decompressed)"
    )
    text_field: str = Field(default="text", min_length=1, description="the JSON Lines field or Parquet column holding the text")
    include_hidden: bool = Field(default=False, description="read hidden files and in-flight uploads (*.tmp, *.part, ...) too")
    # A fixed set of files instead of everything glob matches: a landed batch. Relative path -> the
    # identity it landed with ("size:version"; "" for any): a file changed since is not read.
    files: dict[str, str] | None = None
    max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="read at most this many stored bytes (files over the budget are skipped and listed); "
        f"unset: {BUILTIN_CORPUS_MAX_BYTES // 10**6} MB for the built-in corpus, no cap for a given source",
    )
    shard_bytes: int = Field(default=64_000_000, gt=0, description="bytes of text per documents Parquet file")
    row_group_rows: int = Field(default=1024, gt=0, description="documents per Parquet row group")
    quarantine_content_bytes: int = Field(
        default=65_536, ge=PREFIX_BYTES, description="bytes of each dropped document kept in the quarantine"
    )
    workers: int = Field(
        default=0, ge=0, description="worker processes, at most one per core; 0: one per core (in-process for small inputs)"
    )
    executor: Executor = Field(
        default="local",
        description="local: this machine's cores; ray: files cleaned by Ray tasks on the cluster, in chunks (LLM_PIPELINE_RAY_ADDRESS)",
    )
    dedup_memory_mb: int = Field(
        default=128,
        ge=1,
        description="memory for the dedup keys of this build's kept documents; beyond it they are spilled to local disk "
        "as sorted runs (the result is the same at any setting)",
    )
    filters: FilterConfig = FilterConfig()

    @field_validator("glob")
    @classmethod
    def _a_valid_pattern(cls, value):
        return value if value is None else check_glob(value)

    @field_validator("exclude")
    @classmethod
    def _valid_patterns(cls, value):
        return value if value is None else check_exclude(value)

    @property
    def is_builtin(self) -> bool:
        return self.source_uri == default_corpus_uri()

    @property
    def byte_budget(self) -> int | None:
        if self.max_bytes is not None:
            return self.max_bytes
        return BUILTIN_CORPUS_MAX_BYTES if self.is_builtin else None

    @property
    def file_glob(self) -> str:
        if self.glob is not None:
            return self.glob
        return BUILTIN_GLOB if self.is_builtin else "**/*"

    @property
    def excluded(self) -> tuple[str, ...]:
        if self.exclude is not None:
            return self.exclude
        return BUILTIN_EXCLUDE if self.is_builtin else ()


@dataclass
class BuildStats:
    """The figures of a build that differ from run to run, kept out of the manifest."""

    dedup_lookup_seconds: float = 0.0
    dedup_earlier_runs: int = 0  # runs looked up per key kind


@dataclass
class _Totals:
    records: int = 0
    documents: int = 0
    text_bytes: int = 0
    bytes_read: int = 0
    decoded_bytes: int = 0


@dataclass
class _Kept:
    documents: int = 0
    text_bytes: int = 0


@dataclass
class Progress:
    files_done: int
    files_total: int
    documents: int
    bytes_read: int
    decoded_bytes: int
    seconds: float


def build_corpus(
    cfg: CorpusConfig,
    out: Storage,
    storage_options: dict | None = None,
    progress: Callable[[Progress], None] | None = None,
    earlier: Sequence[tuple[str, Storage]] = (),
    ray_address: str = "",
    stats: BuildStats | None = None,
    dedup_compactions: Storage | None = None,
) -> CorpusManifest:
    """Read, clean and write the corpus under `out`. Returns the manifest (also written last).
    With `executor: ray`, files are cleaned on the Ray cluster at `ray_address` (a driver address).

    `earlier` names the corpora of earlier batches, in order: a document one of them kept is a
    duplicate here (exact or near). A batch whose every record repeats earlier batches is kept as
    an empty corpus (nothing new), not an error. The build writes its own segment of the dedup index
    (`dedup/`) for the batches after it, and looks up only its own documents' keys in theirs.
    `dedup_compactions` is the folder where the earlier batches' index runs are merged as they pile up
    (the asset's: `<storage root>/dedup_index`). `stats`, when given, receives the figures that may
    differ from run to run (dedup lookup seconds, runs looked up per key kind).
    """
    listing = list_sources(
        cfg.source_uri, cfg.file_glob, cfg.excluded, cfg.include_hidden, cfg.byte_budget, storage_options, only=cfg.files
    )
    check_output_folder(out, cfg, storage_options)  # after the (cheap) listing, before any file is read
    skip_reasons = dict(sorted(Counter(s.reason for s in listing.skipped).items()))
    if not listing.files:
        raise CorpusSourceError(
            f"corpus source_uri {cfg.source_uri!r}: no file to read; {len(listing.skipped)} matched "
            f"entries were all skipped ({skip_reasons})"
        )
    rules = cleaning_rules(cfg.filters)  # the language model and evaluation items loaded: bad names fail before any file is read
    opts = CleanOptions(
        listing.root_uri, dict(storage_options or {}), cfg.format, cfg.text_field, cfg.filters, cfg.quarantine_content_bytes, rules
    )
    if cfg.executor == "ray" and not ray_address:
        raise ValueError(
            "corpus executor 'ray' needs the Ray cluster's address (LLM_PIPELINE_RAY_ADDRESS; on the command line --ray-address)"
        )
    with tempfile.TemporaryDirectory(prefix="llm-pipeline-corpus-") as local, _on_cluster(cfg.executor, ray_address):
        os.makedirs(spool := os.path.join(local, "spool"))
        os.makedirs(dedup_spool := os.path.join(local, "dedup"))
        # every earlier batch's index opened (sizes and headers checked) before any file is read
        near_threshold = cfg.filters.near_dedup_threshold if cfg.filters.near_dedup else None
        dedup = DedupIndex(
            near_threshold,
            earlier,
            dedup_spool,
            memory_budget(cfg.dedup_memory_mb),
            keys_on=_keys_on(cfg.executor),
            compactions=dedup_compactions,
        )
        totals = _Totals()
        dropped: dict[str, int] = {}
        modified: dict[str, int] = {}
        files_by_preset: dict[str, int] = {}
        examples: dict[str, str] = {}
        file_entries: list[ReadFile] = []
        with (
            ParquetShards(out, "documents", DOCUMENT_SCHEMA, cfg.shard_bytes, cfg.row_group_rows) as docs,
            ParquetShards(out, "quarantine", QUARANTINE_SCHEMA, cfg.shard_bytes, cfg.row_group_rows) as quarantine,
        ):
            started = time.perf_counter()
            cleaned = (
                _cleaned_on_ray(listing, opts, spool)
                if cfg.executor == "ray"
                else _cleaned(listing, opts, spool, _worker_count(cfg, listing))
            )
            for file_index, result in cleaned:
                source = listing.files[file_index]
                kept = _merge_file(spool, result, source.uri, dedup, docs, quarantine, cfg.quarantine_content_bytes)
                for reason, n in result.dropped.items():
                    dropped[reason] = dropped.get(reason, 0) + n
                for step, n in result.modified.items():
                    modified[step] = modified.get(step, 0) + n
                files_by_preset[result.preset] = files_by_preset.get(result.preset, 0) + 1
                for reason, example in result.examples.items():
                    examples.setdefault(reason, example)
                totals.records += result.records
                totals.documents += kept.documents
                totals.text_bytes += kept.text_bytes
                totals.bytes_read += source.size
                totals.decoded_bytes += result.decoded_bytes
                file_entries.append(
                    ReadFile(
                        uri=source.uri,
                        size=source.size,
                        format=result.format,
                        preset=result.preset,
                        records=result.records,
                        documents=kept.documents,
                        dropped=dict(sorted(result.dropped.items())),
                    )
                )
                if progress is not None:
                    progress(
                        Progress(
                            len(file_entries),
                            len(listing.files),
                            totals.documents,
                            totals.bytes_read,
                            totals.decoded_bytes,
                            time.perf_counter() - started,
                        )
                    )
        shards, quarantine_files = docs.files, quarantine.files
        nothing_new = totals.records > 0 and dedup.earlier_duplicates > 0 and set(dropped) <= DUPLICATE_REASONS
        if totals.records == 0:
            raise CorpusSourceError(
                f"corpus source_uri {bounded(cfg.source_uri)!r}: no document kept: the {len(file_entries)} files read hold no "
                f"records (an empty file, a zero-row Parquet file, a JSON Lines file of blank lines)"
            )
        if totals.documents == 0 and not nothing_new:
            hints = "; ".join(f"{reason}: {example}" for reason, example in sorted(examples.items()))
            raise CorpusSourceError(
                f"corpus source_uri {cfg.source_uri!r}: no document kept: all {totals.records} records from "
                f"{len(file_entries)} files were dropped ({dict(sorted(dropped.items()))}); e.g. {hints}; "
                f"see the quarantine files under {out.uri}"
            )
        segment = dedup.write_segment(out, dedup_spool)
        if stats is not None:
            stats.dedup_lookup_seconds = dedup.lookup_seconds
            stats.dedup_earlier_runs = dedup.runs_per_kind
        skipped = [SkippedFile(uri=s.uri, size=s.size, reason=s.reason) for s in listing.skipped]
        filters = cfg.filters
        manifest = CorpusManifest(
            source_uri=cfg.source_uri,
            glob=cfg.file_glob,
            exclude=cfg.excluded,
            format=cfg.format,
            text_field=cfg.text_field,
            files_listed=tuple(sorted(cfg.files)) if cfg.files is not None else None,
            max_bytes=cfg.byte_budget,
            files_matched=len(listing.files) + len(listing.skipped),
            files_read=len(listing.files),
            files_skipped=len(listing.skipped),
            skipped=skip_reasons,
            records=totals.records,
            documents=totals.documents,
            text_bytes=totals.text_bytes,
            bytes_read=totals.bytes_read,
            decoded_bytes=totals.decoded_bytes,
            dropped=dict(sorted(dropped.items())),
            modified=dict(sorted(modified.items())),
            cleaning=Cleaning(
                preset=filters.preset,
                files_by_preset=dict(sorted(files_by_preset.items())),
                steps={preset: filters.steps_for(preset) for preset in sorted(files_by_preset) if preset != "steps"}
                | ({"steps": filters.steps} if filters.steps is not None else {}),
                languages=filters.languages,
                min_language_score=filters.min_language_score,
                rule_settings=dict(sorted(filters.rule_settings.items())),
                decontaminated_against=Decontaminated(
                    tasks=filters.decontaminate_tasks,
                    n=filters.decontamination_ngram,
                    items=rules.eval_ngrams.items if rules.eval_ngrams else None,
                    items_too_short=rules.eval_ngrams.too_short if rules.eval_ngrams else None,
                ),
            ),
            dropped_examples=dict(sorted(examples.items())),
            duplicates_of_earlier_batches=dedup.earlier_duplicates,
            dedup_index=DedupIndexSummary(
                segment=SegmentSummary(**segment.to_json()),
                earlier_documents=dedup.history_documents,
                earlier_bytes=dedup.history_bytes,
            ),
            deduplicated_against=tuple(EarlierBatch(batch=name, uri=corpus.uri) for name, corpus in earlier),
            near_dedup=NearDedupSettings(
                enabled=filters.near_dedup,
                threshold=filters.near_dedup_threshold,
                num_perm=NUM_PERM,
                bands=BANDS,
                shingle_words=SHINGLE,
                library="rensa",
            ),
            shards=tuple(shards),
            quarantine=tuple(quarantine_files),
            files=tuple(sorted([*file_entries, *skipped], key=lambda f: f.uri)),
        )
        crash_point("corpus_before_manifest")  # the crash tests: every part written, no manifest yet
        write_manifest(out, manifest.model_dump(mode="json"))
        return manifest


def cleaning_rules(filters: FilterConfig) -> Rules:
    """What the cleaning steps need, checked: the language codes against the model's, the
    decontamination tasks loaded from the datasets cache (a task that is not there fails by name)."""
    presets = ("code", "minimal") if filters.preset == "auto" else (filters.preset,)  # what preset_for can give
    uses = {step for preset in presets for step in filters.steps_for(preset)}
    if "language" in uses:
        check_languages(filters.languages)
    eval_ngrams = None
    if filters.decontaminate_tasks and "decontamination" in uses:
        eval_ngrams = EvalNgrams.of(harness_item_texts(filters.decontaminate_tasks), filters.decontamination_ngram)
    rules = Rules(
        min_chars=filters.min_chars,
        max_chars=filters.max_chars,
        min_printable_fraction=filters.min_printable_fraction,
        languages=filters.languages,
        min_language_score=filters.min_language_score,
        eval_ngrams=eval_ngrams,
    )
    return tuned_rules(rules, filters.rule_settings)


def check_output_folder(out: Storage, cfg: CorpusConfig, storage_options: dict | None = None) -> None:
    """Refuse, before reading anything, an output that would mix with other files: an existing file,
    a folder that already holds something (a second run's manifest beside the first run's shards),
    or a folder inside the source that a later build would read as input."""
    if out.fs.isfile(out.path):
        raise CorpusSourceError(f"output folder {out.uri} is an existing file; give a folder that is new or empty")
    if out.listdir():
        raise CorpusSourceError(f"output folder {out.uri} is not empty; give a new or empty folder (each build writes its own)")
    source = Storage(cfg.source_uri, **(storage_options or {}))
    if type(source.fs) is not type(out.fs):
        return
    inner, outer = (os.path.realpath(out.path), os.path.realpath(source.path)) if out.is_local else (out.path, source.path)
    if not (inner.rstrip("/") + "/").startswith(outer.rstrip("/") + "/"):
        return
    rel = inner[len(outer.rstrip("/")) + 1 :]
    if cfg.include_hidden or not any(is_hidden_or_in_flight(part) for part in rel.split("/")):
        raise CorpusSourceError(f"output folder {out.uri} is inside the source {cfg.source_uri}: the next build would read its own output")


def _worker_count(cfg: CorpusConfig, listing: SourceListing) -> int:
    if cfg.workers:  # never more than the cores: cleaning is CPU-bound, more processes only take memory
        return max(1, min(cfg.workers, len(listing.files), os.cpu_count() or 1))
    if sum(f.size for f in listing.files) < _INLINE_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, len(listing.files)))


def _cleaned(listing: SourceListing, opts: CleanOptions, spool: str, workers: int) -> Iterator[tuple[int, FileResult]]:
    """(file index, result) in file order. With several workers, files are cleaned ahead of the merge,
    at most `2 x workers` files ahead so the spool stays bounded."""
    if workers <= 1:
        for index, file in enumerate(listing.files):
            yield index, _checked(clean_file(file, index, opts, spool, listing.fs))
        return
    ctx = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads (Dagster, pyarrow)
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=worker_main, args=(tasks, results, opts, spool), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        submitted, ready = 0, {}
        window = 2 * workers
        for index in range(len(listing.files)):
            while submitted < min(len(listing.files), index + window):
                tasks.put((submitted, listing.files[submitted]))
                submitted += 1
            while index not in ready:
                try:
                    result = results.get(timeout=5)
                except queue.Empty:
                    dead = [p for p in procs if not p.is_alive()]
                    if dead:
                        raise RuntimeError(
                            f"a corpus worker process died (exit code {dead[0].exitcode}) while cleaning "
                            f"{listing.files[index].uri} or a file after it"
                        ) from None
                    continue
                ready[result.index] = result
            yield index, _checked(ready.pop(index))
    finally:
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


def _on_cluster(executor: str, address: str) -> contextlib.AbstractContextManager:
    """This process as the Ray cluster's driver for the build (executor 'ray'), else nothing."""
    if executor != "ray":
        return contextlib.nullcontext()
    from llm_pipeline.ray_cluster import connected

    return connected(address)


def _keys_on(executor: str) -> Callable[..., Keys]:
    """Where the dedup index's keys live: this process, or one Ray worker per key range of the cluster."""
    if executor != "ray":
        return KeyIndex
    from llm_pipeline.corpus.dedup.on_ray import RayKeyIndex, key_ranges
    from llm_pipeline.ray_cluster import cluster_cpus

    return functools.partial(RayKeyIndex, ranges=key_ranges(cluster_cpus()))


def _cleaned_on_ray(listing: SourceListing, opts: CleanOptions, spool: str) -> Iterator[tuple[int, FileResult]]:
    """As `_cleaned`, the files in consecutive chunks, each chunk a Ray task on whichever node has a core
    free (this process is the cluster's driver); their spool files come back through the object store into
    this process's spool, where the merge reads them as a local worker's. Every node must reach the source URI."""
    from llm_pipeline.ray_cluster import cluster_cpus, ordered_map

    cpus = max(1, cluster_cpus())
    tasks = ((chunk, opts) for chunk in _chunks(listing, cpus))
    for results in ordered_map(clean_files_elsewhere, tasks, window=2 * cpus):
        for result, spooled in results:
            for name, data in spooled.items():
                with open(os.path.join(spool, name), "wb") as f:
                    f.write(data)
            yield result.index, _checked(result)


def _chunks(listing: SourceListing, cpus: int) -> Iterator[list[tuple[int, SourceFile]]]:
    """Consecutive files in chunks of about a quarter of an even share per CPU (1-64 MB, at most 256
    files): few enough tasks that scheduling does not dominate small files, enough to keep every
    core busy and the merge fed in order."""
    target = min(64 << 20, max(1 << 20, sum(f.size for f in listing.files) // (4 * cpus)))
    chunk: list[tuple[int, SourceFile]] = []
    size = 0
    for index, file in enumerate(listing.files):
        chunk.append((index, file))
        size += file.size
        if size >= target or len(chunk) == 256:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _checked(result: FileResult) -> FileResult:
    if result.error:
        raise RuntimeError(f"corpus build failed on {result.error}")
    return result


def _merge_file(
    spool: str, result: FileResult, file_uri: str, dedup: DedupIndex, docs: ParquetShards, quarantine: ParquetShards, content_cap: int
) -> _Kept:
    """Dedup one file's candidates against everything before them; move its rows to the output."""
    kept = _Kept()
    # read, not memory-mapped: a mapped spool's pages count as this process's memory until it is closed,
    # and one file's spool can be far larger than the memory the build should use
    with pa.OSFile(candidates_path(spool, result.index)) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            keep, drops = dedup.decide(batch.column("id").to_pylist(), _signatures(batch) if dedup.threshold is not None else None)
            chosen = batch.filter(pa.array(keep)).select(DOCUMENT_SCHEMA.names)
            if chosen.num_rows:
                table = pa.Table.from_batches([chosen]).cast(DOCUMENT_SCHEMA)
                docs.append(table)
                kept.documents += table.num_rows
                kept.text_bytes += payload_bytes(table.select(["text"]))
            if drops:
                texts, sources, locations = batch.column("text"), batch.column("source"), batch.column("location")
                rows = []
                for row, reason, detail in drops:
                    content = texts[row].as_py().encode("utf-8")
                    rows.append(
                        {
                            "source": file_uri,
                            "location": locations[row].as_py(),
                            "reason": reason,
                            "detail": detail,
                            "content": content[:content_cap],
                            "content_bytes": len(content),
                        }
                    )
                    result.dropped[reason] = result.dropped.get(reason, 0) + 1
                    result.examples.setdefault(reason, f"{sources[row].as_py()}: {detail}")
                quarantine.append(pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA))
    with pa.OSFile(quarantine_path(spool, result.index)) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            quarantine.append(pa.Table.from_batches([reader.get_batch(i)]))
    os.remove(candidates_path(spool, result.index))
    os.remove(quarantine_path(spool, result.index))
    return kept


def _signatures(batch: pa.RecordBatch) -> np.ndarray:
    column = batch.column("signature")
    flat = np.frombuffer(column.buffers()[1], dtype=np.uint32, count=len(batch) * NUM_PERM, offset=column.offset * NUM_PERM * 4)
    return flat.reshape(len(batch), NUM_PERM)


def iter_documents(corpus: Storage, batch_size: int = 1024, columns=("id", "text")) -> Iterator[pa.RecordBatch]:
    """Stream the corpus's documents in bounded batches, in manifest order."""
    for shard in read_corpus_manifest(corpus).shards:
        with corpus.open_read(shard.name) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=list(columns))
