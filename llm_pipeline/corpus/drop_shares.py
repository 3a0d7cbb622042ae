"""How a batch's drops by reason compare with the batch before it: a filter whose share of the records
moves by many points usually means the data changed (another site, another language, a broken
extractor), not that the filter did."""

from __future__ import annotations


def drop_shares(manifest: dict) -> dict[str, float]:
    """Each drop reason's share of the records read (0-1)."""
    records = manifest.get("records") or 0
    return {reason: n / records for reason, n in manifest.get("dropped", {}).items()} if records else {}


def moved_shares(previous: dict, current: dict, points: float) -> list[tuple[str, float, float]]:
    """(reason, previous share, this share) for each reason whose share moved more than `points`
    percentage points between the two manifests, largest move first."""
    before, after = drop_shares(previous), drop_shares(current)
    moved = [(r, before.get(r, 0.0), after.get(r, 0.0)) for r in sorted(set(before) | set(after))]
    moved = [m for m in moved if abs(m[2] - m[1]) * 100 > points]
    return sorted(moved, key=lambda m: -abs(m[2] - m[1]))
