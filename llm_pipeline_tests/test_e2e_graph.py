"""The whole graph, for real: two DeepSpeed ranks over gloo, then every contract between stages."""

import hashlib

import dagster as dg
import pytest
import torch

from llm_pipeline.definitions import ASSETS, CHECKS, make_resources
from llm_pipeline.evaluate.local_tasks import CONTINUATION_TASK, PERPLEXITY_TASK
from llm_pipeline.publish.verify import verify
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.weights import load_trained_model
from llm_pipeline_tests.helpers import batch_instance, datasets_cache, load_split_tokens, step_failure

pytestmark = pytest.mark.e2e

SMALL = {
    "raw_corpus": {"max_bytes": 1_500_000},
    "tokenizer": {"vocab_size": 512, "train_bytes": 1_000_000},
    "tokenized_shards": {"val_fraction": 0.1, "tokens_per_shard": 150_000},
    "trained_checkpoint": {
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "ffn_hidden": 128,
        "max_seq_len": 64,
        "seq_len": 64,
        "micro_batch": 8,
        "steps": 20,
        "warmup_steps": 4,
        "checkpoint_every": 10,
        "keep_last": 3,
        "log_every": 5,
        "dtype": "fp32",
        "zero_stage": 2,
        "launcher": "deepspeed",
        "nproc": 2,
    },
    # 20 steps of a tiny model: gate at "better than a uniform guess" (ln 512 = 6.24).
    "eval_metrics": {"max_tokens": 20_000, "max_new_tokens": 8, "max_loss": 6.0},
}


def _run_config(overrides=None, only=None):
    ops = {k: {"config": dict(v)} for k, v in SMALL.items() if only is None or k in only}
    for stage, values in (overrides or {}).items():
        ops.setdefault(stage, {"config": {}})["config"].update(values)
    return {"ops": ops}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e") / "root")
    resources = make_resources(root)
    instance = batch_instance()
    result = dg.materialize(ASSETS + CHECKS, resources=resources, run_config=_run_config(), instance=instance, partition_key="builtin")
    assert result.success
    return root, resources, result, instance


def test_shard_manifest_matches_files(graph):
    _, _, result, _ = graph
    shards = Storage(result.output_for_node("tokenized_shards").uri)
    manifest = shards.read_json("manifest.json")
    assert manifest["tokenizer_sha256"] == result.output_for_node("tokenizer").sha256
    flat = [f[kind] for f in manifest["flat"].values() for kind in ("tokens", "docs")]
    assert sorted(s["name"] for s in manifest["shards"] + flat) == sorted(n for n in shards.listdir() if n != "manifest.json")
    for entry in manifest["shards"] + flat:
        assert hashlib.sha256(shards.read_bytes(entry["name"])).hexdigest() == entry["sha256"]
    for split, entry in manifest["flat"].items():  # the flat split holds the split's tokens
        assert entry["tokens"]["count"] == manifest["splits"][split]["tokens"]
    assert sum(s["tokens"] for s in manifest["shards"] if s["split"] == "train") == manifest["splits"]["train"]["tokens"]


def test_training_learned_and_eval_gate_passed(graph):
    _, _, result, _ = graph
    ckpt, metrics = result.output_for_node("trained_checkpoint"), result.output_for_node("eval_metrics")
    assert ckpt.steps == 20 and ckpt.tokens_seen == 20 * 2 * 8 * 64
    assert metrics.loss < metrics.uniform_loss
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert set(checks) == {
        "eval_loss_within_threshold",
        "eval_perplexity_within_threshold",
        "no_regression_vs_published",
        "harness_scores_meet_minimums",
        "no_eval_contamination",
        "drop_shares_steady",
    }
    assert all(c.passed for c in checks.values())
    assert checks["no_regression_vs_published"].description == "no published model to compare with"
    # The shards left out the training documents that would contaminate the held-out split: 0 by construction.
    assert metrics.contamination.sets["held_out"].contaminated == 0
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    manifest = Storage(result.output_for_node("tokenized_shards").uri).read_json("manifest.json")
    assert (
        mats["tokenized_shards"].materialization.metadata["dropped_as_eval_overlap"].value
        == manifest["decontamination"]["dropped_as_eval_overlap"]["documents"]
    )
    loss_curve = mats["trained_checkpoint"].materialization.metadata["loss_curve"]
    assert "data:image/png;base64," in loss_curve.value
    # Numbers to meaningful digits; the published files as a table.
    shown = mats["eval_metrics"].materialization.metadata["loss"].value
    assert shown == float(f"{metrics.loss:.5g}") and len(repr(shown)) <= 8
    files = mats["published_model"].materialization.metadata["files"].value
    assert {r.data["file"] for r in files.records} >= {"model.safetensors", "config.json", "tokenizer.json"}


