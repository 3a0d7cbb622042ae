"""How the pipeline runs itself: new files become corpus batches, batches are cleaned and tokenized
as they arrive (Declarative Automation), and the model is retrained once enough new tokens are in.

    new_corpus_sensor    landing folder -> a batch record + a new `corpus_batches` partition   (running)
    data_automation      raw_corpus / tokenizer / tokenized_shards, eager on new partitions     (running)
    retraining_sensor    enough new training tokens -> train, evaluate, publish (gated)         (running)
    retraining_schedule  the same on a cron, new data or not                                    (stopped)
"""

from __future__ import annotations

import hashlib
import json

import dagster as dg
import yaml

from llm_pipeline.assets.partitions import batch_keys, corpus_batches
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.contracts import CheckpointRef, ShardSetRef, TokenizerRef
from llm_pipeline.corpus.batches import batch_key, find_batch, write_batch
from llm_pipeline.corpus.landing import LandingScan, Ledger, scan
from llm_pipeline.redact import redacted
from llm_pipeline.resources import AutomationSettings, StorageResource, latest_materialization
from llm_pipeline.storage.folders import bounded, read_named_file
from llm_pipeline.tokenize.bpe import made_with_another_tokenizer

# Queued, starting, running or being cancelled: a run that still holds (or will hold) the trainer.
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
DATA_ASSETS = ["raw_corpus", "tokenizer", "tokenized_shards"]
TRAINING_ASSETS = ["trained_checkpoint", "eval_metrics", "published_model"]

pipeline_job = dg.define_asset_job(
    "llm_pipeline_job",
    selection=dg.AssetSelection.all(),
    partitions_def=corpus_batches,
    description="One corpus batch to a published model: the whole graph for the batch chosen as partition.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
    description="Train on every tokenized corpus batch, evaluate, and publish if the blocking checks pass.",
)

data_automation = dg.AutomationConditionSensorDefinition(
    "data_automation",
    target=dg.AssetSelection.assets(*DATA_ASSETS),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Cleans and tokenizes each new corpus batch once; trains the tokenizer on the first.",
)


def retraining_schedule(cron: str) -> dg.ScheduleDefinition:
    """Retraining on `cron` (AutomationSettings.retrain_cron: a schedule's cron is fixed when the
    definitions load). Stopped until switched on: it spends compute whether or not data arrived."""

    @dg.schedule(
        name="retraining_schedule",
        job=training_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Retrains on every corpus batch on a cron, evaluates, and publishes if the checks pass.",
    )
    def schedule(context: dg.ScheduleEvaluationContext, automation: AutomationSettings):
        return dg.RunRequest(run_config=training_run_config(automation), tags={"llm_pipeline/trigger": "schedule"})

    return schedule


def training_run_config(settings: AutomationSettings) -> dict:
    """The run config retraining runs start with: the file `training_run_config` names (the launchpad's
    YAML for training_job), or the defaults. Dagster checks it against the job's config when it launches."""
    if not settings.training_run_config:
        return {}
    try:
        config = yaml.safe_load(read_named_file(settings.training_run_config, "training_run_config", 1 << 20))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"training_run_config {settings.training_run_config!r} cannot be read as YAML: {bounded(str(e))}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"training_run_config {settings.training_run_config!r} must hold a mapping (ops: ...), got {type(config).__name__}"
        )
    return config


def landing_uri(storage: StorageResource, settings: AutomationSettings) -> str:
    return settings.landing_uri or storage.root().child("landing").uri


def new_files(
    storage: StorageResource, settings: AutomationSettings, uri: str, cursor: str | None, now: float | None = None
) -> LandingScan:
    """One look at the landing folder (corpus/landing.py: deliveries, the ledger, the cursor)."""
    return scan(uri, storage.at(uri).storage_options, cursor, Ledger(storage.root(), uri), settings.landing_quiet_seconds, now)


