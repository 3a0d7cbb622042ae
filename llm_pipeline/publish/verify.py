"""Check a published model folder against its manifest.

python -m llm_pipeline.publish.verify <model version URI | model URI (follows latest)>
"""

from __future__ import annotations

import argparse
import os
import struct
import sys

from llm_pipeline.publish.manifest import FileHash
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
        entries = sorted(
            (check_relative_path(name, "manifest file name"), FileHash.model_validate(entry).sha256) for name, entry in files.items()
        )
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


# The dtypes a published model's weights may be stored in, with their sizes in bytes.
_FLOAT_BYTES = {"F32": 4, "BF16": 2, "F16": 2}


def _header(folder: Storage) -> tuple[dict, int]:
    """model.safetensors' header (8 bytes of length, then JSON), read bounded, and where its data starts."""
    with folder.open_read("model.safetensors") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _HEADER_LIMIT:
            raise ValueError(f"its header claims {length:,} bytes")
        header = json_value(f.read(length), "its header")
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length


def _layout_problems(header: dict, data_start: int, file_size: int, expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Each parameter's shape the architecture's, its bytes its shape times its dtype, every byte range
    inside the file and the ranges tiling the data: what a loader trusts before it allocates."""
    problems, ranges = [], []
    for name in sorted(set(header) & set(expected)):
        entry = header[name]
        if not isinstance(entry, dict):
            problems.append(f"model.safetensors: {bounded(name)} has no dtype, shape and offsets")
            continue
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _FLOAT_BYTES:
            problems.append(f"model.safetensors: {bounded(name)} is stored as {bounded(str(dtype))}, not one of {', '.join(_FLOAT_BYTES)}")
            continue
        if shape != list(expected[name]):
            problems.append(
                f"model.safetensors: {bounded(name)} has shape {bounded(str(shape))}, the architecture's is {list(expected[name])}"
            )
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            problems.append(f"model.safetensors: {bounded(name)} has no data_offsets [begin, end]")
            continue
        size = _FLOAT_BYTES[dtype]
        for n in shape:
            size *= n
        begin, end = offsets
        if end - begin != size or begin < 0 or data_start + end > file_size:
            problems.append(
                f"model.safetensors: {bounded(name)} claims bytes {begin:,}..{end:,} of a file whose data holds "
                f"{file_size - data_start:,}; its shape and dtype need {size:,}"
            )
            continue
        ranges.append((begin, end))
    if not problems:
        at = 0
        for begin, end in sorted(ranges):
            if begin != at:
                problems.append(f"model.safetensors: its tensors overlap or leave a gap at byte {at:,} of the data")
                break
            at = end
        else:
            if data_start + at != file_size:
                problems.append(f"model.safetensors: {file_size - data_start - at:,} bytes after its last tensor")
    return problems


def _tensor_problems(folder: Storage) -> list[str]:
    """Weights that are not the parameters of the architecture config.json describes: a renamed tensor
    transformers would leave randomly initialised (with only a warning), a shape or a size that would
    have it allocate what the file does not hold."""
    import torch

    from llm_pipeline.train.hf_config import model_config_from_hf
    from llm_pipeline.train.model import CausalLM

    try:
        cfg = model_config_from_hf(folder.read_json("config.json"))
        with torch.device("meta"):
            expected = {name: tuple(t.shape) for name, t in CausalLM(cfg).state_dict().items()}
    except (ValueError, KeyError, TypeError) as e:
        return [f"config.json does not describe a model of this project ({type(e).__name__}: {bounded(str(e))})"]
    try:
        header, data_start = _header(folder)
    except (ValueError, struct.error) as e:
        return [f"model.safetensors is not a safetensors file ({bounded(str(e))})"]
    names = set(header)
    problems = [f"model.safetensors lacks the parameter {bounded(n)}" for n in sorted(set(expected) - names)[:5]]
    problems += [f"model.safetensors holds {bounded(n)!r}, not a parameter of the architecture" for n in sorted(names - set(expected))[:5]]
    return problems or _layout_problems(header, data_start, folder.size("model.safetensors"), expected)


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
