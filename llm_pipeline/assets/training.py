import copy
import shlex
import sys

import dagster as dg
from dagster._core.errors import (  # not exported at the top level (dg.* has neither name)
    DagsterExecutionInterruptedError,
    DagsterPipesExecutionError,
)

from llm_pipeline.assets.configs import TrainedCheckpointConfig, check_eval_tasks, validate_run_config
from llm_pipeline.assets.metadata import significant, stage_metadata
from llm_pipeline.assets.plots import loss_curve_markdown
from llm_pipeline.assets.progress_relay import ProgressRelay
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.contracts import CheckpointRef, ShardSetRef, TokenizerRef
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.publish.verify import verify
from llm_pipeline.ray_cluster import alive_node_resources, placement_problem
from llm_pipeline.resources import RayClusterResource, StorageResource
from llm_pipeline.tokenize.bpe import made_with_another_tokenizer
from llm_pipeline.train.config import LaunchConfig, mixture_sources
from llm_pipeline.train.launch import launch_command, launch_env, ray_job_command, worker_command
from llm_pipeline.train.ray_job import per_worker_resources
from llm_pipeline.train.summary import SUMMARY, TrainSummary
from llm_pipeline.train.tracking import TrackerError, check_reachable


def _input_error(description: str) -> dg.Failure:
    # Wrong inputs stay wrong on a retry: the retry policy is for crashed training processes.
    return dg.Failure(description=description, allow_retries=False)


def training_data(config: TrainedCheckpointConfig, tokenizer: TokenizerRef, shards: dict[str, ShardSetRef]) -> list[ShardSetRef]:
    """The batches to train on (all materialized ones, or `config.batches`), checked: all made with
    the current tokenizer; batches with no training tokens left out."""
    missing = [b for b in config.batches if b not in shards]
    if missing:
        raise _input_error(
            f"trained_checkpoint: batches {', '.join(missing)} have no tokenized_shards "
            "materialization; materialize them or leave them out of `batches`"
        )
    chosen = {b: shards[b] for b in config.batches} if config.batches else shards
    stale = made_with_another_tokenizer({b: v.tokenizer_sha256 for b, v in chosen.items()}, tokenizer.sha256)
    if stale:
        listed = ", ".join(f"{b} (tokenizer {str(sha)[:12]})" for b, sha in stale.items())
        raise _input_error(
            f"trained_checkpoint: shards with mixed tokenizers: {listed}; the current tokenizer is "
            f"{tokenizer.sha256[:12]}. Re-tokenize them (backfill tokenized_shards) first"
        )
    data = [v for v in chosen.values() if v.train_tokens > 0]
    if not data:
        raise _input_error(
            "trained_checkpoint: no corpus batch has training tokens yet; materialize "
            "raw_corpus and tokenized_shards for a batch (e.g. 'builtin') first"
        )
    return data


def _check_eval_tasks(run_config: dict) -> None:
    """The evaluation's harness tasks load offline, checked before hours of training depend on it."""
    try:
        check_eval_tasks(run_config)
    except ValueError as e:
        raise _input_error(f"eval_metrics config: {e}. Nothing was trained") from None


def _watch_metadata(summary: TrainSummary) -> dict:
    """Validation while training, divergences rolled back from, and where the curves are."""
    metadata: dict = {"exported_checkpoint": summary.exported_checkpoint, "rollbacks": len(summary.rollbacks)}
    if summary.validations:
        step, loss, bits = summary.validations[-1]
        metadata["val_loss"] = significant(loss)
        if bits is not None:
            metadata["val_bits_per_byte"] = significant(bits)
        metadata["validations"] = dg.MetadataValue.json([{"step": s, "loss": v, "bits_per_byte": b} for s, v, b in summary.validations])
    if summary.best_validation_loss is not None:
        metadata["best_val_loss"] = significant(summary.best_validation_loss)
    if summary.rollbacks:
        metadata["rolled_back"] = dg.MetadataValue.json([r.model_dump() for r in summary.rollbacks])
        metadata["samples_skipped"] = sum(end - first for first, end in (r.skipped_samples for r in summary.rollbacks))
    if summary.tracker.kind != "none":
        metadata["tracker"] = summary.tracker.kind
        if summary.tracker.run_id:
            metadata["tracker_run_id"] = summary.tracker.run_id
        link = summary.tracker.link
        metadata["tracker_link"] = dg.MetadataValue.url(link) if link.startswith("http") else dg.MetadataValue.text(link)
    return metadata


