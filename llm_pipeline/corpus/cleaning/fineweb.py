"""FineWeb's own quality rules (Penedo et al. 2024), as datatrove 0.10.1's `FineWebQualityFilter`."""

from __future__ import annotations

from dataclasses import dataclass

from llm_pipeline.corpus.cleaning.gopher import duplicates
from llm_pipeline.corpus.cleaning.text import TERMINAL_PUNCTUATION_TUPLE


@dataclass(frozen=True)
class FineWebQuality:
    line_punct_thr: float = 0.12
    short_line_thr: float = 0.67
    short_line_length: int = 30
    char_duplicates_ratio: float = 0.01
    new_line_ratio: float = 0.3

    def __call__(self, text: str) -> str | None:
        lines = [line for line in text.split("\n") if line.strip() != ""]
        if not lines:
            return "empty"
        if sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION_TUPLE)) / len(lines) < self.line_punct_thr:
            return "line_punct_ratio"
        if sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines) > self.short_line_thr:
            return "short_line_ratio"
        if duplicates(lines)[1] / len(text.replace("\n", "")) > self.char_duplicates_ratio:
            return "char_dup_ratio"
        if text.count("\n") / len(text.split()) > self.new_line_ratio:
            return "list_ratio"
        return None
