import time

import dagster as dg

from llm_pipeline.assets.configs import RawCorpusConfig, validate_run_config
from llm_pipeline.corpus.build import MANIFEST, CorpusSourceError, Progress, build_corpus
from llm_pipeline.resources import StorageResource

_LOG_EVERY_S = 15.0


def _counts_table(counts: dict[str, int], what: str) -> dg.MetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"reason": reason, what: n}) for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])],
        schema=dg.TableSchema(columns=[dg.TableColumn("reason", "string"), dg.TableColumn(what, "int")]),
    )


@dg.asset(group_name="llm_pipeline", kinds={"parquet"}, description="Cleaned, deduplicated documents as Parquet.")
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, storage: StorageResource) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    cfg = config.to_library()
    out = storage.stage_folder("raw_corpus", context.run_id)
    last_log = [time.monotonic()]

    def log_progress(p: Progress) -> None:
        if time.monotonic() - last_log[0] >= _LOG_EVERY_S or p.files_done == p.files_total:
            last_log[0] = time.monotonic()
            context.log.info(f"raw_corpus: {p.files_done}/{p.files_total} files, {p.documents} documents kept, "
                             f"{p.decoded_bytes / 1e6 / max(p.seconds, 1e-9):.1f} MB/s")

    try:
        manifest = build_corpus(cfg, out, storage.at(cfg.source_uri).storage_options, progress=log_progress)
    except CorpusSourceError as e:
        raise dg.Failure(description=f"raw_corpus: {e}") from None
    value = {"uri": out.uri, "manifest_sha256": out.sha256(MANIFEST), "documents": manifest["documents"],
             "text_bytes": manifest["text_bytes"]}
    return dg.Output(
        value,
        metadata={
            "uri": dg.MetadataValue.path(out.uri),
            "source_uri": cfg.source_uri,
            "documents": manifest["documents"],
            "text_bytes": manifest["text_bytes"],
            "files_matched": manifest["files_matched"],
            "files_read": manifest["files_read"],
            "files_skipped": manifest["files_skipped"],
            "records": manifest["records"],
            "documents_dropped": sum(manifest["dropped"].values()),
            "dropped_by_reason": _counts_table(manifest["dropped"], "documents"),
            "skipped_by_reason": _counts_table(manifest["skipped"], "files"),
            "shards": len(manifest["shards"]),
        },
    )
