"""Do our cleaning steps make the same decisions as datatrove 0.10.1's own modules? On real text found on
this machine: the standard library's docstrings (one document a module) and the .md/.rst/.txt files of
installed packages. datatrove runs with a whitespace word split (benchmarks/datatrove_words.py), the
split ours makes; its language filter runs on the same lid.176 model file ours ships with.

    python -m benchmarks.filter_conformance [--max-documents N]

One line per filter (documents, agreement, the disagreements' first examples), then:
`filters agreeing with datatrove: N of M, lowest agreement X.XX%` (agreeing: at least 99.5%).
"""

from __future__ import annotations

import argparse
import ast
import os
import site
import sys
import sysconfig
import time

from llm_pipeline.corpus.cleaning import Rules
from llm_pipeline.corpus.cleaning.c4 import C4Quality
from llm_pipeline.corpus.cleaning.code import CodeQuality  # noqa: F401 - ours alone: datatrove has no code filter
from llm_pipeline.corpus.cleaning.fineweb import FineWebQuality
from llm_pipeline.corpus.cleaning.gopher import GopherQuality, GopherRepetition
from llm_pipeline.corpus.cleaning.language import identify
from llm_pipeline.corpus.cleaning.pii import format_pii

TARGET = 0.995


def stdlib_docstrings() -> list[str]:
    """Each standard-library module's docstrings (module, classes, functions), joined by blank lines."""
    docs = []
    stdlib = sysconfig.get_paths()["stdlib"]
    for folder, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "test", "tests", "__pycache__", "idlelib"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            parts = [
                ast.get_docstring(node)
                for node in ast.walk(tree)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            ]
            text = "\n\n".join(p for p in parts if p)
            if text.strip():
                docs.append(text)
    return docs


def package_documents(max_bytes: int = 200_000) -> list[str]:
    """The .md/.rst/.txt files of installed packages (licences, readmes, changelogs, docs)."""
    docs = []
    for root in sorted(set(site.getsitepackages())):
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                if not name.lower().endswith((".md", ".rst", ".txt")) or name.lower() in ("record", "top_level.txt"):
                    continue
                path = os.path.join(folder, name)
                if os.path.getsize(path) > max_bytes:
                    continue
                try:
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                except (UnicodeDecodeError, OSError):
                    continue
                if text.strip():
                    docs.append(text)
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-documents", type=int, default=0, help="at most this many documents (0: all found)")
    args = parser.parse_args()

    from datatrove.data import Document
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.filters.language_filter import LanguageFilter
    from datatrove.pipeline.formatters import PIIFormatter

    from benchmarks.datatrove_words import LocalLid176, WhitespaceTokenizer

    words = WhitespaceTokenizer("en")
    docstrings, package_docs = stdlib_docstrings(), package_documents()
    print(f"{len(docstrings)} modules' docstrings, {len(package_docs)} package text files", file=sys.stderr)
    texts = docstrings + package_docs
    # datatrove's readers hand filters text as it was read; ours normalises line endings first
    texts = [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts]
    if args.max_documents:
        texts = texts[: args.max_documents]
    print(f"{len(texts)} documents, {sum(map(len, texts)) / 1e6:.1f} M characters", file=sys.stderr)

    language_filter = LanguageFilter(languages=["en"], language_threshold=0.65)
    language_filter.model = LocalLid176(["en"])  # the lid.176.ftz ours ships, not a download of lid.176.bin
    rules = Rules(min_chars=0, max_chars=10**9, min_printable_fraction=0.0, languages=("en",), min_language_score=0.65)

    def theirs_keeps(flt, text: str) -> tuple[bool, str]:
        doc = Document(text=text, id="0")
        verdict = flt.filter(doc)
        return (verdict if isinstance(verdict, bool) else verdict[0]), doc.text

    def c4_ours(text: str) -> tuple[bool, str]:
        broken, out, _ = C4Quality(filter_no_terminal_punct=False)(text)
        return broken is None, out if broken is None else text

    comparisons = {
        "gopher_repetition": (lambda t: (GopherRepetition()(t) is None, t), GopherRepetitionFilter(language=words)),
        "gopher_quality": (lambda t: (GopherQuality()(t) is None, t), GopherQualityFilter(language=words)),
        "c4_quality": (c4_ours, C4QualityFilter(filter_no_terminal_punct=False, language=words)),
        "fineweb_quality": (lambda t: (FineWebQuality()(t) is None, t), FineWebQualityFilter(language=words)),
        "language": (lambda t: (identify(t, rules.languages, rules.min_language_score)[2], t), language_filter),
    }
    results = []
    for name, (ours, flt) in comparisons.items():
        started = time.perf_counter()
        agree, kept, examples = 0, 0, []
        for text in texts:
            mine = ours(text)
            theirs = theirs_keeps(flt, text)
            kept += mine[0]
            if mine == theirs:
                agree += 1
            elif len(examples) < 3:
                examples.append(f"ours {'kept' if mine[0] else 'dropped'}, datatrove {'kept' if theirs[0] else 'dropped'}: {text[:60]!r}")
        share = agree / len(texts)
        results.append((name, share))
        print(
            f"{name:18s} agree {agree}/{len(texts)} = {100 * share:.2f}%, kept {kept} "
            f"({time.perf_counter() - started:.1f} s) {' | '.join(examples)}"
        )
    # PII: the same text out (datatrove's placeholder cycle restarted for each document, as ours is)
    agree = changed = 0
    for text in texts:
        mine = format_pii(text)[0]
        agree += mine == PIIFormatter().format(text)
        changed += mine != text
    results.append(("pii", agree / len(texts)))
    print(f"{'pii':18s} agree {agree}/{len(texts)} = {100 * agree / len(texts):.2f}% (the same text out), changed {changed}")
    agreeing = sum(share >= TARGET for _, share in results)
    lowest = min(share for _, share in results)
    print(f"filters agreeing with datatrove: {agreeing} of {len(results)}, lowest agreement {100 * lowest:.2f}%")


if __name__ == "__main__":
    main()
