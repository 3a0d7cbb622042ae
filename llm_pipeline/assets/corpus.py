import time

import dagster as dg

from llm_pipeline.assets.configs import RawCorpusConfig, validate_run_config
from llm_pipeline.assets.metadata import stage_metadata, table
from llm_pipeline.assets.partitions import batch_keys, corpus_batches
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.contracts import CorpusRef
from llm_pipeline.corpus.batches import BUILTIN_BATCH, read_batch
from llm_pipeline.corpus.build import BuildStats, CorpusConfig, CorpusSourceError, Progress, build_corpus
from llm_pipeline.corpus.drop_shares import drop_shares, moved_shares
from llm_pipeline.corpus.manifest import CorpusManifest, read_corpus_manifest
from llm_pipeline.resources import RayClusterResource, StorageResource, load_values
from llm_pipeline.storage.manifests import MANIFEST, ManifestError

_LOG_EVERY_S = 15.0


def _counts_table(counts: dict[str, int], what: str) -> dg.MetadataValue:
    rows = [{"reason": reason, what: n} for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return table(rows, {"reason": "string", what: "int"})


DROP_SHARES_CHECK = "drop_shares_steady"


def _drop_shares_check(
    manifest: CorpusManifest, earlier: list[tuple[str, CorpusRef]], storage: StorageResource, points: float
) -> dg.AssetCheckResult:
    """This batch's drop shares against the newest earlier batch's (warn when one moved more than `points`)."""
    if not earlier:
        return dg.AssetCheckResult(check_name=DROP_SHARES_CHECK, passed=True, description="no earlier batch to compare with")
    batch, ref = earlier[-1]
    try:
        previous = read_corpus_manifest(storage.at(ref.uri))
    except (ManifestError, OSError, ValueError) as e:
        return dg.AssetCheckResult(
            check_name=DROP_SHARES_CHECK, passed=False, severity=dg.AssetCheckSeverity.WARN, description=f"batch {batch}: {e}"
        )
    shares_now = drop_shares(manifest.records, manifest.dropped)
    moved = moved_shares(drop_shares(previous.records, previous.dropped), shares_now, points)
    shares = {reason: round(100 * share, 2) for reason, share in shares_now.items()}
    metadata: dict[str, dg.MetadataValue] = {
        "compared_with_batch": dg.MetadataValue.text(batch),
        "drop_share_points": dg.MetadataValue.json(shares),
    }
    if not moved:
        return dg.AssetCheckResult(check_name=DROP_SHARES_CHECK, passed=True, metadata=metadata)
    described = "; ".join(f"{reason}: {100 * a:.1f}% -> {100 * b:.1f}% of records" for reason, a, b in moved)
    return dg.AssetCheckResult(
        check_name=DROP_SHARES_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"drop shares moved more than {points:g} points since batch {batch}: {described}",
        metadata=metadata,
    )


def _batch_config(config: RawCorpusConfig, storage: StorageResource, batch: str) -> CorpusConfig:
    """`builtin` reads the configured source (the built-in corpus by default); a landed batch reads
    exactly the files its record lists, with the configured format and filters."""
    cfg = config.to_library()
    if batch == BUILTIN_BATCH:
        return cfg
    if config.source_uri:
        raise dg.Failure(
            description=f"raw_corpus: batch {batch!r} is a landed batch, its files are fixed by its record; "
            f"source_uri applies to the '{BUILTIN_BATCH}' batch only"
        )
    try:
        record = read_batch(storage.root(), batch)
    except (OSError, ValueError) as e:
        raise dg.Failure(description=f"raw_corpus: {e}") from None
    return cfg.replaced(source_uri=record["source_uri"], glob="**/*", exclude=(), files=dict(record["files"]), max_bytes=None)


@dg.asset(
    group_name="llm_pipeline",
    kinds={"parquet"},
    partitions_def=corpus_batches,
    automation_condition=dg.AutomationCondition.eager(),
    description="Cleaned documents of one corpus batch as Parquet, deduplicated within the batch and against every earlier batch.",
    check_specs=[
        dg.AssetCheckSpec(
            DROP_SHARES_CHECK,
            asset="raw_corpus",
            description="No drop reason's share of the records moved more than drop_share_alert_points from the previous batch's (warns)",
        )
    ],
)
@redacted_step
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, storage: StorageResource, ray_cluster: RayClusterResource):
    validate_run_config(context.run_config)
    batch = context.partition_key
    cfg = _batch_config(config, storage, batch)
    ray_address = ray_cluster.driver(f"raw_corpus[{batch}]") if cfg.executor == "ray" else ""
    keys = batch_keys(context.instance)
    earlier_keys = keys[: keys.index(batch)] if batch in keys else keys
    # Its own earlier partitions: no partition mapping says "every batch before this one".
    earlier_values = load_values(context.instance, storage, context.asset_key, earlier_keys, dict[str, CorpusRef])
    earlier = [(key, storage.at(value.uri)) for key, value in earlier_values.items()]
    out = storage.stage_folder("raw_corpus", context.run_id, batch)
    last_log = [time.monotonic()]

    def log_progress(p: Progress) -> None:
        if time.monotonic() - last_log[0] >= _LOG_EVERY_S or p.files_done == p.files_total:
            last_log[0] = time.monotonic()
            context.log.info(
                f"raw_corpus[{batch}]: {p.files_done}/{p.files_total} files, {p.documents} documents kept, "
                f"{p.decoded_bytes / 1e6 / max(p.seconds, 1e-9):.1f} MB/s"
            )

    stats = BuildStats()
    try:
        manifest = build_corpus(
            cfg,
            out,
            storage.at(cfg.source_uri).storage_options,
            progress=log_progress,
            earlier=earlier,
            ray_address=ray_address,
            stats=stats,
            dedup_compactions=storage.root().child("dedup_index"),
        )
    except (CorpusSourceError, OSError, ValueError) as e:
        raise dg.Failure(description=f"raw_corpus[{batch}]: {e}") from None
    not_as_landed = manifest.not_as_landed()
    if not_as_landed:
        context.log.warning(
            f"raw_corpus[{batch}]: {len(not_as_landed)} files of the batch are missing or changed since they "
            f"landed and were not read: {', '.join(not_as_landed[:10])}" + (" ..." if len(not_as_landed) > 10 else "")
        )
    value = CorpusRef(
        uri=out.uri, batch=batch, manifest_sha256=out.sha256(MANIFEST), documents=manifest.documents, text_bytes=manifest.text_bytes
    )
    cleaning, index = manifest.cleaning, manifest.dedup_index
    yield dg.Output(
        value,
        metadata={
            **stage_metadata(value),
            "source_uri": cfg.source_uri,
            "files_matched": manifest.files_matched,
            "files_read": manifest.files_read,
            "files_skipped": manifest.files_skipped,
            "records": manifest.records,
            "documents_dropped": sum(manifest.dropped.values()),
            "duplicates_of_earlier_batches": manifest.duplicates_of_earlier_batches,
            "deduplicated_against_batches": len(earlier),
            "dedup_index_documents": index.earlier_documents + index.segment.documents,
            "dedup_index_bytes": index.earlier_bytes + index.segment.bytes,
            "dedup_lookup_seconds": round(stats.dedup_lookup_seconds, 3),
            "dedup_earlier_runs": stats.dedup_earlier_runs,
            "dropped_by_reason": _counts_table(manifest.dropped, "documents"),
            "modified_by_step": _counts_table(manifest.modified, "documents"),
            "cleaning_preset": cleaning.preset,
            "cleaning_steps": dg.MetadataValue.json({preset: list(steps) for preset, steps in cleaning.steps.items()}),
            "files_by_preset": dg.MetadataValue.json(cleaning.files_by_preset),
            "skipped_by_reason": _counts_table(manifest.skipped, "files"),
            "shards": len(manifest.shards),
        },
    )
    yield _drop_shares_check(manifest, list(earlier_values.items()), storage, config.drop_share_alert_points)
