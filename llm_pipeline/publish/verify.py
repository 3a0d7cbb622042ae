"""Check a published model folder against its manifest.

    python -m llm_pipeline.publish.verify <model version URI | model URI (follows latest)>
"""

from __future__ import annotations

import argparse
import sys

from llm_pipeline.publish.export import LATEST, MANIFEST
from llm_pipeline.storage import Storage


def verify(folder: Storage) -> list[str]:
    """Problems found (tampered, missing or unlisted files); empty means the folder is intact."""
    if not folder.exists(MANIFEST):
        return [f"{MANIFEST} is missing from {folder.uri}"]
    manifest = folder.read_json(MANIFEST)
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        if not folder.exists(name):
            problems.append(f"missing: {name}")
        elif folder.sha256(name) != entry["sha256"]:
            problems.append(f"tampered: {name} (sha256 does not match the manifest)")
    extra = set(folder.listdir()) - set(manifest["files"]) - {MANIFEST}
    problems.extend(f"not in manifest: {name}" for name in sorted(extra))
    return problems


def _folder(uri: str) -> Storage:
    folder = Storage(uri)
    if not folder.exists(MANIFEST) and folder.exists(LATEST):
        folder = folder.child(folder.read_bytes(LATEST).decode().strip())
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a published model against its manifest.")
    parser.add_argument("uri", help="a model version folder, or a model folder (its latest version is checked)")
    args = parser.parse_args(argv)
    folder = _folder(args.uri)
    problems = verify(folder)
    for p in problems:
        print(f"FAIL {folder.uri}: {p}")
    if not problems:
        print(f"OK {folder.uri}: every file matches its sha256")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
