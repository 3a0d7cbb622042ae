"""The job over the whole graph, the retraining schedule, and the new-corpus sensor."""

from __future__ import annotations

import datetime as dt
import json
import os

import dagster as dg

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


def _modified(info: dict) -> float:
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created") or 0
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value)


def landing_uri(storage: StorageResource) -> str:
    return os.environ.get("LLM_PIPELINE_LANDING_URI") or storage.root().child("landing").uri


def new_files(storage: StorageResource, uri: str, cursor: str | None) -> tuple[list[tuple[float, str]], str | None]:
    """Files under `uri` newer than the cursor (a (modified time, path) watermark), oldest first."""
    landing = storage.at(uri)
    if not landing.exists():
        return [], cursor
    found = sorted((_modified(info), path) for path, info in landing.fs.find(landing.path, detail=True).items()
                   if info.get("type") == "file" and "/." not in path)
    mark = tuple(json.loads(cursor)) if cursor else None
    fresh = [f for f in found if mark is None or f > mark]
    return fresh, (json.dumps(list(fresh[-1])) if fresh else cursor)


@dg.sensor(job=pipeline_job, minimum_interval_seconds=30, description="Starts a run when new corpus files land.")
def new_corpus_sensor(context: dg.SensorEvaluationContext, storage: StorageResource):
    uri = landing_uri(storage)
    fresh, cursor = new_files(storage, uri, context.cursor)
    if not fresh:
        return dg.SkipReason(f"no new files under {uri}")
    newest_time, newest_path = fresh[-1]
    context.update_cursor(cursor)
    return dg.RunRequest(
        run_key=f"{newest_path}@{newest_time}",
        run_config={"ops": {"raw_corpus": {"config": {"source_uri": uri, "glob": "**/*", "exclude": []}}}},
        tags={"llm_pipeline/trigger": "new_corpus", "llm_pipeline/new_files": str(len(fresh))},
    )
