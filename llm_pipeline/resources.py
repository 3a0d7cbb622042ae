"""Resources: the storage root and the IO manager that passes small values between assets."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import dagster as dg
from pydantic import Field, field_validator

from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.names import check_name

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_storage_root() -> str:
    """`.storage/` in the repo (git-ignored), where LLM_PIPELINE_STORAGE_ROOT is not set."""
    return os.path.join(REPO_ROOT, ".storage")


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

    def stage_folder(self, stage: str, run_id: str, partition: str | None = None) -> Storage:
        """A new folder per run and stage (and batch): materializations never overwrite each other."""
        return self.root().child(stage, *([partition] if partition else []), run_id)

    def process_env(self) -> dict[str, str]:
        """The one channel that hands these storage options to a child process (the trainer): fsspec's
        own FSSPEC_<PROTOCOL> variable, which it applies to every filesystem of that protocol the
        process opens, the training config's own URI included. Credentials stay in the environment."""
        protocol = self.root_uri.split("://", 1)[0] if "://" in self.root_uri else ""
        options = self.storage_options()
        return {f"FSSPEC_{protocol.upper()}": json.dumps(options)} if protocol and options else {}


class AutomationSettings(dg.ConfigurableResource):
    """What the sensors watch and when retraining starts (LLM_PIPELINE_LANDING_URI,
    LLM_PIPELINE_RETRAIN_MIN_NEW_TOKENS, LLM_PIPELINE_TRAINING_RUN_CONFIG, LLM_PIPELINE_LANDING_QUIET_SECONDS)."""

    landing_uri: str = Field(default="", description="folder watched for new corpus files; empty: <storage root>/landing")
    retrain_min_new_tokens: int = Field(default=1, description="retrain once this many new training tokens have been tokenized (>= 1)")
    training_run_config: str = Field(
        default="",
        description="a YAML file (path or URI) with the run config of the retraining runs the sensor and schedule start, "
        "as the launchpad shows it for training_job (ops: trained_checkpoint: config: ...); empty: the defaults",
    )
    landing_quiet_seconds: int = Field(
        default=3600,
        ge=0,
        description="a delivery (a folder or file directly under the landing folder) unchanged this long, its files all taken, "
        "is sealed: not listed again, so a tick costs the same however many files were taken before",
    )

    @field_validator("retrain_min_new_tokens", mode="before")
    @classmethod
    def _at_least_one(cls, value):
        # Not a pydantic bound: an environment variable (dg.EnvVar.int) is a placeholder here, and
        # is checked once Dagster resolves it, when a sensor tick or a run starts.
        if type(value) is int and value < 1:
            raise ValueError(f"retrain_min_new_tokens must be >= 1, got {value}")
        return value


class RayClusterResource(dg.ConfigurableResource):
    """A Ray cluster that training (`launcher: ray`) and the data stages (`executor: ray`) run on
    (LLM_PIPELINE_RAY_ADDRESS, LLM_PIPELINE_RAY_DRIVER_ADDRESS). Every node needs llm_pipeline and
    its dependencies installed, and the storage root within reach."""

    address: str = Field(
        default="", description="the head's dashboard URL, e.g. http://head:8265 (what `ray job submit --address` takes); empty: no cluster"
    )
    driver_address: str = Field(
        default="",
        description="where the data stages connect as a Ray driver: ray://head:10001 (Ray Client; the default, on the address's host) or head:6379",
    )
    python: str = Field(
        default="", description="the Python interpreter on the cluster's nodes; empty: this process's own path (one image everywhere)"
    )

    def job_address(self, stage: str) -> str:
        """The address, checked to answer; a dg.Failure naming it otherwise (a retry would not help)."""
        from llm_pipeline.ray_cluster import check_reachable

        if not self.address:
            raise dg.Failure(
                description=f"{stage}: the Ray launcher/executor needs a cluster: set LLM_PIPELINE_RAY_ADDRESS (e.g. http://head:8265)",
                allow_retries=False,
            )
        try:
            check_reachable(self.address)
        except ValueError as e:
            raise dg.Failure(description=f"{stage}: {e}", allow_retries=False) from None
        return self.address

    def driver(self, stage: str) -> str:
        from llm_pipeline.ray_cluster import driver_address

        return driver_address(self.job_address(stage), self.driver_address)


class JsonIOManager(dg.ConfigurableIOManager):
    """Small JSON values passed between assets, one per run: `<root>/_values/<asset>/<partition>/<run id>.json`.

    A step reads the value of the run that produced its input: its own run, or, when an old run is
    re-executed, that run (Dagster names it as the upstream output's run). An input that no run in
    the plan produced is the asset's latest materialization. Two overlapping runs therefore never
    read each other's values. Large artifacts never pass through here: assets write them to storage
    and return where they are.
    """

    storage: StorageResource

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        value_folder(self.storage, context.asset_key, partition).write_json(f"{context.run_id}.json", obj)

    def load_input(self, context: dg.InputContext):
        asset_key = context.asset_key
        if context.has_asset_partitions:
            values = {p: self._load(context, asset_key, p) for p in context.asset_partition_keys}
            return values if len(values) > 1 or not context.has_partition_key else next(iter(values.values()))
        return self._load(context, asset_key, None)

    def _load(self, context: dg.InputContext, asset_key: dg.AssetKey, partition: str | None):
        folder = value_folder(self.storage, asset_key, partition)
        for run_id in (_producing_run(context), latest_run(context.instance, asset_key, partition)):
            if run_id and folder.exists(f"{run_id}.json"):
                return json.loads(folder.read_bytes(f"{run_id}.json"))
        where = f" partition {partition!r}" if partition else ""
        raise FileNotFoundError(
            f"asset {asset_key.to_user_string()}{where} has no value under {folder.uri} from the run that produced it; materialize it first"
        )


def value_folder(storage: StorageResource, asset_key: dg.AssetKey, partition: str | None) -> Storage:
    """Where the values of one asset (partition) live, one file per run."""
    return storage.root().child("_values", *asset_key.path, _partition_folder(partition))


def _partition_folder(partition: str | None) -> str:
    if partition is None:
        return "_unpartitioned"
    try:
        return check_name(partition, "partition key")
    except ValueError:  # any other key gets a stable folder name of its own
        return "p-" + hashlib.sha256(partition.encode()).hexdigest()[:24]


def _producing_run(context: dg.InputContext) -> str | None:
    """The run whose step produced this input, when a step in this run's plan did (this run, or the
    parent of a re-execution); None when the input comes from outside the run."""
    try:
        upstream = context.upstream_output
        return upstream.run_id if upstream is not None else None
    except dg.DagsterInvariantViolationError:
        return None


def latest_materialization(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None = None):
    """The newest materialization record of the asset (partition), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return records[0] if records else None


def latest_run(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str | None) -> str | None:
    record = latest_materialization(instance, asset_key, partition)
    return record.run_id if record else None