def test_rank0_streams_progress_through_pipes(graph):
    _, _, result, instance = graph
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    progress = [m for m in messages if m.startswith("step ") and " loss " in m and "tok/s" in m]
    # log_every=5 over 20 steps: four live progress lines from rank 0 only, in order.
    assert [m.split()[1] for m in progress] == ["5/20", "10/20", "15/20", "20/20"]
    assert all(" lr " in m and " elapsed " in m and " eta " in m for m in progress)
    assert any(m.startswith("training ") and "ZeRO-2" in m and "world size 2" in m for m in messages)


def test_published_model_loads_offline_and_matches_trained_logits(graph):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, result, _ = graph
    published = result.output_for_node("published_model")
    folder = Storage(published.uri)
    assert verify(folder) == []
    hf = AutoModelForCausalLM.from_pretrained(folder.path, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder.path, local_files_only=True)
    ours = load_trained_model(Storage(result.output_for_node("trained_checkpoint").final_uri))
    val, _ = load_split_tokens(Storage(result.output_for_node("tokenized_shards").uri), "val")
    x = torch.from_numpy(val[:64].astype("int64"))[None]
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() < 1e-4
    assert tok("def f():").input_ids  # the tokenizer files load too
    card = folder.read_bytes("README.md").decode()
    corpus_manifest = result.output_for_node("raw_corpus").manifest_sha256
    assert corpus_manifest in card and result.output_for_node("tokenized_shards").manifest_sha256 in card


def test_crashed_run_resumes_from_newest_complete_checkpoint(graph):
    root, resources, result, instance = graph
    ckpt = result.output_for_node("trained_checkpoint")
    run = Storage(ckpt.run_uri)
    original = run.child("final").read_json("summary.json")["losses"]
    # Simulate a crash after step 10: the step-20 checkpoint and the final outputs never happened.
    run.child("checkpoints").remove("step_00000020")
    run.child("final").remove()
    again = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint"],
        resources=resources,
        instance=instance,
        run_config=_run_config(only=["trained_checkpoint"]),
    )
    assert again.success
    summary = run.child("final").read_json("summary.json")
    assert summary["resumed_from"] == "step_00000010" and summary["steps"] == 20
    assert len(summary["peak_rss_bytes_per_rank"]) == 2 and min(summary["peak_rss_bytes_per_rank"]) > 0
    # fp32 on CPU: the resumed steps reproduce the uninterrupted run's losses.
    assert [s for s, _ in summary["losses"]] == list(range(1, 21))
    assert [loss for _, loss in summary["losses"][10:]] == pytest.approx([loss for _, loss in original[10:]], rel=1e-6)


def test_the_harness_results_and_the_contamination_report_reach_the_ui_and_the_model_card(graph):
    root, _, result, _ = graph
    metrics = result.output_for_node("eval_metrics")
    harness = metrics.harness.results
    assert harness[PERPLEXITY_TASK]["bits_per_byte"].value == pytest.approx(metrics.bits_per_byte, abs=1e-3)
    assert 0 < harness[CONTINUATION_TASK]["acc"].stderr < 1
    mats = {m.asset_key.to_user_string(): m for m in result.get_asset_materialization_events()}
    shown = mats["eval_metrics"].materialization.metadata
    assert isinstance(shown[f"{CONTINUATION_TASK}/acc"].value, float)  # numbers: plotted across runs
    assert isinstance(shown[f"{CONTINUATION_TASK}/acc_stderr"].value, float)
    assert isinstance(shown["contamination"].value, float) and isinstance(shown["contamination/held_out"].value, float)
    # The task files the run wrote stay with it; the card shows both tables.
    tasks = Storage(shown["harness_tasks_uri"].value)
    assert {f"{t}.{ext}" for t in (PERPLEXITY_TASK, CONTINUATION_TASK) for ext in ("yaml", "jsonl")} <= set(tasks.listdir())
    assert tasks.full(f"{CONTINUATION_TASK}.jsonl") in tasks.read_bytes(f"{CONTINUATION_TASK}.yaml").decode()
    card = Storage(result.output_for_node("published_model").uri).read_bytes("README.md").decode()
    assert "## lm-evaluation-harness 0.4." in card and f"| {CONTINUATION_TASK} | acc |" in card
    assert "## Contamination (13-grams" in card and "| held_out |" in card


def test_a_harness_task_that_cannot_load_offline_fails_before_training(graph, tmp_path, monkeypatch):
    root, resources, _, instance = graph
    datasets_cache(monkeypatch, tmp_path / "empty-cache")
    runs_before = set(Storage(root).child("trained_checkpoint").listdir())
    result = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint", "eval_metrics"],
        resources=resources,
        instance=instance,
        run_config=_run_config(
            {"trained_checkpoint": {"seed": 11}, "eval_metrics": {"harness_tasks": [PERPLEXITY_TASK, "arc_easy"]}},
            only=["trained_checkpoint", "eval_metrics"],
        ),
        raise_on_error=False,
    )
    assert not result.success
    step, message = step_failure(result)
    assert step == "trained_checkpoint"
    assert "harness task 'arc_easy' cannot be loaded offline" in message and "Nothing was trained" in message
    assert set(Storage(root).child("trained_checkpoint").listdir()) == runs_before


