"""The job over the whole graph, the retraining schedule, and the new-corpus sensor."""

from __future__ import annotations

import hashlib
import json
import os

import dagster as dg

from llm_pipeline.corpus.sources import CorpusSourceError, list_sources
from llm_pipeline.resources import StorageResource

pipeline_job = dg.define_asset_job(
    "llm_pipeline_job", selection=dg.AssetSelection.all(), description="Corpus to published model: the whole graph."
)

retraining_schedule = dg.ScheduleDefinition(
    name="retraining_schedule",
    job=pipeline_job,
    # A cron string from the environment; the default retrains weekly, Sunday 03:00.
    cron_schedule=os.environ.get("LLM_PIPELINE_RETRAIN_CRON", "0 3 * * 0"),
    description="Re-materializes the whole graph: new corpus, new model.",
)


def landing_uri(storage: StorageResource) -> str:
    return os.environ.get("LLM_PIPELINE_LANDING_URI") or storage.root().child("landing").uri


def new_files(storage: StorageResource, uri: str, cursor: str | None) -> tuple[dict[str, str], int, str]:
    """Files under `uri` that are new or changed and complete (path -> identity), how many are still
    arriving, and the cursor to keep.

    A file is known by its identity, path + size + version (an object's ETag, a file's mtime), not by
    a time watermark: a late file with an old mtime, or one renamed into the folder, is still new.
    A file is taken once its identity is the same on two ticks in a row (an upload still growing
    is not), and never again unless its content changes. Hidden files and in-flight names (*.part,
    *.tmp, ...) are judged relative to the landing folder, with the corpus stage's own listing, so
    a landing folder under `.storage/` works.
    """
    state = json.loads(cursor) if cursor else {}
    taken, seen = state.get("taken", {}), state.get("seen", {})
    try:
        listing = list_sources(uri, "**/*", storage_options=storage.at(uri).storage_options)
    except CorpusSourceError:  # no landing folder yet, or nothing in it
        return {}, 0, json.dumps({"taken": taken, "seen": {}}, sort_keys=True)
    current = {f.uri: f"{f.size}:{f.version}" for f in listing.files}
    fresh = {path: ident for path, ident in current.items() if taken.get(path) != ident}
    ready = {path: ident for path, ident in sorted(fresh.items()) if seen.get(path) == ident}
    taken.update(ready)
    pending = {path: ident for path, ident in fresh.items() if path not in ready}
    return ready, len(pending), json.dumps({"taken": taken, "seen": pending}, sort_keys=True)


@dg.sensor(job=pipeline_job, minimum_interval_seconds=30, description="Starts a run when new corpus files land.")
def new_corpus_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    uri = landing_uri(storage)
    ready, arriving, cursor = new_files(storage, uri, context.cursor)
    context.update_cursor(cursor)
    if not ready:
        return dg.SkipReason(f"no new complete files under {uri}" + (f" ({arriving} still arriving)" if arriving else ""))
    run_key = hashlib.sha256("\n".join(f"{path} {ident}" for path, ident in ready.items()).encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"raw_corpus": {"config": {"source_uri": uri, "glob": "**/*", "exclude": []}}}},
        tags={"llm_pipeline/trigger": "new_corpus", "llm_pipeline/new_files": str(len(ready))},
    )
