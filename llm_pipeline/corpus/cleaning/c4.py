"""C4's line and page rules (Raffel et al. 2020), as datatrove 0.10.1's `C4QualityFilter` applies them.

Line rules remove lines and keep the page: a word over 1,000 characters, fewer than 3 words, a
mention of "javascript", a cookie or terms-of-use notice, and (unless turned off, as FineWeb does)
no terminal punctuation. Page rules drop the page: "lorem ipsum", a curly bracket, fewer than 5
sentences left. Wikipedia-style citations ("[1]", "[edit]") are cut from every line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_pipeline.corpus.cleaning.text import sentence_spans

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_END_PUNCTUATION = (".", "?", "!", '"', "'")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


@dataclass(frozen=True)
class C4Quality:
    filter_no_terminal_punct: bool = True
    min_num_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000

    def __call__(self, text: str) -> tuple[str | None, str, int]:
        """(the page rule broken or None, the kept lines joined by single newlines, lines with text removed).
        Blank lines go too (C4 joins the kept lines with one newline) but are not counted as removed."""
        sentences = removed = 0
        kept = []
        for raw_line in text.splitlines():
            line = raw_line.strip()
            words = line.split()
            if any(len(word) > self.max_word_length for word in words):
                removed += 1
                continue
            line = _CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(_END_PUNCTUATION) or line.endswith("...")):
                removed += 1
                continue
            if len(words) < self.min_words_per_line:
                removed += bool(words)
                continue
            lower = line.lower()
            if "lorem ipsum" in lower:
                return "lorem_ipsum", text, removed
            if "javascript" in lower:
                removed += 1
                continue
            if "{" in line:
                return "curly_bracket", text, removed
            if any(p in lower for p in _POLICY):
                removed += 1
                continue
            sentences += len(sentence_spans(line))
            kept.append(line)
        if sentences < self.min_num_sentences:
            return "too_few_sentences", text, removed
        return None, "\n".join(kept).strip(), removed
