import dagster as dg

from llm_pipeline import __version__
from llm_pipeline.assets.configs import PublishedModelConfig, validate_run_config
from llm_pipeline.assets.metadata import significant, stage_metadata, table
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.assets.tokenizer import tokenizer_json
from llm_pipeline.assets.tracker_run import training_tracker
from llm_pipeline.contracts import CheckpointRef, EvalReport, PublishedModelRef, TokenizerRef
from llm_pipeline.publish.export import publish
from llm_pipeline.resources import StorageResource
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.tracking import MlflowTracker


@dg.asset(
    group_name="llm_pipeline",
    kinds={"huggingface", "safetensors"},
    description="A versioned Hugging Face-format model folder in the registry; `latest` moves last.",
)
@redacted_step
def published_model(
    context: dg.AssetExecutionContext,
    config: PublishedModelConfig,
    storage: StorageResource,
    eval_metrics: EvalReport,
    trained_checkpoint: CheckpointRef,
    tokenizer: TokenizerRef,
) -> dg.Output[PublishedModelRef]:
    validate_run_config(context.run_config)
    # The model published is always the one evaluated, with the tokenizer it was trained with.
    if eval_metrics.checkpoint_uri != trained_checkpoint.final_uri:
        raise dg.Failure(
            description=f"published_model: eval_metrics evaluated {eval_metrics.checkpoint_uri}, not the latest "
            f"trained_checkpoint {trained_checkpoint.final_uri}: materialize eval_metrics (its checks gate publishing) first",
            allow_retries=False,
        )
    mismatch = trained_checkpoint.tokenizer_mismatch(tokenizer)
    if mismatch:
        raise dg.Failure(description=f"published_model: {mismatch}: train and evaluate again before publishing", allow_retries=False)
    registry = storage.root().child("registry")
    data = trained_checkpoint.data
    lineage = {
        "corpus_batches": ", ".join(d.batch for d in data),
        **{
            f"batch {d.batch}": f"corpus {d.corpus_uri} (manifest sha256 {d.corpus_manifest_sha256}), "
            f"shards {d.uri} (manifest sha256 {d.manifest_sha256})"
            for d in data
        },
        "tokenizer_sha256": tokenizer.sha256,
        "initialised_from": trained_checkpoint.init_from or "scratch",
        "checkpoint": f"{trained_checkpoint.run_uri} @ {trained_checkpoint.checkpoint}"
        + (" (the best validation loss: keep_best)" if trained_checkpoint.train_config.keep_best else ""),
        "checkpoint_step": trained_checkpoint.steps,
        "dagster_run_id": context.run_id,
        "code_version": f"llm-pipeline {__version__}",
    }
    manifest = publish(
        registry,
        config.model_name,
        storage.at(trained_checkpoint.final_uri),
        tokenizer_json(storage, tokenizer),
        tokenizer.eos_id,
        eval_metrics.headline(),
        lineage,
        trained_checkpoint.train_config.model_dump(mode="json"),
        eval_metrics.harness,
        eval_metrics.contamination,
        trained_checkpoint.mixture,
    )
    value = PublishedModelRef(uri=manifest.uri, name=config.model_name, version=manifest.version, registry=registry.uri)
    return dg.Output(
        value,
        metadata={
            **_registered(context, storage, trained_checkpoint, config.model_name, storage.at(manifest.uri)),
            **stage_metadata(value),
            "files": table(
                [{"file": name, "bytes": f.bytes, "sha256": f.sha256} for name, f in manifest.files.items()],
                {"file": "string", "bytes": "int", "sha256": "string"},
            ),
            **{k: significant(v) for k, v in eval_metrics.headline().items() if k != "tokens_evaluated"},
            "tokens_evaluated": eval_metrics.tokens_evaluated,
        },
    )


def _registered(context: dg.AssetExecutionContext, storage: StorageResource, checkpoint: CheckpointRef, name: str, folder: Storage) -> dict:
    """With the MLflow tracker, a version of registered model `name` in its Model Registry, pointing at
    the published folder; its number as metadata. A registry that refuses it costs a warning."""
    if checkpoint.train_config.tracker != "mlflow":
        return {}
    tracker = training_tracker(context, storage, checkpoint).tracker
    if not isinstance(tracker, MlflowTracker):  # the training's tracker run could not be reopened (warned)
        return {}
    try:
        version = tracker.register_model(name, folder)
    except Exception as e:  # noqa: BLE001 - the MLflow client's errors have many types; publishing does not depend on it
        context.log.warning(f"the MLflow Model Registry did not take {name}: {type(e).__name__}: {e}")
        return {}
    context.log.info(f"registered {name} version {version} in the MLflow Model Registry")
    return {"mlflow_registered_model": name, "mlflow_model_version": version}
