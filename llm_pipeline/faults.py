"""Fault injection for the crash tests, off unless LLM_PIPELINE_TEST_CRASH is set.

"<point>:<rank>:<step>:<flag file>" (several, comma-separated) SIGKILLs the process that reaches that point (of that rank and
step; 0 and 0 where there are none) once: the flag file records that it fired, so the retry runs
through. The kill is the real thing (no cleanup, no exception handlers), as an OOM kill or a lost
node would be.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "LLM_PIPELINE_TEST_CRASH"


def crash_point(point: str, rank: int = 0, step: int = 0) -> None:
    specs = os.environ.get(CRASH_ENV)
    if not specs:
        return
    for spec in specs.split(","):
        want_point, want_rank, want_step, flag = spec.split(":", 3)
        if (want_point, int(want_rank), int(want_step)) == (point, rank, step) and not os.path.exists(flag):
            with open(flag, "w") as f:
                f.write(f"{point} rank {rank} step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)
