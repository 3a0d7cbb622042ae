"""How a batch's drops by reason compare with the batch before it: a filter whose share of the records
moves by many points usually means the data changed (another site, another language, a broken
extractor), not that the filter did."""

from __future__ import annotations

from collections.abc import Mapping


def drop_shares(records: int, dropped: Mapping[str, int]) -> dict[str, float]:
    """Each drop reason's share of the records read (0-1); a batch's `records` and `dropped` (its manifest's)."""
    return {reason: n / records for reason, n in dropped.items()} if records else {}


def moved_shares(before: Mapping[str, float], after: Mapping[str, float], points: float) -> list[tuple[str, float, float]]:
    """(reason, previous share, this share) for each reason whose share (`drop_shares`) moved more than
    `points` percentage points between two batches, largest move first."""
    moved = [(r, before.get(r, 0.0), after.get(r, 0.0)) for r in sorted(set(before) | set(after))]
    moved = [m for m in moved if abs(m[2] - m[1]) * 100 > points]
    return sorted(moved, key=lambda m: -abs(m[2] - m[1]))
