"""Gopher's document rules (Rae et al. 2021, table A1), with the published thresholds as defaults.

Each names the first rule a document breaks, or None. The rules and their order are datatrove 0.10.1's
`GopherRepetitionFilter` and `GopherQualityFilter` with a whitespace word split
(`benchmarks.filter_conformance` checks that both make the same decisions).

Both work on many documents at once (`many`): the word n-gram counts that cost datatrove one Python
string per n-gram are numpy over a batch's words here. A run of words is a 64-bit polynomial hash of
its characters, so two runs compare as their text does (up to 64-bit collisions); only a document
that repeats an n-gram goes through the reference's greedy count in Python.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm_pipeline.corpus.cleaning.text import PUNCTUATION_SET
from llm_pipeline.corpus.near_dedup import _MIX, Powers

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


def _char_table(predicate) -> np.ndarray:
    """predicate(chr(c)) for every code point below 0x10000 (the rest are looked up one by one)."""
    return np.fromiter((predicate(chr(c)) for c in range(0x10000)), dtype=bool, count=0x10000)


class _Tables:
    punctuation: np.ndarray | None = None
    alpha: np.ndarray | None = None

    @classmethod
    def get(cls) -> tuple[np.ndarray, np.ndarray]:
        if cls.punctuation is None or cls.alpha is None:  # once per process, ~30 ms
            cls.punctuation = _char_table(PUNCTUATION_SET.__contains__)
            cls.alpha = _char_table(str.isalpha)
        return cls.punctuation, cls.alpha


class Words:
    """The words (`str.split()`) of a batch of documents, end to end: per word its document and the
    span of its characters in the concatenation of all words; a prefix hash over those characters."""

    def __init__(self, texts: Sequence[str]):
        split = [t.split() for t in texts]
        self.per_doc = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        self.words: list[str] = [w for ws in split for w in ws]
        self.doc = np.repeat(np.arange(len(split)), self.per_doc)
        self.first_word = np.zeros(len(split) + 1, dtype=np.int64)
        np.cumsum(self.per_doc, out=self.first_word[1:])
        lengths = np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))
        self.starts = np.zeros(len(self.words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self.codes = np.frombuffer("".join(self.words).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        up, down = Powers.upto(self.codes.size)
        self.down = down
        self.prefix = np.zeros(self.codes.size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum((self.codes.astype(np.uint64) + np.uint64(1)) * up[: self.codes.size], out=self.prefix[1:])
        self.singles = self.runs(np.arange(len(self.words)), 1)[0]

    def windows(self, n: int) -> np.ndarray:
        """The first word of every run of n words that stays inside one document."""
        first = np.arange(max(len(self.words) - n + 1, 0))
        return first[self.doc[first] == self.doc[first + n - 1]] if n > 1 else first

    def runs(self, first: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, characters) of words[i:i+n] joined with nothing, for each i in `first`."""
        begin, end = self.starts[first], self.starts[first + n]
        chars = end - begin
        with np.errstate(over="ignore"):
            hashes = (self.prefix[end] - self.prefix[begin]) * self.down[begin]
            hashes += chars.astype(np.uint64) * _MIX[1]  # a different length is a different run
        return hashes, chars


def _per_doc_sum(values: np.ndarray, first_word: np.ndarray) -> list[int]:
    """Sum of per-word `values` for each document (0 for a document without words)."""
    counts = np.diff(first_word)
    out = np.zeros(counts.size, dtype=np.int64)
    filled = counts > 0
    if filled.any():
        out[filled] = np.add.reduceat(values, first_word[:-1][filled])
    return out.tolist()


def _grouped(doc: np.ndarray, keys: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, ...]:
    """Equal (document, key) pairs grouped: each group's document, size and first word."""
    mixed = _per_document(doc, keys)
    order = np.argsort(mixed)
    ordered = mixed[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]])) if ordered.size else np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.append(starts, ordered.size))
    earliest = np.minimum.reduceat(first[order], starts) if starts.size else starts
    return doc[order][starts], sizes, earliest


