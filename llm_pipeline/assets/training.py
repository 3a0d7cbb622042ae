import dagster as dg

from llm_pipeline.assets.configs import TrainedCheckpointConfig, check_eval_tasks, validate_run_config
from llm_pipeline.assets.metadata import significant
from llm_pipeline.assets.partitions import partition_values
from llm_pipeline.assets.plots import loss_curve_markdown
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.publish.verify import verify
from llm_pipeline.resources import StorageResource
from llm_pipeline.tokenize.bpe import made_with_another_tokenizer
from llm_pipeline.train.config import mixture_sources
from llm_pipeline.train.launch import launch_command, launch_env, worker_command


def _input_error(description: str) -> dg.Failure:
    # Wrong inputs stay wrong on a retry: the retry policy is for crashed training processes.
    return dg.Failure(description=description, allow_retries=False)


def training_data(context, config: TrainedCheckpointConfig, storage: StorageResource, tokenizer: dict) -> list[dict]:
    """The batches to train on (each batch's tokenized_shards value), checked: every one
    materialized, all made with the current tokenizer; batches with no training tokens left out."""
    shards = partition_values(context, storage, "tokenized_shards", config.batches or None)
    missing = [b for b in config.batches if b not in shards]
    if missing:
        raise _input_error(
            f"trained_checkpoint: batches {', '.join(missing)} have no tokenized_shards "
            "materialization; materialize them or leave them out of `batches`"
        )
    stale = made_with_another_tokenizer({b: v["tokenizer_sha256"] for b, v in shards.items()}, tokenizer["sha256"])
    if stale:
        listed = ", ".join(f"{b} (tokenizer {str(sha)[:12]})" for b, sha in stale.items())
        raise _input_error(
            f"trained_checkpoint: shards with mixed tokenizers: {listed}; the current tokenizer is "
            f"{tokenizer['sha256'][:12]}. Re-tokenize them (backfill tokenized_shards) first"
        )
    data = [{"batch": b, **v} for b, v in shards.items() if v["train_tokens"] > 0]
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


@dg.asset(
    group_name="llm_pipeline",
    kinds={"deepspeed", "pytorch"},
    pool="gpu",
    retry_policy=dg.RetryPolicy(max_retries=1),
    deps=[dg.AssetDep("tokenized_shards", partition_mapping=dg.AllPartitionMapping())],
    description="A causal LM trained with DeepSpeed ZeRO on every corpus batch: checkpoints plus consolidated model.safetensors.",
)
def trained_checkpoint(
    context: dg.AssetExecutionContext,
    config: TrainedCheckpointConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    tokenizer: dict,
) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    _check_eval_tasks(context.run_config)
    data = training_data(context, config, storage, tokenizer)
    init_from = _initial_weights(config, storage)
    try:
        sources = mixture_sources([d["batch"] for d in data], config.mixture) if config.mixture else ()
    except ValueError as e:
        raise _input_error(f"trained_checkpoint: mixture: {e}") from None
    unplaced = config.to_library(tuple(d["uri"] for d in data), "", tokenizer["vocab_size"], tokenizer["sha256"], init_from, sources)
    run = storage.root().child("trained_checkpoint", unplaced.run_key())
    train_cfg = unplaced.replaced(run_uri=run.uri)
    run.write_bytes("train_config.json", train_cfg.to_json().encode())
    final = run.child("final")
    final.remove("summary.json")  # only the marker this launch writes counts as success
    context.log.info(
        f"training on {len(data)} batches ({', '.join(d['batch'] for d in data)}): "
        f"{sum(d['train_tokens'] for d in data):,} training tokens" + (f"; starting from {init_from}" if init_from else "")
    )

    launch = config.launch_config()
    command = launch_command(launch, run.child("train_config.json").uri)
    context.log.info(f"launching: {' '.join(command)}")
    if launch.nnodes > 1 and not launch.ssh:
        context.log.info(
            f"waiting for nodes 1..{launch.nnodes - 1}; start each with: {' '.join(worker_command(launch, run.child('train_config.json').uri))}"
        )
    try:
        pipes_subprocess_client.run(command=command, context=context, env={**launch_env(launch), **storage.process_env()})
    except dg.DagsterPipesExecutionError as e:
        # A rank can abort at exit after finishing (seen ~1 run in 80 with gloo): the completion
        # marker, not the launcher's exit code, says whether training finished.
        if not final.exists("summary.json"):
            raise
        context.log.warning(f"trainer exited with an error after writing its completion marker: {e}")
    if not final.exists("summary.json"):
        raise dg.Failure(description=f"trainer finished without writing {final.uri}/summary.json")
    summary = final.read_json("summary.json")

    value = {
        "run_uri": run.uri,
        "final_uri": final.uri,
        "checkpoint": summary["checkpoint"],
        "steps": summary["steps"],
        "tokens_seen": summary["tokens_seen"],
        "final_loss": summary["final_loss"],
        "train_config": train_cfg.model_dump(mode="json"),
        "data": data,
        "init_from": init_from,
        "mixture": summary["mixture"],  # the realized mix, for the model card
        "tokenizer": tokenizer,  # evaluation and publishing read it from here: the graph stays a chain
    }
    return dg.Output(
        value,
        metadata={
            "uri": dg.MetadataValue.path(final.uri),
            "loss_curve": loss_curve_markdown(summary["losses"]),
            "final_loss": significant(summary["final_loss"]),
            "steps": summary["steps"],
            "tokens_seen": summary["tokens_seen"],
            "tokens_per_s": significant(summary["tokens_per_s"], 4),
            "wall_time_s": significant(summary["wall_time_s"], 4),
            "num_params": summary["num_params"],
            "flops_per_token": summary["flops_per_token"],
            "world_size": summary["world_size"],
            "zero_stage": summary["zero_stage"],
            "dtype": summary["dtype"],
            "grad_accum": summary["grad_accum"],
            "accelerator": summary["accelerator"],
            **({"mfu": significant(summary["mfu"], 3)} if summary["mfu"] is not None else {}),
            "resumed_from": summary["resumed_from"] or "",
            # Each batch's shard manifest: the retraining sensor compares content, not run folders.
            "batches": dg.MetadataValue.json({d["batch"]: d["manifest_sha256"] for d in data}),
            "train_tokens_available": sum(d["train_tokens"] for d in data),
            "init_from": init_from or "scratch",
            "mixture": dg.MetadataValue.json(summary["mixture"]),
            **{f"mixture/{name}/share": significant(source["share"], 4) for name, source in summary["mixture"].items()},
        },
    )
