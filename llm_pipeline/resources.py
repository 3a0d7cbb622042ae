"""Resources: the storage root, the Ray cluster, the automation settings, and the IO manager that passes
stage values between assets."""

from __future__ import annotations

import hashlib
import json
import os
import typing
from collections.abc import Mapping
from typing import Optional

import dagster as dg
from dagster._utils.schedules import is_valid_cron_string  # what ScheduleDefinition itself checks
from pydantic import Field, TypeAdapter, field_validator

from llm_pipeline.storage.folders import Storage, bounded
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


def cron_string(value: str, name: str) -> str:
    """`value` when it is a cron string Dagster schedules on; ValueError naming `name` otherwise."""
    if not is_valid_cron_string(value):
        raise ValueError(f"{name} must be a cron string (minute hour day month weekday), got {bounded(value)!r}")
    return value


class AutomationSettings(dg.ConfigurableResource):
    """What the sensors watch and when retraining starts (LLM_PIPELINE_LANDING_URI,
    LLM_PIPELINE_RETRAIN_MIN_NEW_TOKENS, LLM_PIPELINE_TRAINING_RUN_CONFIG, LLM_PIPELINE_LANDING_QUIET_SECONDS,
    LLM_PIPELINE_RETRAIN_CRON)."""

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

    retrain_cron: str = Field(
        default="0 3 * * 0",
        description="when retraining_schedule starts a training run (cron; the default is weekly, Sunday 03:00); "
        "read when the definitions load, as a schedule's cron is",
    )

    @field_validator("retrain_cron", mode="before")
    @classmethod
    def _a_cron(cls, value):
        return value if isinstance(value, dg.EnvVar) else cron_string(value, "retrain_cron")

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
    """Stage values (llm_pipeline/contracts.py) as JSON, one file per run:
    `<root>/_values/<asset>/<partition>/<run id>.json`, loaded back as the type the input is annotated with.

    Which run's value an input gets, one rule (`stored_value`): the run that produced it, when a step
    in this run's plan did (this run, or the run an old run's re-execution names); else the asset
    partition's latest materialization. Two overlapping runs therefore never read each other's
    values. An input that takes every partition (`dict[str, ...]`, with AllPartitionMapping) gets
    the materialized ones in batch order; a partition never materialized is left out. Large
    artifacts never pass through here: assets write them to storage and return where they are.
    """

    storage: StorageResource

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        plain = TypeAdapter(type(obj)).dump_python(obj)  # json.dumps keeps inf/nan (a diverged loss)
        value_folder(self.storage, context.asset_key, partition).write_json(f"{context.run_id}.json", plain)

    def load_input(self, context: dg.InputContext):
        expected = context.dagster_type.typing_type
        producer = _producing_run(context)
        if context.has_asset_partitions and typing.get_origin(expected) in (dict, Mapping):
            keys = set(context.asset_partition_keys)
            ordered = [k for k in context.asset_partitions_def.get_partition_keys(dynamic_partitions_store=context.instance) if k in keys]
            return load_values(context.instance, self.storage, context.asset_key, ordered, expected, producer)
        partition = context.asset_partition_key if context.has_asset_partitions else None
        value = stored_value(context.instance, self.storage, context.asset_key, partition, producer)
        if value is None:
            where = f" partition {partition!r}" if partition else ""
            raise FileNotFoundError(
                f"asset {context.asset_key.to_user_string()}{where} has no stored value under "
                f"{value_folder(self.storage, context.asset_key, partition).uri} from the run that produced it; materialize it first"
            )
        return value if expected is typing.Any else TypeAdapter(expected).validate_python(value)


def stored_value(
    instance: dg.DagsterInstance, storage: StorageResource, asset_key: dg.AssetKey, partition: str | None, producing_run: str | None = None
):
    """The stored value (plain JSON) of an asset partition: the producing run's where it wrote one,
    else the latest materialization's; None where there is neither."""
    folder = value_folder(storage, asset_key, partition)
    for run_id in (producing_run, latest_run(instance, asset_key, partition)):
        if run_id and folder.exists(f"{run_id}.json"):
            return json.loads(folder.read_bytes(f"{run_id}.json"))
    return None


def load_values(
    instance: dg.DagsterInstance,
    storage: StorageResource,
    asset_key: dg.AssetKey,
    partitions: list[str],
    as_type,
    producing_run: str | None = None,
):
    """The values of the materialized ones among `partitions` (in that order), as `as_type`
    (`dict[str, SomeRef]`): the IO manager's rule, for the readers that are not an input."""
    found = {}
    for key in partitions:
        value = stored_value(instance, storage, asset_key, key, producing_run)
        if value is not None:
            found[key] = value
    return TypeAdapter(as_type).validate_python(found)


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
