import math
import tempfile
from typing import TYPE_CHECKING

import dagster as dg

from llm_pipeline.assets.configs import EvalMetricsConfig, validate_run_config
from llm_pipeline.assets.metadata import significant, stage_metadata
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.assets.tokenizer import tokenizer_json
from llm_pipeline.assets.tracker_run import training_tracker
from llm_pipeline.contracts import CheckpointRef, EvalReport, Gates, TokenizerRef
from llm_pipeline.evaluate.local_tasks import task_files
from llm_pipeline.evaluate.results import Baseline, ContaminationReport, HarnessResult, metric_key, split_metric_key
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.publish.verify import verify
from llm_pipeline.resources import StorageResource

# The evaluation library (torch, the harness) is imported in the run that evaluates, not by every
# process that loads these definitions: the webserver's and daemon's code servers, each data run.
if TYPE_CHECKING:
    from llm_pipeline.evaluate.metrics import HeldOut

_ERROR = dg.AssetCheckSeverity.ERROR


def _baseline(context, config: EvalMetricsConfig, storage: StorageResource, held_out: "HeldOut", tok_json: str) -> Baseline | None:
    """The currently published model's numbers on this run's held-out documents, or None if there is none."""
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
    from llm_pipeline.evaluate.metrics import evaluate_published

    baseline = evaluate_published(folder, held_out, tok_json, config.to_library())
    context.log.info(f"published baseline {config.compare_with}/{baseline.version}: bits per byte {baseline.bits_per_byte:.4f}")
    return baseline


def _harness_metadata(harness: HarnessResult | None) -> dict:
    """Each task's metrics as numbers (Dagster plots them across runs): `task/metric`, `task/metric_stderr`."""
    metadata = {}
    for task, metric, score in harness.scores() if harness else ():
        metadata[metric_key(task, metric)] = significant(score.value)
        if score.stderr is not None:
            metadata[f"{metric_key(task, metric)}_stderr"] = significant(score.stderr, 3)
    return metadata


def _tracked_figures(report: EvalReport) -> dict[str, float]:
    """What eval_metrics adds to the training's tracker run, at its last step."""
    figures = {"eval/loss": report.loss, "eval/perplexity": report.perplexity, "eval/bits_per_byte": report.bits_per_byte}
    figures["eval/contamination"] = report.contamination.fraction
    for task, metric, score in report.harness.scores() if report.harness else ():
        figures[f"eval/{metric_key(task, metric)}"] = score.value
    return {name: value for name, value in figures.items() if math.isfinite(value)}


def _contamination_metadata(report: ContaminationReport) -> dict:
    metadata = {"contamination": significant(report.fraction, 4)}
    for name, r in report.sets.items():
        metadata[f"contamination/{name}"] = significant(r.fraction, 4)
        metadata[f"contamination/{name}/shares_any_{report.n}gram"] = significant(r.sharing_fraction, 4)
    return metadata