def _initial_weights(config: TrainedCheckpointConfig, storage: StorageResource) -> str:
    """The published version a continued pretraining starts from ("" for scratch), verified."""
    if config.init_from == "scratch":
        return ""
    try:
        folder = resolve_version(storage.root().child("registry"), config.init_from_model)
    except (FileNotFoundError, ValueError) as e:
        raise _input_error(f"trained_checkpoint: init_from latest_published: {e}") from None
    problems = verify(folder)
    if problems:
        raise _input_error(f"trained_checkpoint: init_from {folder.uri} fails verification: {'; '.join(problems)}")
    return folder.uri


def _ray_address(launch: LaunchConfig, ray_cluster: RayClusterResource) -> str:
    """The cluster's job address, checked before any work: it answers, and it can place every worker."""
    address = ray_cluster.job_address("trained_checkpoint")
    try:
        nodes = alive_node_resources(address)
    except Exception as e:  # Ray's state API raises its own exception types
        raise dg.Failure(description=f"trained_checkpoint: cannot list the nodes of the Ray cluster at {address}: {e}") from None
    problem = placement_problem(nodes, launch.num_workers, per_worker_resources(launch.cpus_per_worker, launch.gpus_per_worker))
    if problem:
        raise _input_error(f"trained_checkpoint: {problem}. Nothing was trained")
    return address


def _train_on_ray(context, launch: LaunchConfig, ray_cluster: RayClusterResource, address: str, config_uri: str, env: dict) -> None:
    """The trainer as a Ray job (train/ray_job.py) through dagster-ray's Pipes client: the job's log
    and rank 0's Pipes messages stream into this run, and terminating the run stops the job."""
    try:
        from dagster_ray import PipesRayJobClient, PipesRayJobMessageReader
    except ImportError:
        raise _input_error(
            "trained_checkpoint: launcher 'ray' needs the ray extra: pip install -e '.[ray]' in the project's folder"
        ) from None
    command = ray_job_command(launch, config_uri, ray_cluster.python or sys.executable)
    context.log.info(f"submitting to the Ray cluster at {address}: {shlex.join(command)}")
    reader = ProgressRelay(PipesRayJobMessageReader(), context.log)
    PipesRayJobClient(address=address, poll_interval=1.0, forward_termination=True, message_reader=reader).run(
        context=context,
        submit_job_params={"entrypoint": shlex.join(command), "runtime_env": {"env_vars": env}, "entrypoint_num_cpus": 0},
    )


