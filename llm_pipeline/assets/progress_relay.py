"""The trainer's progress, live: Dagster Pipes hands a custom message to the asset only when the
trainer has ended, so this reader relays each progress and validation record as it arrives, as a log
line (the same line the trainer prints on its own) with the record attached (`extra`), which `make
demo`'s console draws its bar from. Every message still goes on to Dagster as before."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, cast

import dagster as dg
from dagster_pipes import PipesParams

from llm_pipeline.train.progress import PROGRESS, VALIDATION, progress_line, validation_line

RECORD_ATTR = "training_progress"  # the log record's attribute that holds the progress record


class _Relaying:
    """Pipes' message handler with one more job: progress records to the run's log as they come."""

    def __init__(self, handler, log: logging.Logger):
        self._handler = handler
        self._log = log

    def handle_message(self, message) -> None:
        if message.get("method") == "report_custom_message":
            payload = (message.get("params") or {}).get("payload")
            if isinstance(payload, dict) and payload.get("kind") == PROGRESS:
                self._log.info(progress_line(payload), extra={RECORD_ATTR: payload})
            elif isinstance(payload, dict) and payload.get("kind") == VALIDATION:
                self._log.info(validation_line(payload), extra={RECORD_ATTR: payload})
        self._handler.handle_message(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


class ProgressRelay(dg.PipesMessageReader):
    """Wraps a launcher's message reader (the subprocess client's temp file, dagster-ray's job log)."""

    def __init__(self, inner: dg.PipesMessageReader, log: logging.Logger):
        self._inner = inner
        self._log = log

    @contextlib.contextmanager
    def read_messages(self, handler) -> Iterator[PipesParams]:
        with self._inner.read_messages(cast(Any, _Relaying(handler, self._log))) as params:
            yield params

    def on_opened(self, opened_payload) -> None:
        self._inner.on_opened(opened_payload)

    def on_launched(self, launched_payload) -> None:
        self._inner.on_launched(launched_payload)

    @property
    def expected_writer_count(self) -> int:
        return self._inner.expected_writer_count

    def no_messages_debug_text(self) -> str:
        return self._inner.no_messages_debug_text()
