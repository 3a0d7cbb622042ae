import datetime as dt
import os
import subprocess
import sys

import dagster as dg
import pytest

from llm_pipeline.assets.configs import validate_run_config
from llm_pipeline.automation import new_corpus_sensor
from llm_pipeline.corpus.batches import read_batch
from llm_pipeline.definitions import ASSETS, CHECKS, defs, make_resources
from llm_pipeline.resources import AutomationSettings
from llm_pipeline_tests.helpers import batch_instance, step_failure


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"raw_corpus", "tokenizer", "tokenized_shards", "trained_checkpoint", "eval_metrics", "published_model"}
    assert defs.resolve_job_def("llm_pipeline_job") is not None


def test_loading_the_definitions_imports_no_torch():
    """Every Dagster process loads them (the webserver's and daemon's code servers, each run): torch
    (1.7 s on two cores) loads in the runs that train or evaluate, and only there. A fresh
    interpreter: this one has torch already."""
    code = "import sys, llm_pipeline.definitions; print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


def test_the_retraining_cron_comes_from_the_automation_resource_and_is_checked_by_name():
    code = "from llm_pipeline.definitions import defs; print(defs.get_schedule_def('retraining_schedule').cron_schedule)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")}
    hourly = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "LLM_PIPELINE_RETRAIN_CRON": "0 * * * *"}
    )
    assert hourly.stdout.strip() == "0 * * * *", hourly.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, "LLM_PIPELINE_RETRAIN_CRON": "weekly"})
    assert (
        bad.returncode != 0
        and "LLM_PIPELINE_RETRAIN_CRON must be a cron string (minute hour day month weekday), got 'weekly'" in bad.stderr
    )
    with pytest.raises(ValueError, match="retrain_cron must be a cron string"):
        AutomationSettings(retrain_cron="every sunday")


def test_every_setting_from_the_environment_loads_and_is_checked_when_resolved(tmp_path, monkeypatch):
    """The LLM_PIPELINE_* variables reach the resources as dg.EnvVar: the definitions load whatever they
    hold (the S3 daemon test sets all four), and a value is checked once Dagster resolves it."""
    from llm_pipeline.automation import retraining_sensor

    monkeypatch.setenv("LLM_PIPELINE_STORAGE_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("LLM_PIPELINE_LANDING_URI", str(tmp_path / "landing"))
    monkeypatch.setenv("LLM_PIPELINE_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LLM_PIPELINE_RETRAIN_MIN_NEW_TOKENS", "1000")
    resources = make_resources()
    dg.Definitions.validate_loadable(dg.Definitions(assets=ASSETS, asset_checks=CHECKS, resources=resources))
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources={k: resources[k] for k in ("storage", "automation")})
        assert "no new complete files under " + str(tmp_path / "landing") in new_corpus_sensor(ctx).skip_reason.skip_message
        monkeypatch.setenv("LLM_PIPELINE_RETRAIN_MIN_NEW_TOKENS", "0")
        with pytest.raises(dg.DagsterResourceFunctionError) as err:
            retraining_sensor(dg.build_sensor_context(instance=instance, resources={"automation": resources["automation"]}))
        assert "retrain_min_new_tokens must be >= 1, got 0" in str(err.value.__cause__)


def test_retraining_schedule_requests_a_training_run_and_starts_stopped(tmp_path):
    retraining_schedule = defs.get_schedule_def("retraining_schedule")
    assert retraining_schedule.cron_schedule == AutomationSettings().retrain_cron == "0 3 * * 0"  # no variable set: weekly

    def tick(settings):
        context = dg.build_schedule_context(
            scheduled_execution_time=dt.datetime(2026, 11, 29, 3, 0, tzinfo=dt.UTC), resources={"automation": settings}
        )
        return retraining_schedule.evaluate_tick(context)

    result = tick(AutomationSettings())
    assert len(result.run_requests) == 1 and result.run_requests[0].run_config == {}
    # A run config file of the user's: the retraining runs start with it.
    (tmp_path / "training.yaml").write_text("ops:\n  trained_checkpoint:\n    config:\n      preset: tiny\n")
    [request] = tick(AutomationSettings(training_run_config=str(tmp_path / "training.yaml"))).run_requests
    assert request.run_config == {"ops": {"trained_checkpoint": {"config": {"preset": "tiny"}}}}
    (tmp_path / "bad.yaml").write_text("- not a mapping\n")
    with pytest.raises(dg.DagsterUserCodeExecutionError) as err:
        tick(AutomationSettings(training_run_config=str(tmp_path / "bad.yaml")))
    assert "bad.yaml' must hold a mapping (ops: ...), got list" in str(err.value.__cause__)
    assert retraining_schedule.job_name == "training_job"
    assert retraining_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    # What runs by default: new files become batches, batches are processed, new tokens retrain.
    assert {s.name: s.default_status for s in defs.sensors} == {
        "new_corpus_sensor": dg.DefaultSensorStatus.RUNNING,
        "retraining_sensor": dg.DefaultSensorStatus.RUNNING,
        "data_automation": dg.DefaultSensorStatus.RUNNING,
    }