def test_failing_gate_blocks_publishing(graph):
    root, resources, result, instance = graph
    registry = Storage(root).child("registry", "llm-pipeline-demo")
    latest_before = registry.read_bytes("latest")
    blocked = dg.materialize(
        ASSETS + CHECKS,
        selection=["eval_metrics", "published_model"],
        resources=resources,
        instance=instance,
        run_config=_run_config(
            {"eval_metrics": {"max_loss": 0.5, "max_perplexity": 1.5, "min_scores": {f"{CONTINUATION_TASK}/acc": 1.01}}},
            only=["eval_metrics"],
        ),
        raise_on_error=False,
    )
    assert not blocked.success
    checks = {c.check_name: c for c in blocked.get_asset_check_evaluations()}
    assert not checks["harness_scores_meet_minimums"].passed
    assert f"{CONTINUATION_TASK}/acc " in checks["harness_scores_meet_minimums"].description
    assert "< 1.0100" in checks["harness_scores_meet_minimums"].description
    assert not checks["eval_loss_within_threshold"].passed
    assert "> max_loss 0.5000" in checks["eval_loss_within_threshold"].description
    assert not checks["eval_perplexity_within_threshold"].passed
    assert "> max_perplexity 1.50" in checks["eval_perplexity_within_threshold"].description
    assert checks["no_regression_vs_published"].passed  # the same model as the published one
    materialized = {m.asset_key.to_user_string() for m in blocked.get_asset_materialization_events()}
    assert materialized == {"eval_metrics"}
    assert registry.read_bytes("latest") == latest_before


def test_second_publish_compares_with_the_first_and_moves_latest(graph):
    root, resources, result, instance = graph
    registry = Storage(root).child("registry", "llm-pipeline-demo")
    first = result.output_for_node("published_model").version
    again = dg.materialize(
        ASSETS + CHECKS,
        selection=["eval_metrics", "published_model"],
        resources=resources,
        instance=instance,
        run_config=_run_config(only=["eval_metrics"]),
    )
    metrics = again.output_for_node("eval_metrics")
    assert metrics.baseline.version == first and metrics.baseline.same_tokenizer
    # the same checkpoint against itself: no regression, identical numbers
    assert metrics.bits_per_byte == pytest.approx(metrics.baseline.bits_per_byte, rel=1e-9)
    mats = {m.asset_key.to_user_string(): m for m in again.get_asset_materialization_events()}
    assert mats["eval_metrics"].materialization.metadata["bits_per_byte_delta"].value == pytest.approx(0, abs=1e-9)
    second = again.output_for_node("published_model").version
    assert second != first and registry.read_bytes("latest").decode().strip() == second
    assert registry.child(first).exists("manifest.json")  # older versions are kept


def test_regression_against_the_published_model_blocks_publishing(graph):
    root, resources, _, instance = graph
    registry = Storage(root).child("registry", "llm-pipeline-demo")
    latest_before = registry.read_bytes("latest")
    # A barely trained model (2 steps), with the loss gate opened so only the regression gate can stop it.
    worse = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint", "eval_metrics", "published_model"],
        resources=resources,
        instance=instance,
        run_config=_run_config(
            {"trained_checkpoint": {"steps": 2, "warmup_steps": 1}, "eval_metrics": {"max_loss": 100.0}},
            only=["trained_checkpoint", "eval_metrics"],
        ),
        raise_on_error=False,
    )
    checks = {c.check_name: c for c in worse.get_asset_check_evaluations()}
    assert checks["eval_loss_within_threshold"].passed
    assert not checks["no_regression_vs_published"].passed
    assert "published v" in checks["no_regression_vs_published"].description
    assert "published_model" not in {m.asset_key.to_user_string() for m in worse.get_asset_materialization_events()}
    assert registry.read_bytes("latest") == latest_before


def _kill_rank_after(run_root: Storage, existing: set[str], rank: str, marker: str, killed: list) -> None:
    """Wait for a new run's checkpoint marker, then SIGKILL one trainer rank (as a crash would)."""
    import os
    import signal
    import time

    import psutil

    deadline = time.time() + 240
    while time.time() < deadline and not killed:
        for key in set(run_root.listdir()) - existing:
            if run_root.child(key, "checkpoints").exists(marker):
                for proc in psutil.Process().children(recursive=True):
                    try:
                        if "llm_pipeline.train.trainer" in " ".join(proc.cmdline()) and proc.environ().get("RANK") == rank:
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(key)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
        time.sleep(0.05)