@dg.asset(
    group_name="llm_pipeline",
    kinds={"pytorch"},
    description=(
        "Held-out loss, perplexity, bits per byte (over the trained batches' val splits), lm-evaluation-harness "
        "tasks, eval/train contamination and samples."
    ),
)
@redacted_step
def eval_metrics(
    context: dg.AssetExecutionContext,
    config: EvalMetricsConfig,
    storage: StorageResource,
    trained_checkpoint: CheckpointRef,
    tokenizer: TokenizerRef,
) -> dg.Output[EvalReport]:
    validate_run_config(context.run_config)
    cfg = config.to_library()
    try:
        config.check_harness_tasks()
    except ValueError as e:
        raise dg.Failure(description=f"eval_metrics config: {e}", allow_retries=False) from None
    mismatch = trained_checkpoint.tokenizer_mismatch(tokenizer)
    if mismatch:
        raise dg.Failure(
            description=f"eval_metrics: {mismatch}: train again (materialize trained_checkpoint) before evaluating", allow_retries=False
        )
    from llm_pipeline.evaluate.suite import run_suite
    from llm_pipeline.train.token_store import TokenCache, open_split

    # The held-out split of exactly the batches the model was trained on; their training split for contamination.
    # Memory-mapped from the node's token store, as training read them (verified once per node).
    shard_sets = [storage.at(d.uri) for d in trained_checkpoint.data]
    cache = TokenCache.of(trained_checkpoint.train_config)
    val_tokens, _ = open_split(shard_sets, "val", cache, tokenizer.sha256)
    train_tokens, _ = open_split(shard_sets, "train", cache, tokenizer.sha256)
    tok_json = tokenizer_json(storage, tokenizer)
    with tempfile.TemporaryDirectory() as work:
        suite = run_suite(storage.at(trained_checkpoint.final_uri), val_tokens, train_tokens.chunks, tok_json, tokenizer.eos_id, cfg, work)
    for task, reason in suite.harness_skipped.items():
        context.log.warning(f"harness task {task} left out: {reason}")
    # The local harness tasks, kept with the run: `lm_eval --include_path <this folder>` runs them again.
    tasks_folder = storage.root().child("eval_metrics", context.run_id, "harness_tasks")
    if suite.task_data:
        written = tuple(name.removesuffix(".jsonl") for name in suite.task_data)
        for name, body in {**suite.task_data, **task_files(tasks_folder.uri, tasks=written)}.items():
            tasks_folder.write_bytes(name, body.encode("utf-8"))
    baseline = _baseline(context, config, storage, suite.held_out, tok_json)
    held_out = suite.held_out_metrics
    report = EvalReport(
        checkpoint_uri=trained_checkpoint.final_uri,
        checkpoint=trained_checkpoint.checkpoint,
        loss=held_out.loss,
        perplexity=held_out.perplexity,
        bits_per_byte=held_out.bits_per_byte,
        uniform_loss=math.log(tokenizer.vocab_size),
        tokens_evaluated=held_out.tokens_evaluated,
        bytes_evaluated=held_out.bytes_evaluated,
        documents_evaluated=held_out.documents_evaluated,
        window=held_out.window,
        dtype=held_out.dtype,
        samples=suite.samples,
        harness=suite.harness,
        harness_skipped=suite.harness_skipped,
        contamination=suite.contamination,
        seconds=suite.seconds,
        gates=Gates(
            max_loss=config.loss_threshold(tokenizer.vocab_size),
            max_perplexity=config.max_perplexity,
            regression_tolerance=config.regression_tolerance,
            min_scores=dict(config.min_scores),
            max_contamination=config.max_contamination,
        ),
        baseline=baseline,
    )
    tracker = training_tracker(context, storage, trained_checkpoint)
    tracker.log_metrics(_tracked_figures(report), trained_checkpoint.steps)
    tracker.close()
    metadata = {
        **stage_metadata(report),  # dtype: of the forward passes (eval_metrics.dtype; auto: bf16 where the hardware is fast at it)
        "loss": significant(report.loss),
        "perplexity": significant(report.perplexity),
        "bits_per_byte": significant(report.bits_per_byte),
        "loss_vs_uniform": significant(report.loss / report.uniform_loss, 4),
        **_harness_metadata(report.harness),
        **({"harness_skipped": dg.MetadataValue.json(report.harness_skipped)} if report.harness_skipped else {}),
        **_contamination_metadata(report.contamination),
        **({"harness_tasks_uri": dg.MetadataValue.path(tasks_folder.uri)} if suite.task_data else {}),
        "seconds": dg.MetadataValue.json({k: round(v, 2) for k, v in report.seconds.items()}),
        "samples": dg.MetadataValue.md("\n\n".join(f"**{s.prompt!r}** →\n```\n{s.prompt}{s.completion}\n```" for s in report.samples)),
    }
    if baseline:
        metadata["baseline_version"] = baseline.version
        metadata["bits_per_byte_delta"] = significant(report.bits_per_byte - baseline.bits_per_byte, 4)
        if baseline.same_tokenizer:
            metadata["loss_delta"] = significant(report.loss - baseline.loss, 4)
    return dg.Output(report, metadata=metadata)


@dg.asset_check(asset=eval_metrics, blocking=True, description="Eval loss is finite and at most max_loss.")
def eval_loss_within_threshold(eval_metrics: EvalReport) -> dg.AssetCheckResult:
    loss, limit = eval_metrics.loss, eval_metrics.gates.max_loss
    passed = math.isfinite(loss) and loss <= limit
    return dg.AssetCheckResult(
        passed=passed,
        severity=_ERROR,
        description=f"eval loss {loss:.4f} {'<=' if passed else 'is not finite or >'} max_loss {limit:.4f}",
        metadata={"loss": loss if math.isfinite(loss) else str(loss), "max_loss": limit},
    )


