"""What a training run will need, estimated before any process starts, against what this node has.

A configuration that cannot fit (a 7e13-parameter model, a micro-batch of 10^12 sequences) is
refused by name with the estimate, instead of dying minutes later in an allocator. The estimate
is a floor, not a forecast: weights, gradients and AdamW state at 16 bytes a parameter (fp32
master weights and both moments; bf16 keeps fp32 masters too), divided across ranks as the ZeRO
stage shards them, plus each rank's activations for one micro-batch and its logits.
"""

from __future__ import annotations

import os

_STATE_BYTES = {"params": 4, "grads": 4, "optimizer": 8}  # per parameter, fp32
# Per token and layer, the activations one transformer block keeps for the backward pass
# (Korthikanti et al. 2022: ~34 x d_model bytes at 16 bits; fp32 doubles it).
_ACTIVATION_BYTES_PER_TOKEN_LAYER_DMODEL = 34


def training_bytes_per_rank(
    params: int,
    n_layers: int,
    d_model: int,
    n_heads: int,
    vocab_size: int,
    max_seq_len: int,
    seq_len: int,
    micro_batch: int,
    world_size: int,
    zero_stage: int,
    dtype: str,
    on_gpu: bool,
    activation_checkpointing: bool = False,
) -> dict[str, int]:
    """Bytes one rank needs, by part: model state (after ZeRO sharding, with the rotary tables) and activations."""
    sharded = {"optimizer": zero_stage >= 1, "grads": zero_stage >= 2, "params": zero_stage >= 3}
    state = sum(params * size // (world_size if sharded[part] else 1) for part, size in _STATE_BYTES.items())
    state += 2 * max_seq_len * (d_model // n_heads) * 4  # cos and sin for every position
    width = 2 if dtype in ("bf16", "fp16") else 4
    tokens = micro_batch * seq_len
    kept_layers = 1 if activation_checkpointing else n_layers
    activations = tokens * d_model * _ACTIVATION_BYTES_PER_TOKEN_LAYER_DMODEL * width // 2 * kept_layers
    if activation_checkpointing:
        activations += tokens * d_model * width * n_layers  # each block's input
    if not on_gpu:  # the CPU's attention kernel materializes the score matrix
        activations += micro_batch * n_heads * seq_len * seq_len * width * kept_layers
    logits = 3 * tokens * vocab_size * 4  # logits, their softmax and gradient, in fp32
    return {"model_state": state, "activations": activations + logits}


def available_bytes(on_gpu: bool) -> tuple[int, str]:
    """(bytes, what they are) a rank can use on this node: one GPU's memory, or the node's available RAM."""
    if on_gpu:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        return total, f"{total / 2**30:.0f} GiB per GPU ({torch.cuda.get_device_name(0)})"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        total = info.get("MemAvailable", info["MemTotal"])
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total, f"{total / 2**30:.1f} GiB of available memory on this node"


def local_devices(on_gpu: bool) -> tuple[int, str]:
    """How many ranks this node can place: its GPUs, or its CPU cores."""
    if on_gpu:
        import torch

        return torch.cuda.device_count(), "GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores"


def human(n: int) -> str:
    for unit, size in (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} bytes"
