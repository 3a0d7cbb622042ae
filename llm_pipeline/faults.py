"""Fault injection for the crash and divergence tests, off unless LLM_PIPELINE_TEST_CRASH (or _PAUSE, _SPIKE) is set.

"<point>:<rank>:<step>:<flag file>" (several, comma-separated) SIGKILLs the process that reaches that point (of that rank and
step; 0 and 0 where there are none) once: the flag file records that it fired, so the retry runs
through. The kill is the real thing (no cleanup, no exception handlers), as an OOM kill or a lost
node would be.
"""

from __future__ import annotations

import os
import signal
import time

CRASH_ENV = "LLM_PIPELINE_TEST_CRASH"
# The same specs; the process stops there instead, until something outside kills it (a test taking
# its node away at a known step).
PAUSE_ENV = "LLM_PIPELINE_TEST_PAUSE"


def crash_point(point: str, rank: int = 0, step: int = 0) -> None:
    if _fires(CRASH_ENV, point, rank, step):
        os.kill(os.getpid(), signal.SIGKILL)
    if _fires(PAUSE_ENV, point, rank, step):
        while True:
            time.sleep(1)


def _fires(variable: str, point: str, rank: int, step: int) -> bool:
    specs = os.environ.get(variable)
    if not specs:
        return False
    for spec in specs.split(","):
        want_point, want_rank, want_step, flag = spec.split(":", 3)
        if (want_point, int(want_rank), int(want_step)) == (point, rank, step) and not os.path.exists(flag):
            with open(flag, "w") as f:
                f.write(f"{point} rank {rank} step {step}\n")
            return True
    return False


# A loss spike for the divergence tests: the step whose samples include global sample <K> has its
# loss (and so its gradients) multiplied by <factor>. Tied to the data, not to the step: a rollback
# that skips the sample never sees it again; a resume from before it sees it again.
SPIKE_ENV = "LLM_PIPELINE_TEST_SPIKE"  # "<K>:<factor>"


def spike_factor(first_sample: int, end_sample: int) -> float:
    spec = os.environ.get(SPIKE_ENV)
    if not spec:
        return 1.0
    sample, factor = spec.split(":")
    return float(factor) if first_sample <= int(sample) < end_sample else 1.0
