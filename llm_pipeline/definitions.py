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
from llm_pipeline.resources import (
    AutomationSettings,
    JsonIOManager,
    RayClusterResource,
    StorageResource,
    cron_string,
    default_storage_root,
)

ASSETS = [raw_corpus, tokenizer, tokenized_shards, trained_checkpoint, eval_metrics, published_model]
CHECKS = [
    eval_loss_within_threshold,
    eval_perplexity_within_threshold,
    no_regression_vs_published,
    harness_scores_meet_minimums,
    no_eval_contamination,
]


def _environment(resource: type[dg.ConfigurableResource], **variables: str) -> dict:
    """The fields of `resource` whose variable LLM_PIPELINE_<name> is set, as dg.EnvVar: read when a run
    starts, shown in the UI as the variable, never as its value. A field whose variable is not set is
    left out: the resource's own default is what a newcomer gets."""
    values: dict = {}
    for field, name in variables.items():
        variable = f"LLM_PIPELINE_{name}"
        if os.environ.get(variable):
            values[field] = dg.EnvVar.int(variable) if resource.model_fields[field].annotation is int else dg.EnvVar(variable)
    return values


def make_resources(root_uri: str | None = None) -> dict:
    given = {"root_uri": root_uri} if root_uri else {}  # a test's or a script's own root, over the variable
    storage = StorageResource(
        **{
            "root_uri": default_storage_root(),
            **_environment(StorageResource, root_uri="STORAGE_ROOT", s3_endpoint_url="S3_ENDPOINT_URL"),
            **given,
        }
    )
    return {
        "storage": storage,
        "io_manager": JsonIOManager(storage=storage),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "ray_cluster": RayClusterResource(
            **_environment(RayClusterResource, address="RAY_ADDRESS", driver_address="RAY_DRIVER_ADDRESS", python="RAY_PYTHON")
        ),
        "automation": AutomationSettings(
            **_environment(
                AutomationSettings,
                landing_uri="LANDING_URI",
                retrain_min_new_tokens="RETRAIN_MIN_NEW_TOKENS",
                training_run_config="TRAINING_RUN_CONFIG",
                landing_quiet_seconds="LANDING_QUIET_SECONDS",
                retrain_cron="RETRAIN_CRON",
            )
        ),
    }


def schedule_cron(automation: AutomationSettings) -> str:
    """The retraining cron, resolved now: a schedule's cron is part of its definition."""
    cron = automation.retrain_cron
    return cron_string(cron.get_value() or "", cron.env_var_name) if isinstance(cron, dg.EnvVar) else cron


RESOURCES = make_resources()

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[pipeline_job, training_job],
    schedules=[retraining_schedule(schedule_cron(RESOURCES["automation"]))],
    sensors=[new_corpus_sensor, retraining_sensor, data_automation],
    resources=RESOURCES,
    # Every step in the run's own process: a step process of its own would load Dagster and these
    # definitions again (and the evaluation steps torch), for each of a training run's eight steps,
    # while the heavy work has processes of its own already (the trainer's ranks, through Pipes).
    executor=dg.in_process_executor,
)
