"""`make demo`: materialize the whole graph for the corpus batch 'builtin', then print the result.

    python -m llm_pipeline.demo [--source URI] [--steps N] [--storage-root URI]

The batch reads the built-in corpus (the Python standard library's source), or your own data with
`--source`: a folder, a file or a bucket prefix, every file under it read by its name's format.

Runs go to the Dagster instance in DAGSTER_HOME, so they show up in `dagster dev` afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings

import dagster as dg

from llm_pipeline.assets.partitions import CORPUS_BATCHES
from llm_pipeline.automation import pipeline_job
from llm_pipeline.contracts import CheckpointRef, EvalReport, PublishedModelRef
from llm_pipeline.corpus.batches import BUILTIN_BATCH
from llm_pipeline.definitions import ASSETS, CHECKS, make_resources
from llm_pipeline.demo_console import demo_logger
from llm_pipeline.evaluate.local_tasks import CHOICES, CONTINUATION_TASK
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.summary import TrainSummary


@contextlib.contextmanager
def _process_output_to(log_file: str):
    """While the job runs, whatever writes to this process's stdout and stderr (the DeepSpeed launcher
    and the trainer's ranks, which inherit them; library warnings) goes to the log file. Yields the
    terminal, where the stage lines go."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(1), "w", buffering=1)
    try:
        with open(log_file, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield console
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
        console.close()


def _harness_lines(metrics: EvalReport) -> list[str]:
    """lm-evaluation-harness's view of the same model, and the contamination figure."""
    shown: dict[str, list[str]] = {}
    for task, metric, v in metrics.harness.scores() if metrics.harness else ():
        if metric != "word_perplexity":
            shown.setdefault(task, []).append(f"{metric} {v.value:.4f}" + (f" ± {v.stderr:.4f}" if v.stderr is not None else ""))
    lines = []
    for task, scores in shown.items():
        chance = f" (chance {1 / CHOICES:.2f})" if task == CONTINUATION_TASK else ""
        lines.append(f"{'lm-eval':<16}: {task.removeprefix('llm_pipeline_')} {', '.join(scores)}{chance}")
    report = metrics.contamination
    lines.append(
        f"{'contamination':<16}: {report.fraction:.1%} of eval documents have >= {report.min_overlap:.0%} "
        f"of their {report.n}-grams in the training split"
    )
    return lines


def _watch_lines(ckpt: CheckpointRef) -> list[str]:
    """The validation loss by step while it trained, and where its curves are."""
    summary = TrainSummary.read(Storage(ckpt.final_uri))
    lines = []
    if summary.validations:
        lines.append(f"{'val while train':<16}: " + ", ".join(f"step {step} {loss:.4f}" for step, loss, _ in summary.validations))
    if ckpt.tracker.link:
        lines.append(f"{'curves':<16}: {ckpt.tracker.link}")
    return lines


def demo_run_config(source: str | None = None, steps: int | None = None) -> dict:
    ops: dict[str, dict] = {}
    if source:
        ops["raw_corpus"] = {"config": {"source_uri": source}}
    if steps:
        ops["trained_checkpoint"] = {"config": {"steps": steps}}
    return {"ops": ops, "loggers": {"demo": {}}}  # the demo's logger instead of Dagster's console logger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=None,
        help="your data: a folder, file or bucket prefix (fsspec URI), every file "
        "under it read by its name's format (default: the built-in corpus)",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the asset's default)")
    parser.add_argument("--storage-root", default=None, help="storage root URI (default: LLM_PIPELINE_STORAGE_ROOT or .storage/)")
    parser.add_argument("--log-file", default=None, help="the full event log (default: $DAGSTER_HOME/.dagster/demo.log)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # Dagster's API notices: not the demo's business
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    log_file = args.log_file or os.path.join(os.environ.get("DAGSTER_HOME") or ".", ".dagster", "demo.log")
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)

    run_config = demo_run_config(args.source, args.steps)
    resources = make_resources(args.storage_root)
    what = f"your data at {args.source}" if args.source else "the built-in corpus"
    print(
        f"llm-pipeline demo: {what}, as batch '{BUILTIN_BATCH}', through the whole graph (full log: {log_file}, and the run in `make dev`)"
    )
    start = time.time()
    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(CORPUS_BATCHES, BUILTIN_BATCH):
        instance.add_dynamic_partitions(CORPUS_BATCHES, [BUILTIN_BATCH])
    with _process_output_to(log_file) as console:
        defs = dg.Definitions(
            assets=ASSETS, asset_checks=CHECKS, jobs=[pipeline_job], resources=resources, loggers={"demo": demo_logger(log_file, console)}
        )
        result = defs.resolve_job_def(pipeline_job.name).execute_in_process(
            run_config=run_config, instance=instance, partition_key=BUILTIN_BATCH, raise_on_error=False
        )
    elapsed = time.time() - start
    if not result.success:
        print(f"\nllm-pipeline demo FAILED after {elapsed:.0f}s (run {result.run_id}); see {log_file} or the run in the UI.")
        return 1
    ckpt: CheckpointRef = result.output_for_node("trained_checkpoint")
    metrics: EvalReport = result.output_for_node("eval_metrics")
    published: PublishedModelRef = result.output_for_node("published_model")
    print(
        f"\nllm-pipeline demo finished in {elapsed:.0f}s (run {result.run_id})\n"
        f"  published model : {published.uri}\n"
        f"  version         : {published.version} (latest)\n"
        f"  train loss      : {ckpt.final_loss:.4f} after {ckpt.steps} steps, {ckpt.tokens_seen:,} tokens\n"
        f"  val loss        : {metrics.loss:.4f}  (ln(vocab) = {metrics.uniform_loss:.4f}, "
        f"{100 * (1 - metrics.loss / metrics.uniform_loss):.1f}% below)\n"
        f"  perplexity      : {metrics.perplexity:.2f}\n"
        f"  bits per byte   : {metrics.bits_per_byte:.4f}\n"
        + "".join(f"  {line}\n" for line in _harness_lines(metrics))
        + "".join(f"  {line}\n" for line in _watch_lines(ckpt))
        + f"  try it          : python -m llm_pipeline.publish.generate {published.registry}/{published.name} --prompt 'def '"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
