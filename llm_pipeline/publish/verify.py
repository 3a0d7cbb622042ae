"""Check a published model folder against its manifest.

python -m llm_pipeline.publish.verify <model version URI | model URI (follows latest)>
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

from llm_pipeline.publish.registry import resolve_model_folder
from llm_pipeline.storage.folders import Storage, bounded, json_value
from llm_pipeline.storage.manifests import MANIFEST
from llm_pipeline.storage.names import check_relative_path

_HEADER_LIMIT = 100 << 20  # a safetensors header lists names, shapes and offsets: far below this


def verify(folder: Storage) -> list[str]:
    """Problems found (tampered, missing or unlisted files, a broken manifest, a version folder that
    is a link out of its registry, weights whose tensors are not the architecture's); empty means intact."""
    if folder.is_local and os.path.islink(folder.path):
        return [
            f"{folder.uri} is a symbolic link (to {bounded(os.path.realpath(folder.path))}): a version must be a folder of its registry"
        ]
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
    if not problems and "model.safetensors" in files and "config.json" in files:
        problems.extend(_tensor_problems(folder))
    return problems


def _tensor_names(folder: Storage) -> set[str]:
    """The tensor names in model.safetensors' header (8 bytes of length, then JSON), read bounded."""
    with folder.open_read("model.safetensors") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _HEADER_LIMIT:
            raise ValueError(f"its header claims {length:,} bytes")
        header = json_value(f.read(length), "its header")
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return set(header) - {"__metadata__"}


def _tensor_problems(folder: Storage) -> list[str]:
    """Weights whose tensor names are not the parameters of the architecture config.json describes:
    transformers would leave a renamed parameter randomly initialised, with only a warning."""
    import torch

    from llm_pipeline.train.hf_config import model_config_from_hf
    from llm_pipeline.train.model import CausalLM

    try:
        cfg = model_config_from_hf(folder.read_json("config.json"))
        with torch.device("meta"):
            expected = set(CausalLM(cfg).state_dict())
    except (ValueError, KeyError, TypeError) as e:
        return [f"config.json does not describe a model of this project ({type(e).__name__}: {bounded(str(e))})"]
    try:
        names = _tensor_names(folder)
    except (ValueError, struct.error) as e:
        return [f"model.safetensors is not a safetensors file ({bounded(str(e))})"]
    problems = [f"model.safetensors lacks the parameter {bounded(n)}" for n in sorted(expected - names)[:5]]
    problems += [f"model.safetensors holds {bounded(n)!r}, not a parameter of the architecture" for n in sorted(names - expected)[:5]]
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
