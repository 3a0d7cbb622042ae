"""Glob patterns matched in time linear in the name, whatever the pattern.

Python's regular expressions backtrack: the regular expression fsspec makes of `*a*a*a*a*a*a*b` takes
minutes on one 80-character name. Here a pattern becomes a small automaton instead (one position per
pattern element; stars loop on their position), simulated on all positions at once, so a name costs
at most (its length) x (the pattern's length) steps. Sets of positions become states of a lazily built
DFA: after the first few names, a character costs one dictionary lookup.

Where a pattern cannot backtrack far, the regular expression is used instead, because it runs in C
(10x faster a name): a path glob with at most one star in each segment and at most one `**`, or an
fnmatch pattern with at most one star. Each star then has one place to end for each folder of the
name, so a name costs at most (its length) x (its folders) steps; `**/*.py`, `*.jsonl.gz` and
`site-packages/*` are such patterns, `*a*a*b` is not.

Two dialects, with the semantics of the functions they replace:
- `path_glob`: fsspec's glob (`glob_translate`): `*` and `?` stay within a path segment, a segment
  `*` is one or more characters, a segment `**` is any number of folders (`**/` may be none);
- `fnmatch_pattern`: `fnmatch.fnmatchcase`: `*` and `?` match `/` too.
Character classes (`[a-z]`, `[!...]`) as fnmatch reads them; a class that can match nothing (`[z-a]`)
and an unclosed `[` are refused, as a mistake rather than a literal.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from fsspec.utils import glob_translate

MAX_PATTERN_CHARS = 4096  # longer than any path; a 10 MB pattern is refused, not compiled
_MAX_CACHED_STATES = 4096  # DFA states kept per pattern; past it the cache starts again

Char = Callable[[str], bool]


def _not_sep(c: str) -> bool:
    return c != "/"


def _anything(c: str) -> bool:
    return True


def _literal(expected: str) -> Char:
    return expected.__eq__


@dataclass
class _Element:
    accepts: Char
    loops: bool = False  # a star: zero or more of `accepts`


@dataclass
class Pattern:
    """A compiled pattern: `match(name)` is true when the whole name matches."""

    text: str
    elements: list[_Element]
    skips: dict[int, int]  # optional groups: from the group's first position to the position after it
    regex: re.Pattern | None = None  # the same language, where it cannot backtrack far (see above)
    _states: dict[frozenset[int], int] = field(default_factory=dict)
    _sets: list[frozenset[int]] = field(default_factory=list)
    _moves: dict[tuple[int, str], int] = field(default_factory=dict)

    def _closure(self, positions: set[int]) -> frozenset[int]:
        todo, seen = list(positions), set(positions)
        while todo:
            at = todo.pop()
            nexts = []
            if at < len(self.elements) and self.elements[at].loops:
                nexts.append(at + 1)
            if at in self.skips:
                nexts.append(self.skips[at])
            for n in nexts:
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return frozenset(seen)

    def _state(self, positions: frozenset[int]) -> int:
        if positions not in self._states:
            if len(self._sets) >= _MAX_CACHED_STATES:
                self._states.clear()
                self._sets.clear()
                self._moves.clear()
            self._states[positions] = len(self._sets)
            self._sets.append(positions)
        return self._states[positions]

    def match(self, name: str) -> bool:
        if self.regex is not None:
            return self.regex.match(name) is not None
        return self.automaton_match(name)

    def automaton_match(self, name: str) -> bool:
        state = self._state(self._closure({0}))
        end = len(self.elements)
        for c in name:
            move = self._moves.get((state, c))
            if move is None:
                positions = self._sets[state]
                after = set()
                for at in positions:
                    if at < end and self.elements[at].accepts(c):
                        after.add(at if self.elements[at].loops else at + 1)
                move = self._state(self._closure(after))
                self._moves[(state, c)] = move
                state = move
                if not self._sets[state]:
                    return False
            else:
                state = move
                if not self._sets[state]:
                    return False
        return end in self._sets[state]


def _check_length(pattern: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"longer than {MAX_PATTERN_CHARS:,} characters ({len(pattern):,})")


def _class(pattern: str, i: int) -> tuple[Char, int]:
    """The class starting at pattern[i] == '[': its test and the index after its ']'."""
    j = i + 1
    negate = j < len(pattern) and pattern[j] in "!"
    if negate:
        j += 1
    start = j
    if j < len(pattern) and pattern[j] == "]":  # a ']' first is a member
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 1
    if j >= len(pattern):
        raise ValueError(f"'[' at character {i + 1} is never closed (write [[] for a literal '[')")
    body = pattern[start:j]
    singles, ranges = set(), []
    k = 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            low, high = body[k], body[k + 2]
            if low > high:
                raise ValueError(f"range {low}-{high} in {pattern[i : j + 1]!r} is empty")
            ranges.append((low, high))
            k += 3
        else:
            singles.add(body[k])
            k += 1

    def accepts(c: str) -> bool:
        member = c in singles or any(low <= c <= high for low, high in ranges)
        return member != negate

    return accepts, j + 1


def _segment(pattern: str, star: Char, question: Char, elements: list[_Element]) -> None:
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if not (elements and elements[-1].loops and elements[-1].accepts is star):  # ** within fnmatch: one star
                elements.append(_Element(star, loops=True))
            i += 1
        elif c == "?":
            elements.append(_Element(question))
            i += 1
        elif c == "[":
            accepts, i = _class(pattern, i)
            elements.append(_Element(accepts))
        else:
            elements.append(_Element(_literal(c)))
            i += 1


@functools.lru_cache(maxsize=256)
def fnmatch_pattern(pattern: str) -> Pattern:
    """`pattern` with `fnmatch.fnmatchcase`'s meaning, matched in linear time."""
    _check_length(pattern)
    elements: list[_Element] = []
    _segment(pattern, _anything, _anything, elements)
    stars = sum(e.loops for e in elements)
    return Pattern(pattern, elements, {}, re.compile(fnmatch.translate(pattern)) if stars <= 1 else None)


@functools.lru_cache(maxsize=256)
def path_glob(pattern: str) -> Pattern:
    """`pattern` with fsspec's glob meaning (the regular expression `glob_translate` makes), matched in linear time."""
    _check_length(pattern)
    elements: list[_Element] = []
    skips: dict[int, int] = {}
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "*":  # one or more characters of one segment
            elements += [_Element(_not_sep), _Element(_not_sep, loops=True)]
            if not last:
                elements.append(_Element(_literal("/")))
            continue
        if part == "**":
            if last:  # everything below
                elements.append(_Element(_anything, loops=True))
            else:  # (?:.+/)? : no folder, or any characters ending with a '/'
                start = len(elements)
                elements += [_Element(_anything), _Element(_anything, loops=True), _Element(_literal("/"))]
                skips[start] = len(elements)
            continue
        if "**" in part:
            raise ValueError("'**' can only be an entire path component")
        _segment(part, _not_sep, _not_sep, elements)
        if not last:
            elements.append(_Element(_literal("/")))
    shallow = pattern.count("**") <= 1 and all(part == "**" or part.count("*") <= 1 for part in parts)
    return Pattern(pattern, elements, skips, re.compile(glob_translate(pattern)) if shallow else None)
