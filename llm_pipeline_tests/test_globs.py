"""The linear-time glob matcher: the same answers as fsspec's glob and fnmatch, without backtracking."""

import fnmatch
import re
import time

import pytest
from fsspec.utils import glob_translate
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_pipeline.corpus.build import CorpusConfig
from llm_pipeline.corpus.sources import check_glob, list_sources
from llm_pipeline.globs import MAX_PATTERN_CHARS, fnmatch_pattern, path_glob
from llm_pipeline.train.config import mixture_sources

names = st.text(alphabet="ab/.-]", max_size=12)
patterns = st.text(alphabet="ab/.*?[]!-", max_size=10)


@settings(max_examples=3000, deadline=None)
@given(pattern=patterns, name=names)
def test_path_globs_match_as_fsspec_does(pattern, name):
    try:
        ours = path_glob(pattern)
    except ValueError:
        return  # refused: an unclosed '[', an empty range, '**' inside a segment
    expected = bool(re.compile(glob_translate(pattern)).match(name))
    assert ours.automaton_match(name) == expected and ours.match(name) == expected, (pattern, name)


@settings(max_examples=3000, deadline=None)
@given(pattern=patterns, name=names)
def test_fnmatch_patterns_match_as_fnmatch_does(pattern, name):
    try:
        ours = fnmatch_pattern(pattern)
    except ValueError:
        return
    expected = fnmatch.fnmatchcase(name, pattern)
    assert ours.automaton_match(name) == expected and ours.match(name) == expected, (pattern, name)


def test_patterns_that_backtrack_for_minutes_take_milliseconds(tmp_path):
    evil = "*a" * 12 + "*b"
    name = "a" * 80
    started = time.perf_counter()
    assert not path_glob(evil).match(name) and not fnmatch_pattern(evil).match(name)
    assert path_glob(evil).regex is None and path_glob("**/*.py").regex is not None  # the automaton where it matters
    assert mixture_sources(["x"], {"x": 1.0}) == ("x",)
    with pytest.raises(ValueError, match="match no mixture source"):
        mixture_sources([name[:60]], {evil: 1.0})
    (tmp_path / name).write_text("x")
    with pytest.raises(Exception, match="no files matching"):
        list_sources(str(tmp_path), "*a*a*a*a*a*a*b")
    # Bounded work, not a clock: the automaton has at most one state per pattern position.
    assert time.perf_counter() - started < 30


def test_bad_and_oversized_patterns_are_refused_by_name_before_any_file_is_read():
    for glob, message in (
        ("[", "never closed"),
        ("**/[z-a]", "range z-a .* is empty"),
        ("a**b", "entire path component"),
        ("*" * (MAX_PATTERN_CHARS + 1), "longer than 4,096 characters"),
    ):
        with pytest.raises(ValueError, match=message):
            check_glob(glob)
        with pytest.raises(ValueError, match=f"glob .* is not a valid pattern: .*{message}"):
            CorpusConfig(glob=glob)
    with pytest.raises(ValueError, match="exclude pattern '\\[' is not a valid pattern"):
        CorpusConfig(exclude=("[",))
    started = time.perf_counter()
    with pytest.raises(ValueError, match="longer than") as e:
        CorpusConfig(glob="a" * 10_000_000)
    assert len(str(e.value)) < 1000  # the pattern is not echoed whole
    assert time.perf_counter() - started < 30
