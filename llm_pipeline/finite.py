"""Run configuration from the launchpad: its floats must be finite numbers (NaN and infinities refused by name).
Library configs get the same rule from `Settings` (allow_inf_nan=False)."""

from __future__ import annotations

import math


def check_finite(values: dict, where: str = "") -> None:
    """ValueError naming the first float in `values` (name -> value) that is NaN or infinite."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}{name} must be a finite number, got {value}")

