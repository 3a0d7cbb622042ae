"""Gopher's document rules (Rae et al. 2021, table A1), with the published thresholds as defaults.

Each returns the name of the first rule a document breaks, or None. The rules and their order are
datatrove 0.10.1's `GopherRepetitionFilter` and `GopherQualityFilter` with a whitespace word split
(`benchmarks.filter_conformance` checks that both make the same decisions).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from llm_pipeline.corpus.cleaning.text import PUNCTUATION_SET
from llm_pipeline.corpus.near_dedup import _MIX, Powers

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile("\n+")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
# Deleting these leaves nothing of a word made only of punctuation (the whitespace among them never
# occurs inside a word that str.split() made).
_DELETE_PUNCTUATION = {ord(c): None for c in PUNCTUATION_SET if not c.isspace()}


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


class _Words:
    """A document's words as 64-bit hashes of any run of consecutive words, joined with nothing: the
    hash of words[i:j] is a polynomial hash of that substring of "".join(words), so two runs hash
    alike exactly when their joined text is alike (up to 64-bit collisions), as the reference's joined
    strings compare; its length in characters is kept beside it. Numpy does every n at once instead
    of one Python string per n-gram."""

    def __init__(self, words: list[str]):
        self.count = len(words)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.starts = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        codes = np.frombuffer("".join(words).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        up, down = Powers.upto(codes.size)
        self.prefix = np.zeros(codes.size + 1, dtype=np.uint64)
        self.down = down
        with np.errstate(over="ignore"):
            np.cumsum((codes.astype(np.uint64) + np.uint64(1)) * up[: codes.size], out=self.prefix[1:])
        self.singles = self.runs(1)[0]

    def runs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, characters) of words[i:i+n] joined with nothing, for each i."""
        count = self.count - n + 1
        first, last = self.starts[:count], self.starts[n : n + count]
        chars = last - first
        with np.errstate(over="ignore"):
            hashes = (self.prefix[last] - self.prefix[first]) * self.down[first]
            hashes += chars.astype(np.uint64) * _MIX[1]  # a different length is a different run
        return hashes, chars


def _top_ngram_chars(words: _Words, n: int) -> int:
    """Characters of the most frequent word n-gram joined by spaces, times its count; among n-grams
    as frequent, the first to occur (as Counter.most_common(1) picks)."""
    singles = words.singles
    count = words.count - n + 1
    with np.errstate(over="ignore"):
        keys = singles[:count] * _MIX[0]
        for j in range(1, n):
            keys = keys * _MIX[2] + singles[j : j + count] * _MIX[j + 2]
    listed = keys.tolist()  # a Python Counter beats numpy's unique on a document's few hundred words
    key, top = Counter(listed).most_common(1)[0]
    at = listed.index(key)
    return (int(words.starts[at + n] - words.starts[at]) + n - 1) * top


def _repeated_ngram_chars(words: _Words, n: int) -> int:
    """Characters in n-grams (words joined with nothing, as Gopher's reference does) that repeat an
    earlier one; a repeat skips its n words, so overlapping repeats are not counted twice."""
    if words.count < n:
        return 0
    hashes, chars = words.runs(n)
    keys = hashes.tolist()
    if len(set(keys)) == len(keys):  # no n-gram occurs twice: nothing to count
        return 0
    seen: set[int] = set()
    repeated = idx = 0
    sizes = chars.tolist()
    while idx < len(keys):
        if keys[idx] in seen:
            repeated += sizes[idx]
            idx += n
        else:
            seen.add(keys[idx])
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
        words = _Words(text.split())
        for n, limit in self.top_n_grams:
            if words.count >= n and _top_ngram_chars(words, n) / len(text) > limit:
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
        real_words = [w for w in words if w.translate(_DELETE_PUNCTUATION)]
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
        if sum(w.isalpha() or any(map(str.isalpha, w)) for w in words) / n_words < self.min_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
        if len(STOP_WORDS.intersection(words)) < self.min_stop_words:
            return "gopher_enough_stop_words"
        return None
