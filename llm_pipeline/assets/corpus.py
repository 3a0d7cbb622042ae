import dagster as dg

from llm_pipeline.assets.configs import RawCorpusConfig, validate_run_config
from llm_pipeline.corpus.build import MANIFEST, CorpusSourceError, build_corpus
from llm_pipeline.resources import StorageResource


@dg.asset(group_name="llm_pipeline", kinds={"parquet"}, description="Cleaned, deduplicated documents as Parquet.")
def raw_corpus(context: dg.AssetExecutionContext, config: RawCorpusConfig, storage: StorageResource) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    cfg = config.to_library()
    out = storage.stage_folder("raw_corpus", context.run_id)
    try:
        manifest = build_corpus(cfg, out, storage.at(cfg.source_uri).storage_options)
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
            "files_read": manifest["files_read"],
            "documents_dropped": sum(manifest["dropped"].values()),
            "dropped_by_reason": dg.MetadataValue.json(manifest["dropped"]),
            "shards": len(manifest["shards"]),
        },
    )