@dg.asset_check(asset=eval_metrics, blocking=True, description="Perplexity is at most max_perplexity, when one is configured.")
def eval_perplexity_within_threshold(eval_metrics: EvalReport) -> dg.AssetCheckResult:
    ppl, limit = eval_metrics.perplexity, eval_metrics.gates.max_perplexity
    if limit is None:
        return dg.AssetCheckResult(
            passed=math.isfinite(ppl), severity=_ERROR, description=f"perplexity {ppl:.2f}; no max_perplexity configured"
        )
    passed = math.isfinite(ppl) and ppl <= limit
    return dg.AssetCheckResult(
        passed=passed,
        severity=_ERROR,
        description=f"perplexity {ppl:.2f} {'<=' if passed else '>'} max_perplexity {limit:.2f}",
        metadata={"perplexity": ppl if math.isfinite(ppl) else str(ppl), "max_perplexity": limit},
    )


@dg.asset_check(
    asset=eval_metrics, blocking=True, description="Bits per byte no worse than the published model's, within regression_tolerance."
)
def no_regression_vs_published(eval_metrics: EvalReport) -> dg.AssetCheckResult:
    baseline = eval_metrics.baseline
    if baseline is None:
        return dg.AssetCheckResult(passed=True, severity=_ERROR, description="no published model to compare with")
    ours, theirs = eval_metrics.bits_per_byte, baseline.bits_per_byte
    tolerance = eval_metrics.gates.regression_tolerance
    limit = theirs * (1 + tolerance)
    passed = math.isfinite(ours) and ours <= limit
    return dg.AssetCheckResult(
        passed=passed,
        severity=_ERROR,
        description=(
            f"bits per byte {ours:.4f} {'<=' if passed else '>'} {limit:.4f} "
            f"(published {baseline.version}: {theirs:.4f}, tolerance {tolerance:.1%})"
        ),
        metadata={"bits_per_byte": ours, "baseline_bits_per_byte": theirs, "baseline_version": baseline.version},
    )


@dg.asset_check(asset=eval_metrics, blocking=True, description="Each lm-evaluation-harness score named in min_scores reaches its minimum.")
def harness_scores_meet_minimums(eval_metrics: EvalReport) -> dg.AssetCheckResult:
    minimums = eval_metrics.gates.min_scores
    if not minimums:
        return dg.AssetCheckResult(passed=True, severity=_ERROR, description="no min_scores configured")
    harness = eval_metrics.harness
    lines, failed, scores = [], [], {}
    for key, minimum in sorted(minimums.items()):
        task, metric = split_metric_key(key)
        score = harness.score(task, metric) if harness else None
        value = score.value if score else None
        if value is None or not math.isfinite(value):
            failed.append(key)
            reported = ", ".join(harness.results.get(task, {})) if harness else ""
            why = eval_metrics.harness_skipped.get(task) or f"metrics of {task}: {reported or 'none'}"
            lines.append(f"{key}: no result ({why})")
            continue
        scores[key] = value
        met = value >= minimum  # a NaN minimum (however it got here) is never met
        if not met:
            failed.append(key)
        relation = ">=" if met else "<" if value < minimum else "is not >="
        lines.append(f"{key} {value:.4f} {relation} {minimum:.4f}")
    return dg.AssetCheckResult(
        passed=not failed, severity=_ERROR, description="; ".join(lines), metadata={**scores, "failed": ", ".join(failed)}
    )


@dg.asset_check(
    asset=eval_metrics,
    blocking=True,
    description="At most max_contamination of the eval documents (and of each task's items) share their n-grams with training data.",
)
def no_eval_contamination(eval_metrics: EvalReport) -> dg.AssetCheckResult:
    report, limit = eval_metrics.contamination, eval_metrics.gates.max_contamination
    if report.measured_nothing():
        # Nothing measured is not "nothing contaminated": the gate does not pass vacuously.
        return dg.AssetCheckResult(
            passed=False,
            severity=_ERROR,
            description=(
                f"no eval document is long enough for a {report.n}-gram: contamination cannot be measured; lower contamination_ngram"
            ),
            metadata={"max_contamination": limit},
        )
    worst = report.worst()
    fraction = report.fraction
    passed = fraction <= limit
    r = report.sets[worst]
    return dg.AssetCheckResult(
        passed=passed,
        severity=_ERROR,
        description=(
            f"{fraction:.1%} of {worst} contaminated ({r.contaminated} of {r.checked} with "
            f">= {report.min_overlap:.0%} of their {report.n}-grams in the training split) "
            f"{'<=' if passed else '>'} max_contamination {limit:.1%}"
        ),
        metadata={
            "contamination": fraction,
            "max_contamination": limit,
            "worst_set": worst,
            **{name: s.fraction for name, s in report.sets.items()},
        },
    )
