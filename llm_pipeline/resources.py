"""Resources: the storage root and the IO manager that passes small values between assets."""

from __future__ import annotations

import json
import os
from typing import Optional

import dagster as dg
from pydantic import Field

from llm_pipeline.storage import Storage

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_storage_root() -> str:
    """LLM_PIPELINE_STORAGE_ROOT, else `.storage/` in the repo (git-ignored)."""
    return os.environ.get("LLM_PIPELINE_STORAGE_ROOT") or os.path.join(REPO_ROOT, ".storage")


class StorageResource(dg.ConfigurableResource):
    """Every artifact lives under one root URI: a local folder, s3://bucket/prefix, gs://..."""

    root_uri: str = Field(description="storage root URI (fsspec)")
    s3_endpoint_url: Optional[str] = Field(default=None, description="S3 API endpoint, for S3-compatible servers")

    def storage_options(self) -> dict:
        if self.root_uri.startswith("s3://") and self.s3_endpoint_url:
            return {"client_kwargs": {"endpoint_url": self.s3_endpoint_url}}
        return {}

    def root(self) -> Storage:
        return Storage(self.root_uri, **self.storage_options())

    def at(self, uri: str) -> Storage:
        """Another URI with the same credentials and endpoint (for sources and stage outputs)."""
        return Storage(uri, **(self.storage_options() if uri.startswith("s3://") else {}))

    def stage_folder(self, stage: str, run_id: str) -> Storage:
        """A new folder per run and stage: materializations never overwrite each other."""
        return self.root().child(stage, run_id)

    def process_env(self) -> dict[str, str]:
        """Environment that lets a child process (the trainer) reach the same storage."""
        return {"AWS_ENDPOINT_URL": self.s3_endpoint_url} if self.s3_endpoint_url else {}


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores each asset's (small, JSON) value at `<root>/_values/<asset key>.json`.

    Large artifacts never pass through here: assets write them to storage and return where they are.
    """

    storage: StorageResource

    def _name(self, context) -> str:
        return "/".join(context.asset_key.path) + ".json"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self.storage.root().child("_values").write_bytes(self._name(context), json.dumps(obj, indent=2, sort_keys=True).encode())

    def load_input(self, context: dg.InputContext):
        values = self.storage.root().child("_values")
        name = self._name(context.upstream_output)
        if not values.exists(name):
            raise FileNotFoundError(f"asset {context.upstream_output.asset_key.to_user_string()} has not been materialized "
                                    f"under {values.uri}; materialize it first")
        return json.loads(values.read_bytes(name))
