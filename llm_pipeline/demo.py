"""`make demo`: materialize the whole graph for the built-in corpus batch ('builtin'), then print the result.

    python -m llm_pipeline.demo [--steps N] [--storage-root URI]

Runs go to the Dagster instance in DAGSTER_HOME, so they show up in `dagster dev` afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time

import dagster as dg

from llm_pipeline.assets.partitions import corpus_batches
from llm_pipeline.automation import pipeline_job
from llm_pipeline.corpus.batches import BUILTIN_BATCH
from llm_pipeline.definitions import ASSETS, CHECKS, make_resources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the asset's default)")
    parser.add_argument("--storage-root", default=None, help="storage root URI (default: LLM_PIPELINE_STORAGE_ROOT or .storage/)")
    args = parser.parse_args(argv)

    run_config = {"ops": {"trained_checkpoint": {"config": {"steps": args.steps}}}} if args.steps else {}
    resources = make_resources(args.storage_root)
    defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[pipeline_job], resources=resources)
    start = time.time()
    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(corpus_batches.name, BUILTIN_BATCH):
        instance.add_dynamic_partitions(corpus_batches.name, [BUILTIN_BATCH])
    result = defs.resolve_job_def(pipeline_job.name).execute_in_process(
        run_config=run_config, instance=instance, partition_key=BUILTIN_BATCH, raise_on_error=False)
    elapsed = time.time() - start
    for check in result.get_asset_check_evaluations():
        print(f"  check {check.check_name}: {'passed' if check.passed else 'FAILED'}: {check.description}")
    if not result.success:
        print(f"\nllm-pipeline demo FAILED after {elapsed:.0f}s (run {result.run_id}); see the log above or the run in the UI.")
        return 1
    ckpt = result.output_for_node("trained_checkpoint")
    metrics = result.output_for_node("eval_metrics")
    published = result.output_for_node("published_model")
    print(
        f"\nllm-pipeline demo finished in {elapsed:.0f}s (run {result.run_id})\n"
        f"  published model : {published['uri']}\n"
        f"  version         : {published['version']} (latest)\n"
        f"  train loss      : {ckpt['final_loss']:.4f} after {ckpt['steps']} steps, {ckpt['tokens_seen']:,} tokens\n"
        f"  val loss        : {metrics['loss']:.4f}  (ln(vocab) = {metrics['uniform_loss']:.4f}, "
        f"{100 * (1 - metrics['loss'] / metrics['uniform_loss']):.1f}% below)\n"
        f"  perplexity      : {metrics['perplexity']:.2f}\n"
        f"  bits per byte   : {metrics['bits_per_byte']:.4f}\n"
        f"  try it          : python -m llm_pipeline.publish.generate {published['registry']}/{published['name']} --prompt 'def '"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