@dg.asset(
    group_name="llm_pipeline",
    kinds={"deepspeed", "pytorch"},
    pool="gpu",
    retry_policy=dg.RetryPolicy(max_retries=1),
    ins={"tokenized_shards": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    description="A causal LM trained with DeepSpeed ZeRO on every corpus batch: checkpoints plus consolidated model.safetensors.",
)
@redacted_step
def trained_checkpoint(
    context: dg.AssetExecutionContext,
    config: TrainedCheckpointConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    ray_cluster: RayClusterResource,
    tokenizer: TokenizerRef,
    tokenized_shards: dict[str, ShardSetRef],
) -> dg.Output[CheckpointRef]:
    validate_run_config(context.run_config)
    _check_eval_tasks(context.run_config)
    try:
        check_reachable(config.tracker, config.tracker_uri)
    except TrackerError as e:
        raise _input_error(f"trained_checkpoint: {e}. Nothing was trained") from None
    launch = config.launch_config()
    ray_address = _ray_address(launch, ray_cluster) if launch.launcher == "ray" else ""
    data = training_data(config, tokenizer, tokenized_shards)
    init_from = _initial_weights(config, storage)
    try:
        sources = mixture_sources([d.batch for d in data], config.mixture) if config.mixture else ()
    except ValueError as e:
        raise _input_error(f"trained_checkpoint: mixture: {e}") from None
    tags = {"dagster/run_id": context.run_id, "dagster/asset": "trained_checkpoint", "batches": ",".join(d.batch for d in data)[:500]}
    unplaced = config.to_library(tuple(d.uri for d in data), "", tokenizer.vocab_size, tokenizer.sha256, init_from, sources).replaced(
        tokenizer_uri=tokenizer.uri, tracker_tags=tags
    )
    run = storage.root().child("trained_checkpoint", unplaced.run_key())
    train_cfg = unplaced.replaced(run_uri=run.uri)
    run.write_bytes("train_config.json", train_cfg.to_json().encode())
    final = run.child("final")
    final.remove(SUMMARY)  # only the marker this launch writes counts as success
    context.log.info(
        f"training on {len(data)} batches ({', '.join(d.batch for d in data)}): "
        f"{sum(d.train_tokens for d in data):,} training tokens" + (f"; starting from {init_from}" if init_from else "")
    )

    config_uri = run.child("train_config.json").uri
    env = {**launch_env(launch), **storage.process_env()}
    try:
        if launch.launcher == "ray":
            _train_on_ray(context, launch, ray_cluster, ray_address, config_uri, env)
        else:
            command = launch_command(launch, config_uri)
            context.log.info(f"launching: {' '.join(command)}")
            if launch.nnodes > 1 and not launch.ssh:
                context.log.info(
                    f"waiting for nodes 1..{launch.nnodes - 1}; start each with: {' '.join(worker_command(launch, config_uri))}"
                )
            client = copy.copy(pipes_subprocess_client)  # the resource as configured, with the progress relayed
            client.message_reader = ProgressRelay(pipes_subprocess_client.message_reader, context.log)
            client.run(command=command, context=context, env=env)
    except (DagsterExecutionInterruptedError, KeyboardInterrupt):
        # Dagster retries an interrupted step under its retry policy, which after Terminate would start
        # the trainer again; a terminated run's step fails for good (the run then reads as canceled).
        if context.instance.get_run_by_id(context.run_id).status == dg.DagsterRunStatus.CANCELING:
            raise dg.Failure(description="trained_checkpoint: the run was terminated; training stopped", allow_retries=False) from None
        raise
    except (DagsterPipesExecutionError, RuntimeError) as e:  # RuntimeError: dagster-ray's failed or stopped job
        # A rank can abort at exit after finishing (seen ~1 run in 80 with gloo): the completion
        # marker, not the launcher's exit code, says whether training finished.
        if not TrainSummary.exists(final):
            raise
        context.log.warning(f"trainer exited with an error after writing its completion marker: {e}")
    if not TrainSummary.exists(final):
        raise dg.Failure(description=f"trainer finished without writing {final.uri}/{SUMMARY}")
    summary = TrainSummary.read(final)

    value = CheckpointRef(
        run_uri=run.uri,
        final_uri=final.uri,
        checkpoint=summary.exported_checkpoint,
        steps=summary.steps,
        tokens_seen=summary.tokens_seen,
        final_loss=summary.final_loss,
        train_config=train_cfg,
        data=tuple(data),
        tokenizer_sha256=tokenizer.sha256,
        init_from=init_from,
        mixture=summary.mixture,
        tracker=summary.tracker,
    )
    return dg.Output(
        value,
        metadata={
            **stage_metadata(value),
            "uri": dg.MetadataValue.path(final.uri),
            "loss_curve": loss_curve_markdown(summary.losses, validation=[(step, loss) for step, loss, _ in summary.validations]),
            **_watch_metadata(summary),
            "final_loss": significant(summary.final_loss),
            "tokens_per_s": significant(summary.tokens_per_s, 4),
            "wall_time_s": significant(summary.wall_time_s, 4),
            "num_params": summary.num_params,
            "flops_per_token": summary.flops_per_token,
            "world_size": summary.world_size,
            "zero_stage": summary.zero_stage,
            "dtype": summary.dtype,
            "grad_accum": summary.grad_accum,
            "accelerator": summary.accelerator,
            **({"mfu": significant(summary.mfu, 3)} if summary.mfu is not None else {}),
            "resumed_from": summary.resumed_from or "",
            "mixture": dg.MetadataValue.json({name: source.model_dump() for name, source in summary.mixture.items()}),
            **{f"mixture/{name}/share": significant(source.share, 4) for name, source in summary.mixture.items()},
        },
    )
