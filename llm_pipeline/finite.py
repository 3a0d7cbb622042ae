"""Run configuration from the launchpad: its floats must be finite numbers (NaN and infinities refused by name),
however deep they sit (a `min_scores` entry, a `mixture` weight). Library configs get the same rule from
`Settings` (allow_inf_nan=False)."""

from __future__ import annotations

import math


def check_finite(values: dict, where: str = "") -> None:
    """ValueError naming the first float in `values` (name -> value, nested dicts and lists too) that is NaN or infinite."""
    prefix = f"{where}: " if where else ""
    for name, value in _floats(values, ""):
        if not math.isfinite(value):
            raise ValueError(f"{prefix}{name} must be a finite number, got {value}")


def _floats(value, name: str):
    if isinstance(value, float):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _floats(item, f"{name}[{key!r}]" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _floats(item, f"{name}[{i}]")