def test_sensor_on_the_default_landing_folder_takes_each_complete_file_once(tmp_path, monkeypatch):
    """No LLM_PIPELINE_* variable: the landing folder is <root>/landing, and the root is a hidden `.storage`."""
    for key in [k for k in os.environ if k.startswith("LLM_PIPELINE_")]:
        monkeypatch.delenv(key)
    resources = make_resources(str(tmp_path / ".storage"))
    landing = tmp_path / ".storage" / "landing"
    cursor = [None]

    def tick() -> tuple[dg.SensorResult, dict]:
        """The tick's result, and the batch it made (relative path -> identity), if any."""
        ctx = dg.build_sensor_context(cursor=cursor[0], resources={k: resources[k] for k in ("storage", "automation")})
        result = new_corpus_sensor.evaluate_tick(ctx)
        cursor[0] = result.cursor
        requests = result.dynamic_partitions_requests or []
        assert not result.run_requests  # runs come from the automation, per batch
        if not requests:
            return result, {}
        (key,) = requests[0].partition_keys
        record = read_batch(resources["storage"].root(), key)
        assert record["source_uri"] == str(landing)
        return result, record["files"]

    assert tick()[0].skip_message.startswith("no new complete files")  # no landing folder yet
    landing.mkdir(parents=True)
    (landing / "a.txt").write_text("first document " * 20)
    (landing / "upload.txt.part").write_text("still arriving " * 20)  # an in-flight name: never taken
    assert "1 still arriving" in tick()[0].skip_message  # seen once: it may still be growing
    _, first = tick()
    assert list(first) == ["a.txt"]
    assert tick()[1] == {}  # the same file does not make a batch again

    # A late file copied with an old mtime (cp -p), and a file that is still growing.
    old = landing / "b.txt"
    old.write_text("second document " * 20)
    os.utime(old, (os.path.getmtime(landing / "a.txt") - 86400,) * 2)
    growing = landing / "c.txt"
    growing.write_text("third " * 10)
    tick()
    with open(growing, "a") as f:
        f.write("more " * 10)
    assert list(tick()[1]) == ["b.txt"]  # b is stable; c changed between the ticks
    assert list(tick()[1]) == ["c.txt"]  # c, once it stopped growing
    # Changed content is new again.
    (landing / "a.txt").write_text("first document, revised " * 20)
    tick()
    revised = tick()[1]
    assert list(revised) == ["a.txt"] and revised["a.txt"] != first["a.txt"]


@pytest.mark.parametrize(
    "stage, values, message",
    [
        ("trained_checkpoint", {"zero_stage": 4}, "zero_stage must be one of 0, 1, 2, 3, got 4"),
        ("trained_checkpoint", {"steps": 0}, "steps must be > 0"),
        ("trained_checkpoint", {"seq_len": 512}, r"seq_len \(512\) exceeds the model's max_seq_len \(256\)"),
        ("tokenizer", {"vocab_size": 200}, "vocab_size=200 is too small"),
        ("raw_corpus", {"max_bytes": 0}, "max_bytes must be > 0"),
        ("published_model", {"model_name": "a/b"}, "model_name must be a plain folder name"),
    ],
)
def test_run_config_is_validated_naming_stage_and_field(stage, values, message):
    with pytest.raises(dg.Failure, match=message) as err:
        validate_run_config({"ops": {stage: {"config": values}}})
    assert stage in err.value.description


def test_bad_late_stage_config_fails_before_any_work(tmp_path):
    root = tmp_path / "root"
    result = dg.materialize(
        ASSETS + CHECKS,
        resources=make_resources(str(root)),
        run_config={"ops": {"trained_checkpoint": {"config": {"zero_stage": 4}}}},
        raise_on_error=False,
        instance=batch_instance(),
        partition_key="builtin",
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["raw_corpus"]
    assert "zero_stage must be one of 0, 1, 2, 3" in failures[0].event_specific_data.error.message
    assert not (root / "raw_corpus").exists()  # nothing was read or written


def test_missing_corpus_source_is_a_clear_failure(tmp_path):
    result = dg.materialize(
        ASSETS[:1],
        resources=make_resources(str(tmp_path / "root")),
        run_config={"ops": {"raw_corpus": {"config": {"source_uri": str(tmp_path / "missing")}}}},
        raise_on_error=False,
        instance=batch_instance(),
        partition_key="builtin",
    )
    assert "does not exist" in step_failure(result)[1]


def test_a_given_tokenizer_json_is_used_as_is(tmp_path, small_tokenizer, sample_texts):
    from llm_pipeline.tokenize.bpe import tokenizer_hash

    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(sample_texts):
        (src / f"{i}.py").write_text(text)
    given = tmp_path / "tokenizer.json"
    given.write_text(small_tokenizer.to_str())
    instance = batch_instance()
    result = dg.materialize(
        ASSETS[:2],
        resources=make_resources(str(tmp_path / "root")),
        instance=instance,
        partition_key="builtin",
        run_config={
            "ops": {"raw_corpus": {"config": {"source_uri": str(src)}}, "tokenizer": {"config": {"tokenizer_json_uri": str(given)}}}
        },
    )
    out = result.output_for_node("tokenizer")
    assert out.sha256 == tokenizer_hash(small_tokenizer.to_str()) and out.vocab_size == 512
    bad = dg.materialize(
        ASSETS[:2],
        resources=make_resources(str(tmp_path / "root")),
        raise_on_error=False,
        instance=instance,
        partition_key="builtin",
        run_config={
            "ops": {
                "raw_corpus": {"config": {"source_uri": str(src)}},
                "tokenizer": {"config": {"tokenizer_json_uri": str(tmp_path / "missing.json")}},
            }
        },
    )
    # Refused with the other settings, before any step runs (raw_corpus included).
    assert f"nothing was run. tokenizer_json_uri '{tmp_path / 'missing.json'}': no such file" in step_failure(bad)[1]
