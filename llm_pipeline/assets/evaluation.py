import math

import dagster as dg

from llm_pipeline.assets.configs import EvalMetricsConfig, validate_run_config
from llm_pipeline.evaluate.metrics import evaluate
from llm_pipeline.resources import StorageResource
from llm_pipeline.tokenize.shards import load_split_tokens


@dg.asset(group_name="llm_pipeline", kinds={"pytorch"}, description="Held-out loss, perplexity, bits per byte and samples.")
def eval_metrics(
    context: dg.AssetExecutionContext,
    config: EvalMetricsConfig,
    storage: StorageResource,
    trained_checkpoint: dict,
    tokenized_shards: dict,
    tokenizer: dict,
) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    val_tokens, _ = load_split_tokens(storage.at(tokenized_shards["uri"]), "val", tokenizer["sha256"])
    tok_json = storage.at(tokenizer["uri"]).read_bytes("tokenizer.json").decode()
    metrics = evaluate(storage.at(trained_checkpoint["final_uri"]), val_tokens, tok_json, tokenizer["eos_id"], config.to_library())
    metrics["max_loss"] = config.loss_threshold(tokenizer["vocab_size"])
    metrics["uniform_loss"] = math.log(tokenizer["vocab_size"])
    metrics["checkpoint"] = trained_checkpoint["checkpoint"]
    samples_md = "\n\n".join(f"**{s['prompt']!r}** →\n```\n{s['prompt']}{s['completion']}\n```" for s in metrics["samples"])
    return dg.Output(
        metrics,
        metadata={
            "loss": metrics["loss"],
            "perplexity": metrics["perplexity"],
            "bits_per_byte": metrics["bits_per_byte"],
            "tokens_evaluated": metrics["tokens_evaluated"],
            "loss_vs_uniform": metrics["loss"] / metrics["uniform_loss"],
            "samples": dg.MetadataValue.md(samples_md),
        },
    )


@dg.asset_check(asset=eval_metrics, blocking=True, description="Eval loss is finite and at most the configured maximum.")
def eval_loss_within_threshold(eval_metrics: dict) -> dg.AssetCheckResult:
    loss, limit = eval_metrics["loss"], eval_metrics["max_loss"]
    passed = math.isfinite(loss) and loss <= limit
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"eval loss {loss:.4f} {'<=' if passed else 'is not finite or >'} max_loss {limit:.4f}",
        metadata={"loss": loss if math.isfinite(loss) else str(loss), "max_loss": limit},
    )
