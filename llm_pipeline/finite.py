"""One rule for every float setting: it must be a finite number (NaN and infinities are refused by name)."""

from __future__ import annotations

import dataclasses
import math


def check_finite(values: dict, where: str = "") -> None:
    """ValueError naming the first float in `values` (name -> value) that is NaN or infinite."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            prefix = f"{where}: " if where else ""
            raise ValueError(f"{prefix}{name} must be a finite number, got {value}")


def check_finite_fields(config) -> None:
    """The rule over a dataclass's fields; each config dataclass calls it first in __post_init__."""
    check_finite({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
