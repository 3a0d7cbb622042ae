import math

import dagster as dg

from llm_pipeline.assets.configs import EvalMetricsConfig, validate_run_config
from llm_pipeline.assets.metadata import significant
from llm_pipeline.evaluate.metrics import evaluate, evaluate_published
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.publish.verify import verify
from llm_pipeline.assets.tokenizer import tokenizer_json
from llm_pipeline.resources import StorageResource
from llm_pipeline.train.data import load_tokens

_ERROR = dg.AssetCheckSeverity.ERROR


def _baseline(context, config: EvalMetricsConfig, storage: StorageResource, val_tokens, tok_json: str, eos_id: int) -> dict | None:
    """The currently published model's numbers on this run's held-out split, or None if there is none."""
    if not config.compare_with:
        return None
    try:
        folder = resolve_version(storage.root().child("registry"), config.compare_with)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise dg.Failure(description=f"eval_metrics: cannot use the published baseline: {e}") from None
    problems = verify(folder)  # nothing is loaded from a baseline that does not match its manifest
    if problems:
        raise dg.Failure(description=f"eval_metrics: the published baseline {folder.uri} fails verification: {'; '.join(problems)}")
    result = evaluate_published(folder, val_tokens, tok_json, eos_id, config.to_library())
    result["version"] = folder.name
    context.log.info(f"published baseline {config.compare_with}/{result['version']}: bits per byte {result['bits_per_byte']:.4f}")
    return result


@dg.asset(group_name="llm_pipeline", kinds={"pytorch"},
          description="Held-out loss, perplexity, bits per byte (over the trained batches' val splits) and samples.")
def eval_metrics(
    context: dg.AssetExecutionContext,
    config: EvalMetricsConfig,
    storage: StorageResource,
    trained_checkpoint: dict,
) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    tokenizer = trained_checkpoint["tokenizer"]
    # The held-out split of exactly the batches the model was trained on.
    val_tokens, _ = load_tokens([storage.at(d["uri"]) for d in trained_checkpoint["data"]], "val", tokenizer["sha256"])
    tok_json = tokenizer_json(storage, tokenizer)
    metrics = evaluate(storage.at(trained_checkpoint["final_uri"]), val_tokens, tok_json, tokenizer["eos_id"], config.to_library())
    metrics["uniform_loss"] = math.log(tokenizer["vocab_size"])
    metrics["checkpoint"] = trained_checkpoint["checkpoint"]
    metrics["trained_checkpoint"] = trained_checkpoint  # what published_model publishes
    metrics["gates"] = {
        "max_loss": config.loss_threshold(tokenizer["vocab_size"]),
        "max_perplexity": config.max_perplexity,
        "regression_tolerance": config.regression_tolerance,
    }
    baseline = _baseline(context, config, storage, val_tokens, tok_json, tokenizer["eos_id"])
    metrics["baseline"] = baseline
    metadata = {
        "loss": significant(metrics["loss"]),
        "perplexity": significant(metrics["perplexity"]),
        "bits_per_byte": significant(metrics["bits_per_byte"]),
        "tokens_evaluated": metrics["tokens_evaluated"],
        "loss_vs_uniform": significant(metrics["loss"] / metrics["uniform_loss"], 4),
        "samples": dg.MetadataValue.md(
            "\n\n".join(f"**{s['prompt']!r}** →\n```\n{s['prompt']}{s['completion']}\n```" for s in metrics["samples"])
        ),
    }
    if baseline:
        metadata["baseline_version"] = baseline["version"]
        metadata["bits_per_byte_delta"] = significant(metrics["bits_per_byte"] - baseline["bits_per_byte"], 4)
        if baseline["same_tokenizer"]:
            metadata["loss_delta"] = significant(metrics["loss"] - baseline["loss"], 4)
    return dg.Output(metrics, metadata=metadata)


@dg.asset_check(asset=eval_metrics, blocking=True, description="Eval loss is finite and at most max_loss.")
def eval_loss_within_threshold(eval_metrics: dict) -> dg.AssetCheckResult:
    loss, limit = eval_metrics["loss"], eval_metrics["gates"]["max_loss"]
    passed = math.isfinite(loss) and loss <= limit
    return dg.AssetCheckResult(
        passed=passed,
        severity=_ERROR,
        description=f"eval loss {loss:.4f} {'<=' if passed else 'is not finite or >'} max_loss {limit:.4f}",
        metadata={"loss": loss if math.isfinite(loss) else str(loss), "max_loss": limit},
    )


@dg.asset_check(asset=eval_metrics, blocking=True, description="Perplexity is at most max_perplexity, when one is configured.")
def eval_perplexity_within_threshold(eval_metrics: dict) -> dg.AssetCheckResult:
    ppl, limit = eval_metrics["perplexity"], eval_metrics["gates"]["max_perplexity"]
    if limit is None:
        return dg.AssetCheckResult(passed=math.isfinite(ppl), severity=_ERROR,
                                   description=f"perplexity {ppl:.2f}; no max_perplexity configured")
    passed = math.isfinite(ppl) and ppl <= limit
    return dg.AssetCheckResult(
        passed=passed, severity=_ERROR,
        description=f"perplexity {ppl:.2f} {'<=' if passed else '>'} max_perplexity {limit:.2f}",
        metadata={"perplexity": ppl if math.isfinite(ppl) else str(ppl), "max_perplexity": limit},
    )


@dg.asset_check(asset=eval_metrics, blocking=True,
                description="Bits per byte no worse than the published model's, within regression_tolerance.")
def no_regression_vs_published(eval_metrics: dict) -> dg.AssetCheckResult:
    baseline = eval_metrics["baseline"]
    if baseline is None:
        return dg.AssetCheckResult(passed=True, severity=_ERROR, description="no published model to compare with")
    ours, theirs = eval_metrics["bits_per_byte"], baseline["bits_per_byte"]
    tolerance = eval_metrics["gates"]["regression_tolerance"]
    limit = theirs * (1 + tolerance)
    passed = math.isfinite(ours) and ours <= limit
    return dg.AssetCheckResult(
        passed=passed, severity=_ERROR,
        description=(f"bits per byte {ours:.4f} {'<=' if passed else '>'} {limit:.4f} "
                     f"(published {baseline['version']}: {theirs:.4f}, tolerance {tolerance:.1%})"),
        metadata={"bits_per_byte": ours, "baseline_bits_per_byte": theirs, "baseline_version": baseline["version"]},
    )
