"""The manifest of a multi-file artifact (a corpus, a shard set, a published model): written last, checked on read.

A folder counts only once its manifest exists, and the manifest lists every file that belongs to
it, so a reader never trusts a half-written folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from llm_pipeline.settings import readable
from llm_pipeline.storage.folders import Storage, bounded

MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A manifest is missing, is not JSON, or lacks a field its readers need; the message names it."""


Record = TypeVar("Record", bound=BaseModel)


def parsed(model: type[Record], data: object, what: str, error: type[ValueError] = ManifestError) -> Record:
    """`data`, a JSON value read from `what`, as `model`; `error` naming `what` and each field that does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(f"{what}: {bounded(readable(e, model), 2000)}") from None


def write_manifest(folder: Storage, manifest: dict) -> None:
    """Call after every file it lists is written."""
    folder.write_json(MANIFEST, manifest)


def read_manifest(folder: Storage, required: Iterable[str], what: str = "manifest", error: type[ManifestError] = ManifestError) -> dict:
    """The manifest as a dict holding every `required` field; `error` (naming `what` and where) otherwise."""
    if not folder.exists(MANIFEST):
        raise error(f"no {what} at {folder.uri}/{MANIFEST}")
    try:
        manifest = folder.read_json(MANIFEST)
    except ValueError as e:
        raise error(str(e)) from None
    missing = [k for k in required if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise error(f"{what} {folder.uri}/{MANIFEST} lacks {', '.join(missing)}")
    return manifest
