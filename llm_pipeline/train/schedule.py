"""Learning-rate schedules, as factors of the peak LR per optimizer step (for LambdaLR)."""

from __future__ import annotations

import math
import typing

Schedule = typing.Literal["cosine", "wsd"]
SCHEDULES = typing.get_args(Schedule)


def lr_factor(
    step: int, steps: int, warmup_steps: int, min_lr_ratio: float, schedule: str = "cosine", decay_fraction: float = 0.2
) -> float:
    """Linear warmup, then either cosine decay to min_lr_ratio, or warmup-stable-decay: constant,
    then a linear decay to min_lr_ratio over the last `decay_fraction` of the steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * steps))
        decay_start = max(warmup_steps, steps - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, steps - decay_start))
        return 1.0 - (1 - min_lr_ratio) * progress
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
