import dataclasses
import hashlib
import json

import dagster as dg

from llm_pipeline.assets.configs import TrainedCheckpointConfig, validate_run_config
from llm_pipeline.assets.plots import loss_curve_markdown
from llm_pipeline.resources import StorageResource
from llm_pipeline.train.launch import launch_command, launch_env, worker_command


def _run_key(train_json: dict) -> str:
    # The same shards and config map to the same run folder: re-materializing after a crash
    # finds that run's checkpoints and resumes.
    return hashlib.sha256(json.dumps(train_json, sort_keys=True).encode()).hexdigest()[:16]


@dg.asset(
    group_name="llm_pipeline",
    kinds={"deepspeed", "pytorch"},
    pool="gpu",
    retry_policy=dg.RetryPolicy(max_retries=1),
    description="A causal LM trained with DeepSpeed ZeRO: checkpoints plus consolidated model.safetensors.",
)
def trained_checkpoint(
    context: dg.AssetExecutionContext,
    config: TrainedCheckpointConfig,
    storage: StorageResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
    tokenized_shards: dict,
    tokenizer: dict,
) -> dg.Output[dict]:
    validate_run_config(context.run_config)
    probe = config.to_library(tokenized_shards["uri"], "", tokenizer["vocab_size"], tokenizer["sha256"])
    key_fields = json.loads(probe.to_json())
    key_fields.pop("run_uri")
    run = storage.root().child("trained_checkpoint", _run_key(key_fields))
    train_cfg = dataclasses.replace(probe, run_uri=run.uri)
    run.write_bytes("train_config.json", train_cfg.to_json().encode())
    final = run.child("final")
    final.remove("summary.json")  # only the marker this launch writes counts as success

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
        "seq_len": train_cfg.seq_len,
        "train_config": json.loads(train_cfg.to_json()),
    }
    return dg.Output(
        value,
        metadata={
            "uri": dg.MetadataValue.path(final.uri),
            "loss_curve": loss_curve_markdown(summary["losses"]),
            "final_loss": summary["final_loss"],
            "steps": summary["steps"],
            "tokens_seen": summary["tokens_seen"],
            "tokens_per_s": summary["tokens_per_s"],
            "wall_time_s": summary["wall_time_s"],
            "num_params": summary["num_params"],
            "flops_per_token": summary["flops_per_token"],
            "world_size": summary["world_size"],
            "zero_stage": summary["zero_stage"],
            "dtype": summary["dtype"],
            "grad_accum": summary["grad_accum"],
            "accelerator": summary["accelerator"],
            **({"mfu": summary["mfu"]} if summary["mfu"] is not None else {}),
            "resumed_from": summary["resumed_from"] or "",
        },
    )
