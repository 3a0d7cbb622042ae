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
import os

import dagster as dg

from llm_pipeline.assets.partitions import batch_keys, corpus_batches
from llm_pipeline.corpus.batches import batch_key, write_batch
from llm_pipeline.corpus.sources import CorpusSourceError, NothingMatched, SourceMissing, list_sources
from llm_pipeline.resources import AutomationSettings, StorageResource, latest_materialization
from llm_pipeline.storage.folders import bounded
from llm_pipeline.tokenize.bpe import made_with_another_tokenizer

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

retraining_schedule = dg.ScheduleDefinition(
    name="retraining_schedule",
    job=training_job,
    # A cron string from the environment; the default retrains weekly, Sunday 03:00. Stopped until
    # switched on: it spends compute whether or not data arrived.
    cron_schedule=os.environ.get("LLM_PIPELINE_RETRAIN_CRON", "0 3 * * 0"),
    description="Retrains on every corpus batch on a cron, evaluates, and publishes if the checks pass.",
)


def landing_uri(storage: StorageResource, settings: AutomationSettings) -> str:
    return settings.landing_uri or storage.root().child("landing").uri


class LandingError(RuntimeError):
    """The landing folder could not be looked at, or the sensor's cursor cannot be read: a tick that
    fails with this names what failed, instead of reading as 'nothing new'."""


def read_cursor(cursor: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(taken, seen) from the new-corpus sensor's cursor; LandingError naming the way out otherwise."""
    if not cursor:
        return {}, {}
    try:
        state = json.loads(cursor)
        taken, seen = state["taken"], state["seen"]
        if not all(
            isinstance(part, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in part.items()) for part in (taken, seen)
        ):
            raise TypeError("taken and seen must map file names to identities")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise LandingError(
            f"new_corpus_sensor's cursor is not one this release writes ({type(e).__name__}: {bounded(str(e), 120)}; "
            f"cursor starts {cursor[:60]!r}). Clear it to go on: `dagster sensor cursor new_corpus_sensor --delete`, "
            "or the sensor's page in the UI. The files in the landing folder are then taken once more as one new "
            "batch, whose documents dedup drops as duplicates of the earlier batches."
        ) from None
    return taken, seen


def new_files(storage: StorageResource, uri: str, cursor: str | None) -> tuple[dict[str, str], int, str, list[str]]:
    """Files under `uri` that are new or changed and complete (relative path -> identity), how many
    are still arriving, the cursor to keep, and the entries that cannot be taken (named, with why).

    A file is known by its identity, path + size + version (an object's ETag, a file's mtime), not by
    a time watermark: a late file with an old mtime, or one renamed into the folder, is still new.
    A file is taken once its identity is the same on two ticks in a row (an upload still growing
    is not), and never again unless its content changes. Hidden files and in-flight names (*.part,
    *.tmp, ...) are judged relative to the landing folder, with the corpus stage's own listing, so
    a landing folder under `.storage/` works. A folder that cannot be listed raises LandingError.
    """
    taken, seen = read_cursor(cursor)
    try:
        listing = list_sources(uri, "**/*", storage_options=storage.at(uri).storage_options)
    except (SourceMissing, NothingMatched):  # no landing folder yet, or nothing in it
        return {}, 0, json.dumps({"taken": taken, "seen": {}}, sort_keys=True), []
    except CorpusSourceError as e:
        raise LandingError(f"new_corpus_sensor cannot list the landing folder: {e}") from None
    current = {f.rel: f"{f.size}:{f.version}" for f in listing.files}
    fresh = {rel: ident for rel, ident in current.items() if taken.get(rel) != ident}
    ready = {rel: ident for rel, ident in sorted(fresh.items()) if seen.get(rel) == ident}
    taken.update(ready)
    pending = {rel: ident for rel, ident in fresh.items() if rel not in ready}
    refused = [f"{s.rel} ({s.reason})" for s in listing.skipped if s.reason != "hidden_or_in_flight"]
    return ready, len(pending), json.dumps({"taken": taken, "seen": pending}, sort_keys=True), refused


@dg.sensor(
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Makes each delivery of complete new files in the landing folder a corpus batch (a partition).",
)
def new_corpus_sensor(context: dg.SensorEvaluationContext, storage: StorageResource, automation: AutomationSettings):
    uri = landing_uri(storage, automation)
    ready, arriving, cursor, refused = new_files(storage, uri, context.cursor)
    not_taken = ""
    if refused:
        not_taken = f"; {len(refused)} entries cannot be taken: {', '.join(refused[:5])}" + (" ..." if len(refused) > 5 else "")
        context.log.warning(f"new_corpus_sensor: under {uri}{not_taken}")
    if not ready:
        return dg.SensorResult(
            skip_reason=f"no new complete files under {uri}" + (f" ({arriving} still arriving)" if arriving else "") + not_taken,
            cursor=cursor,
        )
    key = batch_key(ready)
    write_batch(storage.root(), key, uri, ready)  # before the partition exists: the batch's files are fixed
    context.log.info(f"new corpus batch {key}: {len(ready)} files under {uri}")
    return dg.SensorResult(dynamic_partitions_requests=[corpus_batches.build_add_request([key])], cursor=cursor)


def _latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    record = latest_materialization(instance, dg.AssetKey(asset), partition)
    return record.asset_materialization if record else None


def _metadata_value(materialization, name: str):
    entry = materialization.metadata.get(name)
    return entry.value if entry is not None else None


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains on every corpus batch once retrain_min_new_tokens new training tokens are tokenized.",
)
def retraining_sensor(context: dg.SensorEvaluationContext, automation: AutomationSettings):
    tokenizer = _latest(context.instance, "tokenizer")
    if tokenizer is None:
        return dg.SkipReason("no tokenizer yet")
    current_tokenizer = _metadata_value(tokenizer, "sha256")
    shards = {}
    for batch in batch_keys(context.instance):
        mat = _latest(context.instance, "tokenized_shards", batch)
        if mat is not None:
            shards[batch] = mat
    stale = made_with_another_tokenizer({b: _metadata_value(mat, "tokenizer_sha256") for b, mat in shards.items()}, current_tokenizer)
    if stale:  # training would refuse the mix; the re-tokenization is under way
        return dg.SkipReason(f"waiting for batches {', '.join(stale)} to be re-tokenized with the current tokenizer")
    used = {}
    trained = _latest(context.instance, "trained_checkpoint")
    if trained is not None:
        used = _metadata_value(trained, "batches") or {}
    # Content, not folders: a batch re-tokenized to the same shards is not new data.
    fresh = {b: mat for b, mat in shards.items() if used.get(b) != _metadata_value(mat, "manifest_sha256")}
    new_tokens = sum(int(_metadata_value(mat, "train_tokens") or 0) for mat in fresh.values())
    if not fresh or new_tokens < automation.retrain_min_new_tokens:
        return dg.SkipReason(
            f"{new_tokens:,} new training tokens in {len(fresh)} batches; retraining at {automation.retrain_min_new_tokens:,}"
        )
    data = {b: _metadata_value(mat, "manifest_sha256") for b, mat in shards.items()}
    return dg.RunRequest(
        run_key=hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16],
        tags={
            "llm_pipeline/trigger": "new_tokens",
            "llm_pipeline/new_batches": ",".join(fresh)[:200],
            "llm_pipeline/new_train_tokens": str(new_tokens),
        },
    )
