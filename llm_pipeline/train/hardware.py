"""The one place that decides what this machine trains on: a GPU or the CPU, and in which dtype."""

from __future__ import annotations

import glob
import os
import resource
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Device nodes a GPU driver makes (NVIDIA, AMD ROCm, WSL). Without one no torch build sees a GPU.
_GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def on_gpu() -> bool:
    """torch.cuda.is_available(), without importing torch (1.7 s of every Dagster process's start on
    two cores) where no GPU driver is there to ask: the data stages' runs validate the whole run's
    config, training's included, and need torch for nothing else."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not any(glob.glob(p) for p in _GPU_DEVICE_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def device_for(local_rank: int, gpu: bool) -> torch.device:
    import torch

    return torch.device("cuda", local_rank) if gpu else torch.device("cpu")


def accelerator_name(device: torch.device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """'auto' means bf16 only where it is fast: CPUs without bf16 instructions run it ~20x
    slower than fp32 (measured: 250 vs 5,170 tokens/s on an AMD EPYC without avx512_bf16)."""
    if dtype != "auto":
        return dtype
    if on_gpu:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def peak_rss_bytes() -> int:
    """This process's own peak RSS. Not getrusage's ru_maxrss: Linux carries it across fork+exec,
    so a child would report its (much larger) parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def flash_attention_problem(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """None if PyTorch's flash attention kernel runs this model's attention (causal, no mask) here; else
    why it cannot (scaled_dot_product_attention then falls back to a slower kernel)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.zeros(1, 1, 16, head_dim, device=device, dtype=dtype)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as e:
        return str(e).strip().splitlines()[0]
    return None
