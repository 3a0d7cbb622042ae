"""The trainer on a Ray cluster: the driver of a Ray job.

    ray job submit --address http://head:8265 -- python -m llm_pipeline.train.ray_job \\
        --config <uri of train_config.json> --num-workers 8 --gpus-per-worker 1 --cpus-per-worker 8

The `trained_checkpoint` asset submits exactly this through dagster-ray (`launcher: ray`). The
driver checks that the cluster can place every worker (a run asking for more than the cluster has
fails here, naming what is missing, instead of waiting for resources forever), then runs the
trainer program unchanged in each worker of a Ray Train `TorchTrainer`: Ray Train sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT and the process group (gloo on CPU, NCCL on GPU) as
torchrun would. A worker lost with its node restarts the whole group (`--max-failures`), and the
trainer resumes from the newest complete checkpoint under the storage root, as after any crash.
"""

from __future__ import annotations

import argparse
import os
import sys

from llm_pipeline.ray_cluster import alive_node_resources, placement_problem
from llm_pipeline.storage.folders import bounded, read_named_json_object
from llm_pipeline.train.config import TrainConfig


def run_trainer(loop_config: dict) -> None:
    """One Ray Train worker: the trainer program, as one rank of the world Ray Train set up."""
    from llm_pipeline.train import trainer

    trainer.main(["--config", loop_config["config"]])


def per_worker_resources(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train on a Ray cluster: one Ray Train worker per rank.")
    p.add_argument("--config", required=True, help="path or URI of the training config JSON (train_config.json)")
    p.add_argument("--num-workers", type=int, required=True, help="ranks, each a Ray Train worker")
    p.add_argument("--cpus-per-worker", type=float, default=1)
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--max-failures", type=int, default=2, help="restarts of the worker group after a lost worker or node")
    a = p.parse_args(argv)

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    gpu = a.gpus_per_worker > 0
    try:
        cfg = TrainConfig.from_dict(read_named_json_object(a.config, "--config"))
        cfg.validate_for(a.num_workers, gpu, ranks_on_this_node=0)
    except (ValueError, OSError) as e:
        print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
        return 1
    if not os.environ.get("RAY_ADDRESS"):  # set for a job's driver; by hand, ray.init() would start a cluster of its own
        print(
            "error: no Ray cluster: submit this as a Ray job (ray job submit --address http://head:8265 -- ...) or set RAY_ADDRESS",
            file=sys.stderr,
        )
        return 1
    ray.init()  # the job's own cluster
    resources = per_worker_resources(a.cpus_per_worker, a.gpus_per_worker)
    nodes = alive_node_resources()
    problem = placement_problem(nodes, a.num_workers, resources)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"ray_job: {a.num_workers} workers of {resources} on {len(nodes)} nodes", flush=True)
    trainer = TorchTrainer(
        run_trainer,
        train_loop_config={"config": a.config},
        scaling_config=ScalingConfig(num_workers=a.num_workers, use_gpu=gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(name=cfg.run_key(), failure_config=FailureConfig(max_failures=a.max_failures)),
    )
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
