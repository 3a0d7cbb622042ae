"""The command line that starts the trainer: `deepspeed` launcher, `torchrun`, or one plain process.

The same command works with or without Dagster; the asset only adds Pipes' environment.
"""

from __future__ import annotations

import os
import socket
import sys

import torch

from llm_pipeline.train.config import LaunchConfig

TRAINER_MODULE = "llm_pipeline.train.trainer"


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
        return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(launch.nproc),
                "--master_port", port, "--module", TRAINER_MODULE, *trainer_args]
    if launch.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(launch.nproc),
                "--master_addr", "127.0.0.1", "--master_port", port, "-m", TRAINER_MODULE, *trainer_args]
    return [sys.executable, "-m", TRAINER_MODULE, *trainer_args]


def launch_env(launch: LaunchConfig) -> dict[str, str]:
    env = {}
    if not uses_gpu():
        env["DS_ACCELERATOR"] = "cpu"
        # The deepspeed launcher does not split the cores between ranks (torchrun does).
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // launch.nproc))
    env.update({k: str(v) for k, v in launch.env.items()})
    return env
