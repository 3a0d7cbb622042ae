"""Check a published model folder against its manifest.

python -m llm_pipeline.publish.verify <model version URI | model URI (follows latest)>
"""

from __future__ import annotations

import argparse
import sys

from llm_pipeline.publish.registry import resolve_model_folder
from llm_pipeline.storage.folders import Storage, bounded
from llm_pipeline.storage.manifests import MANIFEST
from llm_pipeline.storage.names import check_relative_path


def verify(folder: Storage) -> list[str]:
    """Problems found (tampered, missing or unlisted files, a broken manifest); empty means intact."""
    if not folder.exists(MANIFEST):
        return [f"{MANIFEST} is missing from {folder.uri}"]
    try:
        manifest = folder.read_json(MANIFEST)
        files = manifest["files"]
        entries = sorted((check_relative_path(name, "manifest file name"), entry["sha256"]) for name, entry in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"{MANIFEST} is not a valid manifest ({type(e).__name__}: {bounded(str(e))})"]
    problems = []
    for name, sha256 in entries:
        try:
            if folder.sha256(name) != sha256:
                problems.append(f"tampered: {name} (sha256 does not match the manifest)")
        except FileNotFoundError:
            problems.append(f"missing: {name}")
        except OSError as e:  # a FIFO, a device, a folder or a link where a file should be: never followed
            problems.append(f"not a regular file: {name} ({bounded(str(e))})")
    extra = set(folder.listdir()) - set(files) - {MANIFEST}
    problems.extend(f"not in manifest: {name}" for name in sorted(extra))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a published model against its manifest.")
    parser.add_argument("uri", help="a model version folder, or a model folder (its latest version is checked)")
    args = parser.parse_args(argv)
    try:
        folder = resolve_model_folder(args.uri)
    except (ValueError, OSError) as e:
        print(f"FAIL {args.uri}: {bounded(str(e))}")
        return 1
    problems = verify(folder)
    for p in problems:
        print(f"FAIL {folder.uri}: {p}")
    if not problems:
        print(f"OK {folder.uri}: every file matches its sha256")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
