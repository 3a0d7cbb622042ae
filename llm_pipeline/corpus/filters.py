"""The corpus's cleaning settings, and the document id. Each drop has a named reason (cleaning/)."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llm_pipeline.corpus.cleaning import PRESETS, STEPS, check_rule_setting
from llm_pipeline.settings import Settings

Preset = Literal["auto", "web", "code", "minimal"]


class FilterConfig(Settings):
    preset: Preset = Field(
        default="auto",
        description="cleaning steps by kind of text: web (FineWeb's recipe: language, Gopher, C4, FineWeb, PII), "
        "code (The Stack's line and character rules), minimal (length and printable characters); "
        "auto: code for source-code files (by extension), minimal for everything else",
    )
    steps: tuple[str, ...] | None = Field(
        default=None, description=f"the cleaning steps, in order, instead of the preset's ({', '.join(STEPS)})"
    )
    languages: tuple[str, ...] = Field(
        default=("en",), description="language step: keep documents in these languages (lid.176 codes); empty: any language"
    )
    min_language_score: float = Field(default=0.65, ge=0, lt=1, description="language step: the fastText score a kept language must exceed")
    decontaminate_tasks: tuple[str, ...] = Field(
        default=(),
        description="decontamination step: drop training documents sharing a word n-gram with these lm-evaluation-harness "
        "tasks' items (cached datasets, offline)",
    )
    decontamination_ngram: int = Field(default=13, ge=4, le=64, description="decontamination step: words per n-gram")
    rule_settings: dict[str, float] = Field(
        default={},
        description="the heuristic steps' thresholds, changed from the published ones: 'step.name' -> value, e.g. "
        "gopher_quality.min_doc_words=100, c4_quality.filter_no_terminal_punct=1 (docs/corpus.md lists them)",
    )
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

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, value):
        if value is None:
            return value
        unknown = [s for s in value if s not in STEPS]
        if unknown:
            raise ValueError(f"steps: unknown step {unknown[0]!r}; the steps are {', '.join(STEPS)}")
        if len(set(value)) != len(value):
            raise ValueError(f"steps: {value} names a step twice")
        return value

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, value):
        bad = [code for code in value if not re.fullmatch(r"[a-z]{2,3}", code)]
        if bad:
            raise ValueError(f"languages: {bad[0]!r} is not a language code (lid.176 uses ISO 639 codes such as en, de, zh)")
        return value

    @field_validator("rule_settings")
    @classmethod
    def _known_rule_settings(cls, value):
        for key, number in value.items():
            check_rule_setting(key, number)
        return value

    def steps_for(self, preset: str) -> tuple[str, ...]:
        """The steps a file cleaned under `preset` goes through (`steps`, when set, for every file)."""
        return self.steps if self.steps is not None else PRESETS[preset]

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_chars < max(1, self.min_chars):
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars}) and >= 1")
        return self


def document_id(text: str) -> str:
    """Stable content hash: the same text always gets the same id, wherever it came from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
