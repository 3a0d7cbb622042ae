"""Per-document quality filters and the document id. Each drop has a named reason."""

from __future__ import annotations

import hashlib
import re

from pydantic import Field, model_validator

from llm_pipeline.settings import Settings


class FilterConfig(Settings):
    min_chars: int = Field(default=64, ge=0, description="drop documents shorter than this")
    max_chars: int = Field(default=1_000_000, description="drop documents longer than this")
    # Printable or ordinary whitespace characters; binary junk and mis-decoded text score low.
    min_printable_fraction: float = Field(
        default=0.95, ge=0, le=1, description="drop documents with a smaller share of printable characters"
    )
    near_dedup: bool = Field(default=True, description="drop near duplicates too (MinHash LSH), not only exact ones")
    near_dedup_threshold: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="estimated Jaccard similarity of word 5-gram sets above which a later document is a near duplicate",
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_chars < max(1, self.min_chars):
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars}) and >= 1")
        return self


def document_id(text: str) -> str:
    """Stable content hash: the same text always gets the same id, wherever it came from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


_UNPRINTABLE = re.compile(r"[^\t\n\r\x20-\x7e\u00a0-\U0010ffff]|[\ud800-\udfff\ufffd]")


_ASCII_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"


def printable_fraction(text: str) -> float:
    if not text:
        return 0.0
    if text.isascii():  # the common case, at C speed: count the control characters
        data = text.encode("ascii")
        return len(data.translate(None, _ASCII_CONTROL)) / len(data)
    return 1.0 - len(_UNPRINTABLE.findall(text)) / len(text)


def quality_reason(text: str, cfg: FilterConfig) -> str | None:
    """Why a decoded document is rejected, or None if it is kept."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if printable_fraction(text) < cfg.min_printable_fraction:
        return "low_quality"
    return None