@dg.sensor(
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Makes each delivery of complete new files in the landing folder a corpus batch (a partition).",
)
@redacted_step
def new_corpus_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, automation: AutomationSettings):
    uri = landing_uri(storage, automation)
    look = new_files(storage, automation, uri, context.cursor)
    shown = redacted(uri)  # skip reasons are stored as they are: no credential in them
    not_taken = ""
    if look.refused:
        refused = ", ".join(look.refused[:5]) + (" ..." if len(look.refused) > 5 else "")
        not_taken = f"; {len(look.refused)} entries cannot be taken: {refused}"
        context.log.warning(f"new_corpus_sensor: under {shown}{not_taken}")
    for note in look.notes:
        context.log.warning(f"new_corpus_sensor: {note}")
    if look.reopened:
        context.log.warning(
            f"new_corpus_sensor: {len(look.reopened)} sealed deliveries under {shown} hold new or changed files, taken like "
            f"any others (new data belongs in a new delivery): {', '.join(look.reopened[:5])}"
        )
    if look.sealed:
        context.log.info(f"sealed {len(look.sealed)} quiet deliveries under {shown} (audited from now on): {', '.join(look.sealed[:5])}")
    if not look.ready:
        arriving = f" ({look.arriving} still arriving)" if look.arriving else ""
        return dg.SensorResult(skip_reason=f"no new complete files under {shown}{arriving}{not_taken}", cursor=look.cursor)
    # A tick that recorded this very batch and died before its cursor was kept gets the same key back:
    # adding a partition that exists is a no-op, so the files become one batch, never two.
    key = find_batch(storage.root(), look.ready) or batch_key(look.ready)
    write_batch(storage.root(), key, uri, look.ready)  # before the partition exists: the batch's files are fixed
    context.log.info(f"corpus batch {key}: {len(look.ready)} files under {shown}")
    return dg.SensorResult(dynamic_partitions_requests=[corpus_batches.build_add_request([key])], cursor=look.cursor)


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict | None:
    """The latest materialization's metadata values ({key: value}), or None before the first."""
    record = latest_materialization(instance, dg.AssetKey(asset), partition)
    return {key: entry.value for key, entry in record.asset_materialization.metadata.items()} if record else None


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains on every corpus batch once retrain_min_new_tokens new training tokens are tokenized.",
)
@redacted_step
def retraining_sensor(context: dg.SensorEvaluationContext, automation: AutomationSettings):
    # The stage values as the assets declared them in their metadata (contracts.py): no value file is read.
    tokenizer_metadata = _metadata(context.instance, "tokenizer")
    if tokenizer_metadata is None:
        return dg.SkipReason("no tokenizer yet")
    tokenizer = TokenizerRef.from_metadata(tokenizer_metadata)
    shards: dict[str, ShardSetRef] = {}
    for batch in batch_keys(context.instance):
        metadata = _metadata(context.instance, "tokenized_shards", batch)
        if metadata is not None:
            shards[batch] = ShardSetRef.from_metadata(metadata)
    stale = made_with_another_tokenizer({b: s.tokenizer_sha256 for b, s in shards.items()}, tokenizer.sha256)
    if stale:  # training would refuse the mix; the re-tokenization is under way
        return dg.SkipReason(f"waiting for batches {', '.join(stale)} to be re-tokenized with the current tokenizer")
    trained = _metadata(context.instance, "trained_checkpoint")
    used = CheckpointRef.batches_from_metadata(trained) if trained is not None else {}
    # Content, not folders: a batch re-tokenized to the same shards is not new data.
    fresh = {b: s for b, s in shards.items() if used.get(b) != s.manifest_sha256}
    new_tokens = sum(s.train_tokens for s in fresh.values())
    if not fresh or new_tokens < automation.retrain_min_new_tokens:
        return dg.SkipReason(
            f"{new_tokens:,} new training tokens in {len(fresh)} batches; retraining at {automation.retrain_min_new_tokens:,}"
        )
    # One training at a time: newer data waits for the next run, which takes all of it.
    training = context.instance.get_run_records(dg.RunsFilter(job_name=training_job.name, statuses=UNFINISHED), limit=1)
    if training:
        return dg.SkipReason(
            f"{new_tokens:,} new training tokens in {len(fresh)} batches wait for training run {training[0].dagster_run.run_id} to finish"
        )
    data = {b: s.manifest_sha256 for b, s in shards.items()}
    return dg.RunRequest(
        run_config=training_run_config(automation),
        run_key=hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16],
        tags={
            "llm_pipeline/trigger": "new_tokens",
            "llm_pipeline/new_batches": ",".join(fresh)[:200],
            "llm_pipeline/new_train_tokens": str(new_tokens),
        },
    )
