"""`python -m llm_pipeline.corpus SOURCE_URI --out OUT_URI`: exactly what the `raw_corpus` asset does.

A progress bar on a terminal (stderr); the manifest summary as one JSON object on the last stdout line.
S3 credentials and endpoint come from the usual AWS_* variables (AWS_ENDPOINT_URL for S3-compatible servers).
"""

from __future__ import annotations

import argparse
import json
import sys

from llm_pipeline.corpus.build import CorpusConfig, CorpusSourceError, Progress, build_corpus, summary
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.corpus.readers import FORMATS
from llm_pipeline.storage import Storage


def _parser() -> argparse.ArgumentParser:
    d, f = CorpusConfig(source_uri="-"), FilterConfig()
    p = argparse.ArgumentParser(prog="python -m llm_pipeline.corpus", description=__doc__.splitlines()[0])
    p.add_argument("source_uri", help="folder or file (fsspec URI), taken literally: no patterns")
    p.add_argument("--out", required=True, help="output folder URI: documents-*.parquet, quarantine-*.parquet, manifest.json")
    p.add_argument("--glob", default=d.glob, help=f"files to read under the source (default {d.glob!r})")
    p.add_argument("--exclude", action="append", default=None, help="relative path pattern to skip (repeatable)")
    p.add_argument("--format", choices=FORMATS, default=d.format, help="auto: from each file's name")
    p.add_argument("--text-field", default=d.text_field, help="JSON Lines field / Parquet column holding the text")
    p.add_argument("--include-hidden", action="store_true", help="read hidden files and in-flight uploads too")
    p.add_argument("--max-bytes", type=int, default=None, help="read at most this many stored bytes")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (0: one per core)")
    p.add_argument("--min-chars", type=int, default=f.min_chars)
    p.add_argument("--max-chars", type=int, default=f.max_chars)
    p.add_argument("--min-printable-fraction", type=float, default=f.min_printable_fraction)
    p.add_argument("--no-near-dedup", action="store_true", help="exact dedup only")
    p.add_argument("--near-dedup-threshold", type=float, default=f.near_dedup_threshold)
    return p


class _Bar:
    """One self-rewriting line on a terminal; silent otherwise."""

    def __init__(self, stream):
        self.stream, self.active = stream, stream.isatty()

    def __call__(self, p: Progress) -> None:
        if not self.active:
            return
        width = 30
        filled = int(width * p.files_done / max(p.files_total, 1))
        rate = p.decoded_bytes / 1e6 / max(p.seconds, 1e-9)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {p.files_done}/{p.files_total} files  "
                          f"{p.documents} documents  {rate:.1f} MB/s ")
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = CorpusConfig(
            source_uri=args.source_uri, glob=args.glob,
            exclude=tuple(args.exclude) if args.exclude is not None else CorpusConfig.__dataclass_fields__["exclude"].default,
            format=args.format, text_field=args.text_field, include_hidden=args.include_hidden,
            max_bytes=args.max_bytes, workers=args.workers,
            filters=FilterConfig(args.min_chars, args.max_chars, args.min_printable_fraction, not args.no_near_dedup,
                                 args.near_dedup_threshold),
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar = _Bar(sys.stderr)
    try:
        manifest = build_corpus(cfg, Storage(args.out), progress=bar)
    except CorpusSourceError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    bar.close()
    print(json.dumps(summary(manifest) | {"out": Storage(args.out).uri}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
