"""Progress reporting from rank 0: through Dagster Pipes when launched by Dagster, else stdout.

`dagster_pipes` is the small, dependency-free client package; the trainer never imports dagster.
"""

from __future__ import annotations

import contextlib
import os
import sys

PROGRESS = "progress"  # the `kind` of the trainer's progress messages
VALIDATION = "validation"  # ... and of its validations while it trains


def progress_line(record: dict) -> str:
    """The one line a progress record is shown as, by the trainer on its own and by the Dagster run."""
    return (
        f"step {record['step']}/{record['steps']} loss {record['loss']:.4f} lr {record['lr']:.2e} "
        f"{record['tokens_per_s']:,.0f} tok/s elapsed {record['elapsed_s']:.0f}s eta {record['eta_s']:.0f}s"
    )


def validation_line(record: dict) -> str:
    """The one line a validation record is shown as."""
    bits = f", {record['bits_per_byte']:.4f} bits per byte" if record.get("bits_per_byte") is not None else ""
    return f"validation at step {record['step']}: loss {record['loss']:.4f}{bits}"


class Reporter:
    def __init__(self, pipes=None, quiet: bool = False):
        self.pipes = pipes
        self.quiet = quiet  # ranks other than 0 report warnings only

    # Under Dagster, a message goes through Pipes only (Dagster shows and stores it); printing it
    # as well showed every line twice.
    def info(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        elif not self.quiet:
            print(message, file=sys.stdout, flush=True)

    def warning(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.warning(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr, flush=True)

    def progress(self, record: dict) -> None:
        """A structured record under Dagster (the run logs it as its line, and `make demo` draws its
        bar from it: assets/progress_relay.py); the line itself on a terminal."""
        if self.pipes is not None:
            self.pipes.report_custom_message({"kind": PROGRESS, **record})
        elif not self.quiet:
            print(progress_line(record), file=sys.stdout, flush=True)

    def validation(self, record: dict) -> None:
        """A validation's figures, as `progress` reports a step's."""
        if self.pipes is not None:
            self.pipes.report_custom_message({"kind": VALIDATION, **record})
        elif not self.quiet:
            print(validation_line(record), file=sys.stdout, flush=True)


@contextlib.contextmanager
def open_reporter(is_rank0: bool):
    from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, open_dagster_pipes

    # Launched by Dagster: Pipes' context is in the environment (every rank inherits it; only
    # rank 0 talks). Launched by hand: plain stdout.
    if not is_rank0:
        yield Reporter(None, quiet=True)
        return
    if DAGSTER_PIPES_CONTEXT_ENV_VAR not in os.environ:
        yield Reporter(None)
        return
    with open_dagster_pipes() as pipes:
        yield Reporter(pipes)
