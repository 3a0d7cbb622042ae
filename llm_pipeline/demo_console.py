"""What `make demo` prints: one line per stage with its time, a training progress bar on a terminal,
and failures in full. Every event also goes, unabridged, to a log file (and, as always, to the
Dagster instance the UI reads)."""

from __future__ import annotations

import logging
import sys

import dagster as dg

from llm_pipeline.assets.progress_relay import RECORD_ATTR
from llm_pipeline.train.progress import VALIDATION, validation_line

_BAR = 30


class StageLines(logging.Handler):
    def __init__(self, out=None):
        super().__init__(logging.DEBUG)
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.bar_open = False
        self.checks: set[str] = set()  # a check's own step says what its evaluation line said
        self.assets: set[str] = set()  # an asset's step that also checks it (raw_corpus) still gets its line

    def _write(self, text: str) -> None:
        if self.bar_open:
            self.out.write("\n")
            self.bar_open = False
        self.out.write(text + "\n")
        self.out.flush()

    def _bar(self, progress: dict) -> None:
        """From the trainer's progress record (train/progress.py), as the run's log relayed it."""
        step, steps = progress["step"], progress["steps"]
        done = _BAR * step // max(steps, 1)
        line = (
            f"  training  [{'#' * done}{'.' * (_BAR - done)}] step {step}/{steps}  loss {progress['loss']:.4f}  "
            f"{progress['tokens_per_s']:,.0f} tok/s  eta {progress['eta_s']:.0f}s"
        )
        if self.tty:  # one line redrawn in place
            self.out.write("\r" + line)
            self.out.flush()
            self.bar_open = step < steps
            if not self.bar_open:
                self.out.write("\n")
        elif step == steps or step % max(steps // 4, 1) == 0:  # a log file or a pipe: a few lines
            self._write(line)

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:
            progress = getattr(record, RECORD_ATTR, None)
            if progress is not None and progress.get("kind") == VALIDATION:
                self._write(f"  {validation_line(progress)}")
            elif progress is not None:
                self._bar(progress)
            elif record.levelno >= logging.WARNING:
                self._write(f"  {step}: {meta.get('orig_message', record.getMessage())}")
            return
        kind = event.event_type_value
        if kind == "ASSET_MATERIALIZATION":
            self.assets.add(step)
        if kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            self.checks.add(step)
            self._write(f"  check {data.check_name:<34} {'passed' if data.passed else 'FAILED'}: {data.description}")
        elif step in self.checks and step not in self.assets:
            return
        elif kind == "STEP_SUCCESS":
            self._write(f"  {step:<20} done in {event.event_specific_data.duration_ms / 1000:6.1f}s")
        elif kind == "STEP_FAILURE":
            self._write(f"  {step:<20} FAILED: {event.event_specific_data.error.message.strip()}")


def demo_logger(log_path: str, console=None) -> dg.LoggerDefinition:
    """Stage lines on `console` (default stdout); the full event log in `log_path`."""

    @dg.logger(config_schema={}, description="make demo: one line per stage, a training progress bar; everything to a file")
    def demo_console(_init_context):
        logger = logging.Logger("llm_pipeline.demo", level=logging.DEBUG)
        logger.addHandler(StageLines(console))
        everything = logging.FileHandler(log_path)
        everything.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(everything)
        return logger

    return demo_console
