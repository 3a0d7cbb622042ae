"""The command line that starts the trainer: `deepspeed` launcher, `torchrun`, or one plain process.

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

import torch

from llm_pipeline.train.config import LAUNCHERS, LaunchConfig

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


def uses_gpu() -> bool:
    return torch.cuda.is_available()


def launch_command(launch: LaunchConfig, config_path: str) -> list[str]:
    port = str(launch.master_port or free_port())
    trainer_args = ["--config", config_path]
    if launch.launcher == "deepspeed":
        if launch.hostfile:
            nodes = ["--hostfile", launch.hostfile, "--num_nodes", str(launch.nnodes), "--num_gpus", str(launch.nproc),
                     "--master_addr", launch.master_addr]
            if not launch.ssh:  # each node starts its own ranks
                nodes += ["--no_ssh", "--node_rank", str(launch.node_rank)]
        else:
            nodes = ["--num_gpus", str(launch.nproc)]
        return [sys.executable, "-m", "deepspeed.launcher.runner", *nodes, "--master_port", port,
                "--module", TRAINER_MODULE, *trainer_args]
    if launch.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(launch.nnodes), "--node_rank",
                str(launch.node_rank), "--nproc_per_node", str(launch.nproc), "--master_addr", launch.master_addr,
                "--master_port", port, "-m", TRAINER_MODULE, *trainer_args]
    return [sys.executable, "-m", TRAINER_MODULE, *trainer_args]


def launch_env(launch: LaunchConfig) -> dict[str, str]:
    env = {}
    if not uses_gpu():
        env["DS_ACCELERATOR"] = "cpu"
        # The deepspeed launcher does not split the cores between ranks (torchrun does).
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.nproc))
        env.update({k: v for k, v in CPU_ALLOCATOR_ENV.items() if k not in os.environ})
    return env


def worker_command(launch: LaunchConfig, config_uri: str) -> list[str]:
    """What nodes 1..N-1 run to join node 0's run (node rank left for each node to fill in)."""
    command = ["python", "-m", "llm_pipeline.train.launch", "--config", config_uri, "--launcher", launch.launcher,
               "--nproc", str(launch.nproc), "--nnodes", str(launch.nnodes), "--node-rank", "<this node's rank>",
               "--master-addr", launch.master_addr, "--master-port", str(launch.master_port)]
    return command + (["--hostfile", launch.hostfile] if launch.hostfile else [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start the trainer's processes on this node.")
    p.add_argument("--config", required=True, help="path or URI of the training config JSON (train_config.json)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="deepspeed")
    p.add_argument("--nproc", type=int, default=1, help="processes on this node")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1", help="node 0's address")
    p.add_argument("--master-port", type=int, default=0)
    p.add_argument("--hostfile", default="", help="deepspeed: MPI-style hostfile naming every node")
    p.add_argument("--ssh", action="store_true", help="deepspeed: start every node from this one over pdsh/ssh")
    a = p.parse_args(argv)
    try:
        launch = LaunchConfig(a.launcher, a.nproc, a.nnodes, a.node_rank, a.master_addr, a.master_port, a.hostfile, a.ssh)
    except ValueError as e:
        p.error(str(e))
    return subprocess.call(launch_command(launch, a.config), env={**os.environ, **launch_env(launch)})


if __name__ == "__main__":
    sys.exit(main())
