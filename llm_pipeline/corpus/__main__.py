"""`python -m llm_pipeline.corpus SOURCE_URI --out OUT_URI`: exactly what the `raw_corpus` asset does.

A progress bar on a terminal (stderr); the manifest summary as one JSON object on the last stdout line.
S3 credentials and endpoint come from the usual AWS_* variables (AWS_ENDPOINT_URL for S3-compatible servers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llm_pipeline.corpus.build import CorpusConfig, Progress, build_corpus
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.settings import add_options, given_options
from llm_pipeline.storage.folders import Storage, bounded


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm_pipeline.corpus", description=__doc__.splitlines()[0])
    p.add_argument("source_uri", help="folder or file (fsspec URI), taken literally: no patterns")
    p.add_argument("--out", required=True, help="output folder URI: documents-*.parquet, quarantine-*.parquet, manifest.json")
    add_options(p, CorpusConfig, skip=("source_uri", "files", "filters"))
    add_options(p, FilterConfig)
    p.add_argument(
        "--dedup-against",
        action="append",
        default=[],
        metavar="CORPUS_URI",
        help="an earlier corpus (a folder this command wrote) whose documents are duplicates here; repeat, earliest first",
    )
    p.add_argument(
        "--dedup-compactions",
        metavar="FOLDER_URI",
        help="where the earlier corpora's index runs are merged as they pile up (the asset uses <storage root>/dedup_index)",
    )
    p.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS", ""),
        help="with --executor ray: the cluster to connect to (ray://head:10001 or head:6379; default $RAY_ADDRESS)",
    )
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
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {p.files_done}/{p.files_total} files  {p.documents} documents  {rate:.1f} MB/s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bar = _Bar(sys.stderr)
    try:
        cfg = CorpusConfig(
            source_uri=args.source_uri,
            filters=FilterConfig(**given_options(args, FilterConfig.model_fields)),
            **given_options(args, set(CorpusConfig.model_fields) - {"source_uri"}),
        )
        if args.out.startswith("memory://"):
            raise ValueError(f"--out {bounded(args.out)!r}: memory:// lives only as long as this command, the output would be lost")
        out = Storage(args.out)
        earlier = [(uri, Storage(uri)) for uri in args.dedup_against]
        compactions = Storage(args.dedup_compactions) if args.dedup_compactions else None
        manifest = build_corpus(cfg, out, progress=bar, earlier=earlier, ray_address=args.ray_address, dedup_compactions=compactions)
    except (ValueError, OSError) as e:  # a bad option, source or output: one line that names it, no traceback
        bar.close()
        print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
        return 1
    bar.close()
    print(json.dumps(manifest.summary() | {"out": out.uri}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
