"""Per-document quality filters and the document id. Each drop has a named reason."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from llm_pipeline.finite import check_finite_fields



@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 64
    max_chars: int = 1_000_000
    # Share of characters that are printable or ordinary whitespace; binary junk and
    # mis-decoded text score low.
    min_printable_fraction: float = 0.95
    near_dedup: bool = True
    # Estimated Jaccard similarity of word 5-gram sets above which a later document is a
    # near duplicate of an earlier one.
    near_dedup_threshold: float = 0.85

    def __post_init__(self):
        check_finite_fields(self)
        if self.min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars < max(1, self.min_chars):
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars}) and >= 1")
        if not 0.0 <= self.min_printable_fraction <= 1.0:
            raise ValueError(f"min_printable_fraction must be in [0, 1], got {self.min_printable_fraction}")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            raise ValueError(f"near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}")


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
