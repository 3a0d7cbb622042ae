import dagster as dg

from llm_pipeline import __version__
from llm_pipeline.assets.configs import PublishedModelConfig, validate_run_config
from llm_pipeline.assets.metadata import significant, table
from llm_pipeline.assets.tokenizer import tokenizer_json
from llm_pipeline.publish.export import publish
from llm_pipeline.resources import StorageResource

_METRICS = ("loss", "perplexity", "bits_per_byte", "tokens_evaluated")


@dg.asset(
    group_name="llm_pipeline",
    kinds={"huggingface", "safetensors"},
    description="A versioned Hugging Face-format model folder in the registry; `latest` moves last.",
)
def published_model(
    context: dg.AssetExecutionContext,
    config: PublishedModelConfig,
    storage: StorageResource,
    eval_metrics: dict,
) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    # The checkpoint these numbers are about, and its tokenizer, travel in the value: the model
    # published is always the one evaluated.
    trained_checkpoint = eval_metrics["trained_checkpoint"]
    tokenizer = trained_checkpoint["tokenizer"]
    registry = storage.root().child("registry")
    data = trained_checkpoint["data"]
    lineage = {
        "corpus_batches": ", ".join(d["batch"] for d in data),
        **{
            f"batch {d['batch']}": f"corpus {d['corpus_uri']} (manifest sha256 {d['corpus_manifest_sha256']}), "
            f"shards {d['uri']} (manifest sha256 {d['manifest_sha256']})"
            for d in data
        },
        "tokenizer_sha256": tokenizer["sha256"],
        "initialised_from": trained_checkpoint["init_from"] or "scratch",
        "checkpoint": f"{trained_checkpoint['run_uri']} @ {trained_checkpoint['checkpoint']}",
        "checkpoint_step": trained_checkpoint["steps"],
        "dagster_run_id": context.run_id,
        "code_version": f"llm-pipeline {__version__}",
    }
    manifest = publish(
        registry,
        config.model_name,
        storage.at(trained_checkpoint["final_uri"]),
        tokenizer_json(storage, tokenizer),
        tokenizer["eos_id"],
        {k: eval_metrics[k] for k in _METRICS},
        lineage,
        trained_checkpoint["train_config"],
        {"harness": eval_metrics["harness"], "contamination": eval_metrics["contamination"]},
        trained_checkpoint["mixture"],
    )
    value = {"uri": manifest["uri"], "name": config.model_name, "version": manifest["version"], "registry": registry.uri}
    return dg.Output(
        value,
        metadata={
            "uri": dg.MetadataValue.path(manifest["uri"]),
            "version": manifest["version"],
            "files": table(
                [{"file": name, "bytes": f["bytes"], "sha256": f["sha256"]} for name, f in manifest["files"].items()],
                {"file": "string", "bytes": "int", "sha256": "string"},
            ),
            **{k: significant(eval_metrics[k]) for k in ("loss", "perplexity", "bits_per_byte")},
            "tokens_evaluated": eval_metrics["tokens_evaluated"],
        },
    )
