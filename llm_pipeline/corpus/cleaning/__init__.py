"""The cleaning chain: named steps applied to each document in order, the first to object drops it.

    step                what it does                                          drop reason
    length              shorter than min_chars or longer than max_chars       too_short, too_long
    printable           too few printable characters                          low_quality
    language            fastText lid.176: not one of `languages` above the    language
                        score (language and score become document columns)
    gopher_repetition   repeated lines, paragraphs and n-grams (Gopher)       gopher_repetition
    gopher_quality      word count and length, symbols, stop words (Gopher)   gopher_quality
    c4_quality          C4's line rules remove lines (counted as modified),   c4_quality
                        its page rules drop the page
    fineweb_quality     FineWeb's line punctuation, short and duplicate lines fineweb_quality
    code_quality        The Stack's line length, alphanumeric share and       code_quality
                        generated-file markers
    decontamination     shares a word 13-gram with an evaluation item         eval_overlap
    pii                 e-mail and public IP addresses replaced (modified)    -

A preset is a list of steps: `web` (FineWeb's recipe), `code` (The Stack's), `minimal`. `auto` picks
per file: `code` for source code (by the file's extension), `minimal` for everything else (a given
source may be curated already, books or another language: the web recipe is asked for by name).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from llm_pipeline.corpus.cleaning.c4 import C4Quality
from llm_pipeline.corpus.cleaning.code import CodeQuality
from llm_pipeline.corpus.cleaning.decontamination import EvalNgrams
from llm_pipeline.corpus.cleaning.fineweb import FineWebQuality
from llm_pipeline.corpus.cleaning.gopher import GopherQuality, GopherRepetition
from llm_pipeline.corpus.cleaning.language import identify
from llm_pipeline.corpus.cleaning.pii import format_pii
from llm_pipeline.corpus.cleaning.text import printable_fraction

STEPS = (
    "length",
    "printable",
    "language",
    "gopher_repetition",
    "gopher_quality",
    "c4_quality",
    "fineweb_quality",
    "code_quality",
    "decontamination",
    "pii",
)
PRESETS: dict[str, tuple[str, ...]] = {
    "minimal": ("length", "printable", "decontamination"),
    "code": ("length", "printable", "code_quality", "decontamination"),
    # FineWeb's order; its MinHash dedup comes after these, in the merge, and sees the PII-formatted text
    "web": (
        "length",
        "printable",
        "language",
        "gopher_repetition",
        "gopher_quality",
        "c4_quality",
        "fineweb_quality",
        "decontamination",
        "pii",
    ),
}
# Source code by file name (the compression suffix off): these files get `code` under preset `auto`.
_CODE_EXTENSIONS = (
    ".py .pyi .js .mjs .ts .tsx .jsx .java .kt .scala .c .h .cc .cpp .cxx .hpp .cs .go .rs .rb .php .swift .m .mm .lua .pl "
    ".pm .r .jl .hs .ml .sh .bash .sql .dart .ex .exs .erl .clj .f90 .zig .nim .vue .css .scss"
)
CODE_EXTENSIONS = frozenset(_CODE_EXTENSIONS.split())
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


def preset_for(name: str, preset: str) -> str:
    """The preset a file gets: `preset` itself, or under `auto`, `code` for source code and `minimal` else."""
    if preset != "auto":
        return preset
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    return "code" if os.path.splitext(name)[1].lower() in CODE_EXTENSIONS else "minimal"


@dataclass
class Outcome:
    """One document through the chain: its final text, or the reason it was dropped."""

    text: str
    reason: str | None = None
    detail: str = ""
    language: str | None = None
    language_score: float | None = None
    modified: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rules:
    """Everything a step needs, picklable (it travels to worker processes and Ray tasks)."""

    min_chars: int
    max_chars: int
    min_printable_fraction: float
    languages: tuple[str, ...]
    min_language_score: float
    eval_ngrams: EvalNgrams | None = None
    gopher_repetition: GopherRepetition = GopherRepetition()
    gopher_quality: GopherQuality = GopherQuality()
    # FineWeb ran C4's rules without the terminal-punctuation line rule
    c4_quality: C4Quality = C4Quality(filter_no_terminal_punct=False)
    fineweb_quality: FineWebQuality = FineWebQuality()
    code_quality: CodeQuality = CodeQuality()


# The heuristic rule sets whose thresholds `rule_settings` may change ('step.name' -> value).
TUNABLE_RULES = ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality", "code_quality")


def _tunable_fields(rule: str) -> dict[str, type]:
    """A rule set's scalar settings and their types (the n-gram tables stay the paper's)."""
    types = {"int": int, "float": float, "bool": bool}
    return {f.name: types[str(f.type)] for f in dataclasses.fields(getattr(Rules, rule)) if str(f.type) in types}


def check_rule_setting(key: str, value: float) -> None:
    """Refuse, by name, a `rule_settings` entry no rule has or a value its setting cannot take."""
    rule, _, name = key.partition(".")
    if rule not in TUNABLE_RULES:
        raise ValueError(f"rule_settings: {key!r} names no rule set; use 'step.setting' with a step of {', '.join(TUNABLE_RULES)}")
    fields = _tunable_fields(rule)
    if name not in fields:
        raise ValueError(f"rule_settings: {rule} has no setting {name!r}; it has {', '.join(sorted(fields))}")
    if not math.isfinite(value):
        raise ValueError(f"rule_settings: {key} must be a finite number, got {value}")
    if fields[name] is bool and value not in (0, 1):
        raise ValueError(f"rule_settings: {key} is on or off: 1 or 0, got {value:g}")
    if fields[name] is int and value != int(value):
        raise ValueError(f"rule_settings: {key} is a whole number, got {value:g}")


def tuned_rules(rules: Rules, settings: Mapping[str, float]) -> Rules:
    """`rules` with the `rule_settings` entries applied (each already checked)."""
    changes: dict[str, dict[str, object]] = {}
    for key, value in settings.items():
        rule, _, name = key.partition(".")
        changes.setdefault(rule, {})[name] = _tunable_fields(rule)[name](value)
    return dataclasses.replace(rules, **{rule: dataclasses.replace(getattr(rules, rule), **c) for rule, c in changes.items()})


# A step takes the documents still in the running (in order) and marks those it drops or changes.
Step = Callable[[list[Outcome], Rules], None]


def _each(check: Callable[[Outcome, Rules], None]) -> Step:
    def step(docs: list[Outcome], rules: Rules) -> None:
        for doc in docs:
            check(doc, rules)

    return step


def _length(doc: Outcome, rules: Rules) -> None:
    if len(doc.text) < rules.min_chars:
        doc.reason = "too_short"
    elif len(doc.text) > rules.max_chars:
        doc.reason = "too_long"


def _printable(doc: Outcome, rules: Rules) -> None:
    if printable_fraction(doc.text) < rules.min_printable_fraction:
        doc.reason = "low_quality"


def _language(doc: Outcome, rules: Rules) -> None:
    doc.language, doc.language_score, kept = identify(doc.text, rules.languages, rules.min_language_score)
    if not kept:
        doc.reason, doc.detail = "language", f"{doc.language} {doc.language_score:.2f}"


def _rule(name: str) -> Step:
    """A rule set's verdicts: every document at once where it has `many` (the Gopher rules), else one by one."""

    def step(docs: list[Outcome], rules: Rules) -> None:
        rule = getattr(rules, name)
        texts = [d.text for d in docs]
        for doc, broken in zip(docs, rule.many(texts) if hasattr(rule, "many") else map(rule, texts)):
            if broken is not None:
                doc.reason, doc.detail = name, broken

    return step


