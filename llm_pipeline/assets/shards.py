import dagster as dg

from llm_pipeline.assets.configs import TokenizedShardsConfig, validate_run_config
from llm_pipeline.assets.metadata import stage_metadata
from llm_pipeline.assets.partitions import corpus_batches
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.assets.tokenizer import tokenizer_json
from llm_pipeline.contracts import CorpusRef, ShardSetRef, TokenizerRef
from llm_pipeline.resources import RayClusterResource, StorageResource
from llm_pipeline.storage.manifests import MANIFEST
from llm_pipeline.tokenize.bpe import load_tokenizer
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import write_shards


@dg.asset(
    group_name="llm_pipeline",
    kinds={"parquet"},
    partitions_def=corpus_batches,
    # Each batch is tokenized once when it arrives, and every batch again when the tokenizer is
    # materialized anew (the backfill a new tokenizer needs; the same tokenizer again gives
    # byte-identical shards, which the retraining sensor does not count as new data).
    automation_condition=dg.AutomationCondition.eager(),
    description="One batch's train/val token shards with a sha256 manifest naming the tokenizer.",
)
@redacted_step
def tokenized_shards(
    context: dg.AssetExecutionContext,
    config: TokenizedShardsConfig,
    storage: StorageResource,
    ray_cluster: RayClusterResource,
    raw_corpus: CorpusRef,
    tokenizer: TokenizerRef,
) -> dg.Output[ShardSetRef]:
    validate_run_config(context.run_config)
    batch = context.partition_key
    shard_cfg = config.to_library()
    ray_address = ray_cluster.driver(f"tokenized_shards[{batch}]") if shard_cfg.executor == "ray" else ""
    tok = load_tokenizer(tokenizer_json(storage, tokenizer))
    encoder = DocumentEncoder(tok, tokenizer.engine)
    out = storage.stage_folder("tokenized_shards", context.run_id, batch)
    manifest = write_shards(
        storage.at(raw_corpus.uri), out, encoder, tokenizer.vocab_size, tokenizer.sha256, shard_cfg, ray_address=ray_address
    )
    value = ShardSetRef(
        uri=out.uri,
        batch=batch,
        manifest_sha256=out.sha256(MANIFEST),
        tokenizer_sha256=tokenizer.sha256,
        train_tokens=manifest.splits["train"].tokens,
        val_tokens=manifest.splits["val"].tokens,
        corpus_uri=raw_corpus.uri,
        corpus_manifest_sha256=raw_corpus.manifest_sha256,
    )
    return dg.Output(
        value,
        data_version=dg.DataVersion(value.manifest_sha256),
        metadata={
            **stage_metadata(value),
            "train_documents": manifest.splits["train"].documents,
            "val_documents": manifest.splits["val"].documents,
            "shards": len(manifest.shards),
            "token_dtype": manifest.dtype,
            "encoder_engine": manifest.encoder_engine,
            # training documents left out so the contamination gate passes on this batch's own validation split
            "dropped_as_eval_overlap": manifest.dropped_as_eval_overlap(),
        },
    )
