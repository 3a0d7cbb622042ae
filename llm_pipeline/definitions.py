"""The one Definitions object (`dagster dev` finds it through workspace.yaml)."""

import os

import dagster as dg

from llm_pipeline.assets.corpus import raw_corpus
from llm_pipeline.assets.evaluation import (
    eval_loss_within_threshold,
    eval_metrics,
    eval_perplexity_within_threshold,
    harness_scores_meet_minimums,
    no_eval_contamination,
    no_regression_vs_published,
)
from llm_pipeline.assets.publishing import published_model
from llm_pipeline.assets.shards import tokenized_shards
from llm_pipeline.assets.tokenizer import tokenizer
from llm_pipeline.assets.training import trained_checkpoint
from llm_pipeline.automation import (
    data_automation,
    new_corpus_sensor,
    pipeline_job,
    retraining_schedule,
    retraining_sensor,
    training_job,
)
from llm_pipeline.resources import AutomationSettings, JsonIOManager, RayClusterResource, StorageResource, default_storage_root

ASSETS = [raw_corpus, tokenizer, tokenized_shards, trained_checkpoint, eval_metrics, published_model]
CHECKS = [
    eval_loss_within_threshold,
    eval_perplexity_within_threshold,
    no_regression_vs_published,
    harness_scores_meet_minimums,
    no_eval_contamination,
]


def _setting(name: str, default, as_int: bool = False):
    """A resource value from LLM_PIPELINE_<name> (as dg.EnvVar: read when a run starts, shown as the
    variable in the UI, never as its value), else the default a newcomer gets."""
    variable = f"LLM_PIPELINE_{name}"
    if not os.environ.get(variable):
        return default
    return dg.EnvVar.int(variable) if as_int else dg.EnvVar(variable)


def make_resources(root_uri: str | None = None) -> dict:
    storage = StorageResource(
        root_uri=root_uri or _setting("STORAGE_ROOT", default_storage_root()),
        s3_endpoint_url=_setting("S3_ENDPOINT_URL", None),
    )
    return {
        "storage": storage,
        "io_manager": JsonIOManager(storage=storage),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "ray_cluster": RayClusterResource(
            address=_setting("RAY_ADDRESS", ""), driver_address=_setting("RAY_DRIVER_ADDRESS", ""), python=_setting("RAY_PYTHON", "")
        ),
        "automation": AutomationSettings(
            landing_uri=_setting("LANDING_URI", ""),
            retrain_min_new_tokens=_setting("RETRAIN_MIN_NEW_TOKENS", 1, as_int=True),
            training_run_config=_setting("TRAINING_RUN_CONFIG", ""),
            landing_quiet_seconds=_setting("LANDING_QUIET_SECONDS", 3600, as_int=True),
        ),
    }


defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[pipeline_job, training_job],
    schedules=[retraining_schedule],
    sensors=[new_corpus_sensor, retraining_sensor, data_automation],
    resources=make_resources(),
    # Every step in the run's own process: a step process of its own would load Dagster and these
    # definitions again (and the evaluation steps torch), for each of a training run's eight steps,
    # while the heavy work has processes of its own already (the trainer's ranks, through Pipes).
    executor=dg.in_process_executor,
)
