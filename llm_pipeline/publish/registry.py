"""The model registry: `<registry>/<name>/<version>/`, and `<registry>/<name>/latest` naming the newest
version. The one place that writes and follows the `latest` pointer."""

from __future__ import annotations

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST
from llm_pipeline.storage.names import check_name

LATEST = "latest"


def point_latest(model: Storage, version: str) -> None:
    """Written after the whole version exists: a reader who follows it never sees a half-published model."""
    model.write_bytes(LATEST, (check_name(version, "version") + "\n").encode())


def resolve_version(registry: Storage, name: str, version: str | None = None) -> Storage:
    """The folder of a published version; `latest` (the default) follows the pointer.

    Names are checked by the one naming rule, and so is what a `latest` pointer holds: a pointer
    naming anything but a version folder beside it (`../v1/x`, an absolute path) is refused."""
    model = registry.child(check_name(name, "model name"))
    if not version or version == LATEST:
        if not model.exists(LATEST):
            raise FileNotFoundError(f"no published model at {model.uri} (no '{LATEST}' pointer)")
        pointed = model.read_bytes(LATEST, limit=1024).decode("utf-8", "replace").strip()
        try:
            version = check_name(pointed, "version")
        except ValueError:
            raise ValueError(
                f"pointer {model.uri}/{LATEST} names {pointed!r}, which is not a version folder of {model.uri}; refusing to follow it"
            ) from None
    folder = model.child(check_name(version, "version"))
    if not folder.exists(MANIFEST):
        raise FileNotFoundError(f"model version {folder.uri} has no {MANIFEST}")
    return folder


def resolve_model_folder(uri: str, version: str | None = None) -> Storage:
    """A version folder given either itself or its model folder (`<registry>/<name>`, whose latest is taken)."""
    folder = Storage(uri)
    if version is None and folder.exists(MANIFEST):
        return folder
    return resolve_version(folder.parent(), folder.name, version)
