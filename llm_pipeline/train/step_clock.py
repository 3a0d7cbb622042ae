"""Where a training step's host time goes, by phase, summed over the run.

Plain `perf_counter` laps (about 100 ns each), always on: the summary carries milliseconds per step
for each phase, so a slower step shows which part grew. On a GPU these are host times: the device
runs asynchronously, and its time shows up where the host waits for it (the loss sync).
"""

from __future__ import annotations

import time
from collections import defaultdict


class StepClock:
    def __init__(self):
        self.totals: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """The time since the last lap (or restart) belongs to `phase`."""
        now = time.perf_counter()
        self.totals[phase] += now - self._last
        self._last = now

    def per_step_ms(self, steps: int) -> dict[str, float]:
        return {phase: round(1000 * seconds / max(steps, 1), 3) for phase, seconds in self.totals.items()}