def _per_document(doc: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """One key per (document, n-gram)."""
    with np.errstate(over="ignore"):
        return keys ^ (doc.astype(np.uint64) * _MIX[7])


def _top_ngram_chars(words: Words, n: int) -> np.ndarray:
    """Per document: characters of its most frequent word n-gram joined by spaces, times its count;
    among n-grams as frequent, the first to occur (as Counter.most_common(1) picks). -1: fewer than n words."""
    first = words.windows(n)
    with np.errstate(over="ignore"):
        keys = words.singles[first] * _MIX[0]
        for j in range(1, n):
            keys = keys * _MIX[2] + words.singles[first + j] * _MIX[j + 2]
    doc, count, at = _grouped(words.doc[first], keys, first)
    out = np.full(words.per_doc.size, -1, dtype=np.int64)
    if not doc.size:
        return out
    # per document, the largest count and then the earliest first word: one sort key
    rank = (doc << 48) | ((_LIMIT - count) << 24) | at if at.max() < _LIMIT and count.max() < _LIMIT else None
    best = np.argsort(rank) if rank is not None else np.lexsort((at, -count, doc))
    doc, count, at = doc[best], count[best], at[best]
    lead = np.concatenate([[True], doc[1:] != doc[:-1]])
    chars = words.starts[at[lead] + n] - words.starts[at[lead]] + n - 1
    out[doc[lead]] = chars * count[lead]
    return out


_LIMIT = 1 << 24


def _repeated_ngram_chars(words: Words, n: int) -> np.ndarray:
    """Per document: characters in n-grams (words joined with nothing, as Gopher's reference does)
    that repeat an earlier one; a repeat skips its n words, so overlapping repeats count once."""
    first = words.windows(n)
    keys, chars = words.runs(first, n)
    doc = words.doc[first]
    out = np.zeros(words.per_doc.size, dtype=np.int64)
    mixed = _per_document(doc, keys)
    ordered = np.sort(mixed)
    repeats = ordered[1:][ordered[1:] == ordered[:-1]]
    if not repeats.size:  # no document repeats an n-gram: the usual case, one sort
        return out
    for d in np.unique(doc[np.isin(mixed, repeats)]).tolist():  # the reference's greedy walk, where a document repeats
        lo, hi = np.searchsorted(doc, [d, d + 1])
        seen: set[int] = set()
        repeated = idx = 0
        doc_keys, doc_chars = keys[lo:hi].tolist(), chars[lo:hi].tolist()
        while idx < len(doc_keys):
            if doc_keys[idx] in seen:
                repeated += doc_chars[idx]
                idx += n
            else:
                seen.add(doc_keys[idx])
                idx += 1
        out[d] = repeated
    return out


@dataclass(frozen=True)
class GopherRepetition:
    dup_line_frac: float = 0.3
    dup_para_frac: float = 0.3
    dup_line_char_frac: float = 0.2
    dup_para_char_frac: float = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))

    def __call__(self, text: str) -> str | None:
        return self.many([text])[0]

    def many(self, texts: Sequence[str]) -> list[str | None]:
        verdicts: list[str | None] = [self._lines(t) for t in texts]
        words = Words(texts)
        top = [(n, limit, _top_ngram_chars(words, n).tolist()) for n, limit in self.top_n_grams]
        repeated = [(n, limit, _repeated_ngram_chars(words, n).tolist()) for n, limit in self.dup_n_grams]
        for d, text in enumerate(texts):
            if verdicts[d] is not None:
                continue
            verdicts[d] = next((f"top_{n}_gram" for n, limit, chars in top if chars[d] >= 0 and chars[d] / len(text) > limit), None)
            if verdicts[d] is None:
                verdicts[d] = next((f"duplicated_{n}_n_grams" for n, limit, chars in repeated if chars[d] / len(text) > limit), None)
        return verdicts

    def _lines(self, text: str) -> str | None:
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
        return self.many([text])[0]

    def many(self, texts: Sequence[str]) -> list[str | None]:
        words = Words(texts)
        punctuation, alpha = _Tables.get()
        codes = words.codes
        small = codes < 0x10000
        # per character: not punctuation / a letter (the few code points past 0xFFFF asked one by one)
        not_punct = np.ones(codes.size, dtype=bool)
        letter = np.zeros(codes.size, dtype=bool)
        not_punct[small] = ~punctuation[codes[small]]
        letter[small] = alpha[codes[small]]
        for i in np.flatnonzero(~small).tolist():
            char = chr(int(codes[i])) if codes[i] < 0x110000 else ""
            not_punct[i], letter[i] = char not in PUNCTUATION_SET, char.isalpha()
        starts = words.starts[:-1]  # every word has a character, so every range below is non-empty
        has = np.add.reduceat(not_punct, starts) > 0 if starts.size else np.zeros(0, dtype=bool)
        has_letter = np.add.reduceat(letter, starts) > 0 if starts.size else np.zeros(0, dtype=bool)
        bounds = words.first_word
        real = _per_doc_sum(has.astype(np.int64), bounds)
        real_chars = _per_doc_sum(np.where(has, np.diff(words.starts), 0), bounds)
        alpha_words = _per_doc_sum(has_letter.astype(np.int64), bounds)
        per_doc = words.per_doc.tolist()
        out: list[str | None] = []
        for d, text in enumerate(texts):
            doc_words = words.words[bounds[d] : bounds[d + 1]]
            out.append(self._rules(text, doc_words, per_doc[d], real[d], real_chars[d], alpha_words[d]))
        return out

    def _rules(self, text: str, words: list[str], n_words: int, real: int, real_chars: int, alpha_words: int) -> str | None:
        if real < self.min_doc_words:
            return "gopher_short_doc"
        if real > self.max_doc_words:
            return "gopher_long_doc"
        mean_length = real_chars / real
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
        if alpha_words / n_words < self.min_alpha_words_ratio:
            return "gopher_below_alpha_threshold"
        if len(STOP_WORDS.intersection(words)) < self.min_stop_words:
            return "gopher_enough_stop_words"
        return None
