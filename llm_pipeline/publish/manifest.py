"""A published version's manifest.json: one definition for the writer (publish/export.py), the asset
that reports it and the verifier, which reads its file entries (publish/verify.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileHash(Record):
    sha256: str
    bytes: int


class ModelManifest(Record):
    name: str
    version: str
    uri: str  # the version folder
    files: dict[str, FileHash]  # every file of the folder but the manifest, by name
    metrics: dict[str, float | int]  # the evaluation's headline numbers
    lineage: dict[str, str | int]  # what the model was made from: batches, tokenizer, checkpoint, run
    published_at: str  # UTC, ISO 8601