def _c4(doc: Outcome, rules: Rules) -> None:
    broken, text, removed = rules.c4_quality(doc.text)
    if broken is not None:
        doc.reason, doc.detail = "c4_quality", broken
    else:
        doc.text = text
        if removed:
            doc.modified.append("c4_quality")


def _decontamination(doc: Outcome, rules: Rules) -> None:
    if rules.eval_ngrams is not None:
        shared = rules.eval_ngrams.first_match(doc.text)
        if shared is not None:
            doc.reason, doc.detail = "eval_overlap", f"shares {shared!r} with an evaluation item"


def _pii(doc: Outcome, rules: Rules) -> None:
    text, replaced = format_pii(doc.text)
    if replaced:
        doc.text = text
        doc.modified.append("pii")


_STEP_FUNCTIONS: dict[str, Step] = {
    "length": _each(_length),
    "printable": _each(_printable),
    "language": _each(_language),
    "gopher_repetition": _rule("gopher_repetition"),
    "gopher_quality": _rule("gopher_quality"),
    "c4_quality": _each(_c4),
    "fineweb_quality": _rule("fineweb_quality"),
    "code_quality": _rule("code_quality"),
    "decontamination": _each(_decontamination),
    "pii": _each(_pii),
}
assert set(_STEP_FUNCTIONS) == set(STEPS)


def clean_many(texts: list[str], steps: tuple[str, ...], rules: Rules) -> list[Outcome]:
    """Each of `texts` through `steps` in order; a document leaves at the first step that drops it.
    The same outcomes as one document at a time: a step sees each document alone, whatever else is
    in the batch (batches let the Gopher rules count n-grams in numpy for many documents at once)."""
    docs = [Outcome(text) for text in texts]
    alive = docs
    for name in steps:
        if not alive:
            break
        _STEP_FUNCTIONS[name](alive, rules)
        alive = [doc for doc in alive if doc.reason is None]
    return docs


def clean(text: str, steps: tuple[str, ...], rules: Rules) -> Outcome:
    """One document through `steps`."""
    return clean_many([text], steps, rules)[0]