def test_a_rank_dying_after_the_completion_marker_does_not_fail_the_run(graph, tmp_path, monkeypatch):
    from llm_pipeline.faults import CRASH_ENV

    root, resources, _, instance = graph
    monkeypatch.setenv(CRASH_ENV, f"after_summary:0:0:{tmp_path / 'fired'}")  # rank 0 SIGKILLed once it wrote summary.json
    result = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint"],
        resources=resources,
        instance=instance,
        run_config=_run_config({"trained_checkpoint": {"seed": 11}}, only=["trained_checkpoint"]),
    )
    assert (tmp_path / "fired").exists() and result.success
    events = {e.event_type_value for e in result.all_events}
    assert "STEP_UP_FOR_RETRY" not in events  # the marker, not the launcher's exit code, said it finished
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("trainer exited with an error after writing its completion marker") for m in messages)


def test_a_checkpoint_that_was_not_evaluated_is_not_published(graph):
    """published_model takes the checkpoint and its evaluation as two inputs: it publishes only when the
    evaluation is of that checkpoint (a newer, unevaluated checkpoint is refused by name)."""
    root, resources, _, instance = graph
    trained = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint"],
        resources=resources,
        instance=instance,
        run_config=_run_config({"trained_checkpoint": {"seed": 13}}, only=["trained_checkpoint"]),
    )
    assert trained.success
    registry = Storage(root).child("registry", "llm-pipeline-demo")
    versions = registry.listdir()
    refused = dg.materialize(
        ASSETS + CHECKS,
        selection=["published_model"],
        resources=resources,
        instance=instance,
        run_config=_run_config(only=["published_model"]),
        raise_on_error=False,
    )
    assert not refused.success
    assert f"not the latest trained_checkpoint {trained.output_for_node('trained_checkpoint').final_uri}" in step_failure(refused)[1]
    assert registry.listdir() == versions  # nothing published


def test_killed_rank_is_retried_and_resumes_step_for_step(graph, tmp_path):
    import os
    import subprocess
    import threading

    from llm_pipeline.train.config import LaunchConfig
    from llm_pipeline.train.launch import launch_command, launch_env

    root, resources, _, instance = graph
    run_root = Storage(root).child("trained_checkpoint")
    overrides = {"trained_checkpoint": {"seed": 7, "steps": 60}}
    killed: list = []
    killer = threading.Thread(target=_kill_rank_after, args=(run_root, set(run_root.listdir()), "1", "step_00000010/complete.json", killed))
    killer.start()
    crashed = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint"],
        resources=resources,
        instance=instance,
        run_config=_run_config(overrides, only=["trained_checkpoint"]),
    )
    killer.join()
    assert killed, "the trainer finished before a rank could be killed"
    assert crashed.success  # the RetryPolicy re-launched the trainer
    assert "STEP_UP_FOR_RETRY" in {e.event_type_value for e in crashed.all_events}
    run = run_root.child(killed[0])
    summary = run.child("final").read_json("summary.json")
    assert summary["resumed_from"] is not None and summary["resumed_from"] < "step_00000060"

    # The same config, uninterrupted, in another folder: fp32 on CPU gives the same loss at every step.
    config = run.read_json("train_config.json")
    config["run_uri"] = str(tmp_path / "uninterrupted")
    (tmp_path / "train.json").write_text(__import__("json").dumps(config))
    launch = LaunchConfig(nproc=2)
    subprocess.run(
        launch_command(launch, str(tmp_path / "train.json")),
        env={**os.environ, **launch_env(launch)},
        check=True,
        capture_output=True,
        timeout=300,
    )
    reference = Storage(config["run_uri"]).child("final").read_json("summary.json")
    assert [s for s, _ in summary["losses"]] == list(range(1, 61))
    assert [loss for _, loss in summary["losses"]] == pytest.approx([loss for _, loss in reference["losses"]], rel=1e-6)


def test_a_tampered_published_baseline_is_refused_before_it_is_loaded(graph):
    root, resources, _, instance = graph
    model = Storage(root).child("registry", "llm-pipeline-demo")
    version = model.read_bytes("latest").decode().strip()
    weights = model.child(version).full("model.safetensors")
    with open(weights, "rb") as f:
        original = f.read()
    try:
        with open(weights, "ab") as f:
            f.write(b"\x00")
        result = dg.materialize(
            ASSETS + CHECKS,
            selection=["eval_metrics"],
            resources=resources,
            instance=instance,
            run_config=_run_config(only=["eval_metrics"]),
            raise_on_error=False,
        )
        assert not result.success
        _, message = step_failure(result)
        assert f"the published baseline {model.child(version).uri} fails verification" in message
        assert "tampered: model.safetensors" in message
    finally:
        with open(weights, "wb") as f:
            f.write(original)
