"""`python -m llm_pipeline.corpus.dedup rebuild URI...`: write the dedup index segment of stored corpora.

A URI is a corpus folder (it holds a raw_corpus manifest.json) or a folder searched for them (the
storage root's raw_corpus/ folder, say). The segment is made from the corpus's own documents, in
manifest order: the same bytes the build wrote. Corpora that have a readable segment are left alone
unless --force. One JSON line per corpus on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from llm_pipeline.corpus.dedup.rebuild import find_corpora, rebuild_segment
from llm_pipeline.storage.folders import Storage, bounded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llm_pipeline.corpus.dedup", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    rebuild = sub.add_parser("rebuild", help="write the dedup index segment of stored corpora from their documents")
    rebuild.add_argument("uris", nargs="+", help="corpus folders, or folders to search for them")
    rebuild.add_argument("--force", action="store_true", help="rewrite segments that are already readable")
    args = p.parse_args(argv)
    try:
        corpora = [corpus for uri in args.uris for corpus in find_corpora(Storage(uri))]
        for corpus in corpora:
            with tempfile.TemporaryDirectory(prefix="llm-pipeline-dedup-") as local:
                outcome = rebuild_segment(corpus, local, args.force)
            print(json.dumps({"corpus": corpus.uri} | outcome, sort_keys=True), flush=True)
    except (ValueError, OSError) as e:
        print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
