"""The command line that starts the trainer: `deepspeed` launcher, `torchrun`, a Ray job's driver, or one plain process.

The same command works with or without Dagster; the asset only adds Pipes' environment. For a
multi-node run the asset starts node 0; every other node runs this module with its node rank:

    python -m llm_pipeline.train.launch --config <uri of train_config.json> --launcher torchrun \\
        --nproc 8 --nnodes 2 --node-rank 1 --master-addr <node 0> --master-port 29500
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

from llm_pipeline.settings import add_options, given_options, to_options
from llm_pipeline.storage.folders import bounded, read_named_json_object
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.hardware import on_gpu

TRAINER_MODULE = "llm_pipeline.train.trainer"

# glibc returns every freed block over its mmap threshold (128 KiB to 32 MiB) to the kernel, and
# a CPU training step frees and re-allocates its activations and gradients (MiBs each) every
# step, so each step pays page faults again. Keeping them in the heap made CPU steps 5-10%
# faster for a plain DDP loop and ~19% for DeepSpeed ZeRO-2, which allocates more temporaries
# (benchmarks/train_bench.py). The process's memory stays at its high-water mark instead.
CPU_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(4 * 2**30),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30),
    "MALLOC_TOP_PAD_": str(256 * 2**20),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(launch: LaunchConfig, config_path: str) -> list[str]:
    if launch.launcher == "ray":  # run here it is a driver of the cluster at RAY_ADDRESS; the asset submits it as a Ray job
        return ray_job_command(launch, config_path)
    port = str(launch.master_port or free_port())
    trainer_args = ["--config", config_path]
    if launch.launcher == "deepspeed":
        if launch.hostfile:
            nodes = [
                "--hostfile",
                launch.hostfile,
                "--num_nodes",
                str(launch.nnodes),
                "--num_gpus",
                str(launch.nproc),
                "--master_addr",
                launch.master_addr,
            ]
            if not launch.ssh:  # each node starts its own ranks
                nodes += ["--no_ssh", "--node_rank", str(launch.node_rank)]
        else:
            nodes = ["--num_gpus", str(launch.nproc)]
        return [sys.executable, "-m", "deepspeed.launcher.runner", *nodes, "--master_port", port, "--module", TRAINER_MODULE, *trainer_args]
    if launch.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(launch.nnodes),
            "--node_rank",
            str(launch.node_rank),
            "--nproc_per_node",
            str(launch.nproc),
            "--master_addr",
            launch.master_addr,
            "--master_port",
            port,
            "-m",
            TRAINER_MODULE,
            *trainer_args,
        ]
    return [sys.executable, "-m", TRAINER_MODULE, *trainer_args]


def launch_env(launch: LaunchConfig) -> dict[str, str]:
    if launch.launcher == "ray":
        return ray_job_env(launch)
    env = {}
    if not on_gpu():
        env["DS_ACCELERATOR"] = "cpu"
        # The deepspeed launcher does not split the cores between ranks (torchrun does).
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.nproc))
        env.update({k: v for k, v in CPU_ALLOCATOR_ENV.items() if k not in os.environ})
    return env


def ray_job_command(launch: LaunchConfig, config_uri: str, python: str = sys.executable) -> list[str]:
    """The Ray job's driver (train/ray_job.py). `python`: the interpreter on the cluster's nodes."""
    return [
        python,
        "-m",
        "llm_pipeline.train.ray_job",
        "--config",
        config_uri,
        "--num-workers",
        str(launch.num_workers),
        "--cpus-per-worker",
        str(launch.cpus_per_worker),
        "--gpus-per-worker",
        str(launch.gpus_per_worker),
    ]


def ray_job_env(launch: LaunchConfig) -> dict[str, str]:
    """The job's environment (its driver and every worker): the workers' hardware, not this host's, and
    rank 0's Pipes messages forwarded to the driver's log as whole lines, where Dagster reads them
    (Ray prefixes a worker's lines with its name and folds lines that look alike)."""
    env = {"RAY_DISABLE_WORKER_LOG_PREFIX": "1", "RAY_DEDUP_LOGS": "0"}
    if not launch.gpus_per_worker:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS=str(launch.cpus_per_worker), **CPU_ALLOCATOR_ENV)
    return env


def worker_command(launch: LaunchConfig, config_uri: str) -> list[str]:
    """What nodes 1..N-1 run to join node 0's run (node rank left for each node to fill in)."""
    same = [name for name in LaunchConfig.model_fields if name != "node_rank"]
    return [
        "python",
        "-m",
        "llm_pipeline.train.launch",
        "--config",
        config_uri,
        "--node-rank",
        "<this node's rank>",
        *to_options(launch, same),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start the trainer's processes on this node.")
    p.add_argument("--config", required=True, help="path or URI of the training config JSON (train_config.json)")
    names = add_options(p, LaunchConfig)
    a = p.parse_args(argv)
    try:
        launch = LaunchConfig(**given_options(a, names))
    except ValueError as e:
        p.error(str(e))
    try:
        config = read_named_json_object(a.config, "--config")
        TrainConfig.from_dict(config).validate_for(launch.world_size, on_gpu(), launch.ranks_on_this_node)
    except (ValueError, OSError) as e:  # before any process starts: one line that names the problem
        print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
        return 1
    return subprocess.call(launch_command(launch, a.config), env={**os.environ, **launch_env(launch)})


if __name__ == "__main__":
    sys.exit(main())
