"""Credentials kept out of what Dagster stores: every log line of a step or a sensor tick (ours, and the
trainer's through Pipes), every metadata value of an asset's output and every failure message pass
llm_pipeline.redact on their way into the event log.

A URI a user gives may carry them (`https://user:password@host/corpus`, `?token=...`, a Ray address,
an S3 endpoint), and error messages of the libraries that read it quote it. The stage values'
own URIs live under the storage root, which carries none, so what other stages read back is unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import dagster as dg

from llm_pipeline.redact import redacted


class _RedactedLines(logging.Filter):
    """Rewrites a log record's message without credentials. Records that carry a Dagster event keep
    their structure: their text is Dagster's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "dagster_event", None) is None:
            message = record.getMessage()
            shown = redacted(message)
            if shown != message:
                record.msg, record.args = shown, ()
        return True


REDACTED_LINES = _RedactedLines()


def redacted_log(log: logging.Logger) -> logging.Logger:
    """`log` (a context's), every line it takes from now on redacted. Adding the filter twice is a no-op."""
    log.addFilter(REDACTED_LINES)
    return log


def redacted_value(value: Any) -> Any:
    """A metadata value without credentials: strings and the text of text-like values; JSON walked."""
    if isinstance(value, str):
        return redacted(value)
    if isinstance(value, dg.TextMetadataValue):
        return dg.MetadataValue.text(redacted(value.text or ""))
    if isinstance(value, dg.PathMetadataValue):
        return dg.MetadataValue.path(redacted(str(value.path)))
    if isinstance(value, dg.UrlMetadataValue):
        return dg.MetadataValue.url(redacted(value.url or ""))
    if isinstance(value, dg.MarkdownMetadataValue):
        return dg.MetadataValue.md(redacted(value.md_str or ""))
    if isinstance(value, dg.JsonMetadataValue):
        return dg.MetadataValue.json(_redacted_json(value.data))
    if isinstance(value, dict | list):
        return _redacted_json(value)
    return value


def _redacted_json(data: Any) -> Any:
    if isinstance(data, str):
        return redacted(data)
    if isinstance(data, dict):
        return {_redacted_json(key): _redacted_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_redacted_json(value) for value in data]
    return data


def _redacted_output(item: Any) -> Any:
    if not isinstance(item, dg.Output) or not item.metadata:
        return item
    metadata = {key: redacted_value(value) for key, value in item.metadata.items()}
    if metadata == item.metadata:
        return item
    return dg.Output(item.value, output_name=item.output_name, metadata=metadata, data_version=item.data_version, tags=item.tags)


def _redacted_failure(e: Exception) -> Exception | None:
    """The same failure without credentials, or None when it names none."""
    if isinstance(e, dg.Failure):
        description = e.description or ""
        if redacted(description) == description:
            return None
        return dg.Failure(description=redacted(description), metadata=e.metadata, allow_retries=e.allow_retries)
    message = str(e)
    shown = redacted(message)
    return None if shown == message else RuntimeError(f"{type(e).__name__}: {shown}")


def _context(args: tuple, kwargs: dict) -> Any:
    return args[0] if args else kwargs["context"]


def redacted_step(fn: Callable) -> Callable:
    """An asset's or a sensor's body with its log lines, output metadata and failure redacted. Put it
    under the Dagster decorator: Dagster reads the body's parameters through it."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            redacted_log(_context(args, kwargs).log)
            try:
                for item in fn(*args, **kwargs):
                    yield _redacted_output(item)
            except Exception as e:
                shown = _redacted_failure(e)
                if shown is None:
                    raise
                raise shown from None

        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        redacted_log(_context(args, kwargs).log)
        try:
            return _redacted_output(fn(*args, **kwargs))
        except Exception as e:
            shown = _redacted_failure(e)
            if shown is None:
                raise
            raise shown from None

    return function
