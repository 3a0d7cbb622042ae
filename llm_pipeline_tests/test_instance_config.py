"""The instances the repo ships (dagster.yaml for `dagster dev`, deploy/postgres/dagster.yaml for
production): a run the daemon was launching when it died is failed by the daemon's run monitor, not
left STARTING for ever, and on the production instance it is then retried.

The load test (test_load_postgres.py) met this: the daemon SIGKILLed between marking a backfill's
run STARTING and starting its process left that batch untokenized and the backfill waiting."""

import logging
import os
import time

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry
from dagster._daemon.monitoring.run_monitoring import monitor_starting_run

from llm_pipeline_tests.services import REPO


def _instance(tmp_path, config_file: str) -> dg.DagsterInstance:
    """The instance that file configures, its storage on SQLite in `tmp_path` (the same monitor and retries)."""
    config = yaml.safe_load(open(os.path.join(REPO, config_file)))
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dg.DagsterInstance.from_config(str(tmp_path))


def _left_starting(instance: dg.DagsterInstance, seconds_ago: float) -> str:
    """A run marked STARTING `seconds_ago`, whose process never came: what a daemon killed mid-launch leaves."""
    run = instance.add_run(
        dg.DagsterRun(job_name="__ASSET_JOB", run_id=f"starting-{seconds_ago:.0f}", status=dg.DagsterRunStatus.NOT_STARTED)
    )
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level=logging.DEBUG,
            user_message="",
            run_id=run.run_id,
            timestamp=time.time() - seconds_ago,
            dagster_event=DagsterEvent(event_type_value=DagsterEventType.RUN_STARTING.value, job_name=run.job_name),
        )
    )
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTING
    return run.run_id


@pytest.mark.parametrize("config_file, retried", [("dagster.yaml", False), ("deploy/postgres/dagster.yaml", True)])
def test_a_run_left_starting_is_failed_by_the_run_monitor(tmp_path, config_file, retried):
    with _instance(tmp_path, config_file) as instance:
        assert instance.run_monitoring_enabled
        slow, stuck = _left_starting(instance, seconds_ago=60), _left_starting(instance, seconds_ago=300)
        for run_id in (slow, stuck):
            monitor_starting_run(instance, instance.get_run_record_by_id(run_id), logging.getLogger("test"))
        # A start slower than a minute is left alone; one of five minutes has no process coming.
        assert instance.get_run_by_id(slow).status == dg.DagsterRunStatus.STARTING
        failed = instance.get_run_by_id(stuck)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        assert failed.tags.get("dagster/failure_reason") == "START_TIMEOUT"
        assert should_retry(failed, instance) is retried
