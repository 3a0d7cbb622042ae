"""Gopher's document rules (Rae et al. 2021, table A1), with the published thresholds as defaults.

Each returns the name of the first rule a document breaks, or None. The rules and their order are
datatrove 0.10.1's `GopherRepetitionFilter` and `GopherQualityFilter` with a whitespace word split
(`benchmarks.filter_conformance` checks that both make the same decisions).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from llm_pipeline.corpus.cleaning.text import PUNCTUATION_SET

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile("\n+")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


def duplicates(items: list[str]) -> tuple[int, int]:
    """(items seen before, their characters) in order."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _top_ngram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most frequent word n-gram (joined by spaces) times its count."""
    counts = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    return len(gram) * count


def _repeated_ngram_chars(words: list[str], n: int) -> int:
    """Characters in n-grams (words joined with nothing, as Gopher's reference does) that repeat an
    earlier one; a repeat skips its n words, so overlapping repeats are not counted twice."""
    seen: set[str] = set()
    repeated = idx = 0
    last = len(words) - n + 1
    while idx < last:
        gram = "".join(words[idx : idx + n])
        if gram in seen:
            repeated += len(gram)
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return repeated


@dataclass(frozen=True)
class GopherRepetition:
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __call__(self, text: str) -> str | None:
        if not text:
            return "empty"
        paragraphs = _PARAGRAPHS.split(text.strip())
        count, chars = duplicates(paragraphs)
        if count / len(paragraphs) > self.dup_para_frac:
            return "dup_para_frac"
        if chars / len(text) > self.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = _LINES.split(text)
        count, chars = duplicates(lines)
        if count / len(lines) > self.dup_line_frac:
            return "dup_line_frac"
        if chars / len(text) > self.dup_line_char_frac:
            return "dup_line_char_frac"
        words = text.split()
        for n, limit in self.top_n_grams:
            if len(words) >= n and _top_ngram_chars(words, n) / len(text) > limit:
                return f"top_{n}_gram"
        for n, limit in self.dup_n_grams:
            if _repeated_ngram_chars(words, n) / len(text) > limit:
                return f"duplicated_{n}_n_grams"
        return None


@dataclass(frozen=True)
class GopherQuality:
    min_doc_words: int = 50
    max_doc_words: int = 100_000
    min_avg_word_length: float = 3
    max_avg_word_length: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8
    min_stop_words: int = 2

    def __call__(self, text: str) -> str | None:
        words = text.split()
        n_words = len(words)
        real_words = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
        if len(real_words) < self.min_doc_words:
            return "gopher_short_doc"
        if len(real_words) > self.max_doc_words:
            return "gopher_long_doc"
        mean_length = sum(len(w) for w in real_words) / len(real_words)
        if mean_length < self.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if mean_length > self.max_avg_word_length:
            return "gopher_above_avg_threshold"
        if text.count("#") / n_words > self.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if (text.count("...") + text.count("\u2026")) / n_words > self.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if sum(s.lstrip().startswith(("\u2022", "-")) for s in lines) / len(lines) > self.max_bullet_lines_ratio:
            return "gopher_too_many_bullets"
        if sum(s.rstrip().endswith(("...", "\u2026")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return "gopher_too_many_end_ellipsis"
        if sum(any(c.isalpha() for c in w) for w in words) / n_words < self.min_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
        if len(STOP_WORDS.intersection(words)) < self.min_stop_words:
            return "gopher_enough_stop_words"
        return None
