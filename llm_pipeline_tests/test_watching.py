"""Training you can watch and steer: the trainer program with an experiment tracker (the curves read
back with the tracker's own reader), validation while it trains, keep_best, and divergence (an
injected loss spike stopping the run, or rolled back from, exactly and again on resume)."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from llm_pipeline.faults import CRASH_ENV, SPIKE_ENV
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.checkpoints import consolidated_fp32_state_dict
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import free_port, launch_command, launch_env
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.summary import TrainSummary
from llm_pipeline.train.tracking import TrackerError, check_reachable, reopen
from llm_pipeline_tests.helpers import make_shards

pytestmark = pytest.mark.e2e
MODEL = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)
# Sample 21 is drawn in step 6 (4 samples a step): the spike lands after the checkpoint of step 4.
SPIKE = {SPIKE_ENV: "21:1000"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_tokenizer, sample_texts):
    tmp = tmp_path_factory.mktemp("watching")
    root = Storage(str(tmp / "root"))
    _, shards, _ = make_shards(tmp, root, small_tokenizer, sample_texts)
    root.child("tokenizer").write_bytes("tokenizer.json", small_tokenizer.to_str().encode())
    return tmp, shards, root.child("tokenizer")


def _run(shards, name: str, env: dict | None = None, nproc: int = 1, **extra) -> tuple[Storage, subprocess.CompletedProcess]:
    tmp, folder, tokenizer = shards
    run = Storage(str(tmp / name))
    options = dict(
        seq_len=32, micro_batch=4, steps=12, warmup_steps=2, dtype="fp32", checkpoint_every=4, log_every=2, eval_every=4, eval_tokens=2000
    )
    cfg = TrainConfig(shards_uris=(folder.uri,), run_uri=run.uri, model=MODEL, tokenizer_uri=tokenizer.uri, **{**options, **extra})
    run.write_bytes("train_config.json", cfg.to_json().encode())
    launch = LaunchConfig(launcher="deepspeed" if nproc > 1 else "none", nproc=nproc)
    proc = subprocess.run(
        launch_command(launch, run.full("train_config.json")),
        env={**os.environ, **launch_env(launch), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run, proc


def _summary(run: Storage, proc: subprocess.CompletedProcess) -> TrainSummary:
    assert proc.returncode == 0 and TrainSummary.exists(run.child("final")), (proc.stdout + proc.stderr)[-6000:]
    return TrainSummary.read(run.child("final"))


def test_tensorboard_holds_the_summary_s_curves_and_validation_is_the_same_at_any_world_size(shards):
    """The default tracker: event files in the run folder, read back with TensorBoard's own reader.
    One optimizer step of 8 samples as 2 micro-steps on one rank or 1 on each of two: the same run,
    and the same validation figures, the slice split over the ranks."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    one, proc = _run(shards, "world-1", micro_batch=4, global_batch_tokens=256)
    summary = _summary(one, proc)
    events = EventAccumulator(one.child("tensorboard").path)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, pytest.approx(v, rel=1e-6)) for s, v in summary.losses[1::2]]
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(s, pytest.approx(v, rel=1e-6)) for s, v, _ in summary.validations]
    assert [s for s, _, _ in summary.validations] == [4, 8, 12] and all(b is not None and b > 0 for _, _, b in summary.validations)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s", "memory/host_peak_rss_mb", "step_host_ms/validation"} <= set(
        events.Tags()["scalars"]
    )
    assert summary.tracker.kind == "tensorboard" and summary.tracker.link == f"tensorboard --logdir {one.child('tensorboard').uri}"
    assert "validation at step 4: loss" in proc.stdout and f"curves: {summary.tracker.link}" in proc.stdout

    two, proc = _run(shards, "world-2", nproc=2, micro_batch=4, global_batch_tokens=256, tracker="none")
    other = _summary(two, proc)
    assert [(s, pytest.approx(v, rel=1e-5), pytest.approx(b, rel=1e-5)) for s, v, b in other.validations] == list(summary.validations)
    assert other.tracker.kind == "none" and not two.exists("tensorboard")


def test_a_loss_spike_stops_the_run_naming_the_step_and_the_loss(shards):
    run, proc = _run(shards, "spike-stop", env=SPIKE)
    assert proc.returncode != 0 and not TrainSummary.exists(run.child("final"))
    assert "training diverged at step 6: loss" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert "times the mean of the 5 steps before it, over spike_factor 4); stopped: on_divergence is stop" in proc.stdout + proc.stderr


def test_rollback_skips_the_spike_s_samples_exactly_and_again_on_resume(shards, tmp_path):
    """on_divergence rollback: back to step 4's checkpoint, samples 16-24 (steps 5 and 6) skipped. A run
    killed after step 8's checkpoint and launched again resumes past the skip; one killed before it
    (at step 4's) meets the spike again and rolls back the same way. All three end the same."""
    uninterrupted = _summary(*_run(shards, "rollback", env=SPIKE, on_divergence="rollback"))
    [rollback] = uninterrupted.rollbacks
    assert (rollback.step, rollback.resumed_from, rollback.skipped_samples) == (6, "step_00000004", (16, 24))
    assert rollback.loss > 100 and uninterrupted.steps == 12 and uninterrupted.samples_seen == 12 * 4 + 8
    for crash_step in (8, 4):
        flag = tmp_path / f"crashed-{crash_step}"
        crash = {**SPIKE, CRASH_ENV: f"after_checkpoint:0:{crash_step}:{flag}"}
        run, proc = _run(shards, f"rollback-crash-{crash_step}", env=crash, on_divergence="rollback")
        assert proc.returncode != 0 and flag.exists()
        run, proc = _run(shards, f"rollback-crash-{crash_step}", env=crash, on_divergence="rollback")
        resumed = _summary(run, proc)
        assert resumed.resumed_from == f"step_0000000{crash_step}"
        assert resumed.rollbacks == uninterrupted.rollbacks
        assert resumed.losses == uninterrupted.losses and resumed.validations == uninterrupted.validations


def test_keep_best_exports_the_checkpoint_with_the_best_validation_loss(shards):
    # The loss of step 8 times -10^6, unclipped and not checked for spikes: Adam's moments carry that
    # gradient ascent on for several steps, and the validation loss rises after step 8.
    uphill = {SPIKE_ENV: "29:-1000000"}
    run, proc = _run(shards, "keep-best", env=uphill, keep_best=True, keep_last=1, spike_factor=0.0, grad_clip=0.0, eval_every=2)
    summary = _summary(run, proc)
    best_step, best_loss, _ = min(summary.validations, key=lambda v: v[1])
    assert summary.best_validation_loss == best_loss and summary.exported_checkpoint == f"step_{best_step:08d}"
    assert best_step != 12, "the run did not get worse: nothing here tells best from last"
    kept = sorted(n for n in run.child("checkpoints").listdir() if n.startswith("step_"))
    assert kept == sorted({summary.exported_checkpoint, "step_00000012"})  # keep_last 1, and the best
    final = load_file(run.child("final").full("model.safetensors"))
    best = consolidated_fp32_state_dict(run.child("checkpoints").path, summary.exported_checkpoint, 2)
    assert all((final[name] == tensor).all() for name, tensor in best.items())


def test_an_unreachable_tracker_fails_the_run_by_name_before_training(shards):
    uri = f"http://127.0.0.1:{free_port()}"
    run, proc = _run(shards, "no-tracker", tracker="mlflow", tracker_uri=uri)
    assert proc.returncode != 0 and f"the MLflow tracking server {uri} cannot be reached" in proc.stdout + proc.stderr
    assert not run.exists("checkpoints")
    with pytest.raises(TrackerError, match="tracker mlflow needs tracker_uri"):
        check_reachable("mlflow", "")


def test_the_mlflow_leg_against_a_real_server(shards, mlflow_server):
    """Params, the curves by step (MLflow's own history), the Dagster tags; eval figures logged into
    the same run afterwards; a model version registered from a local folder."""
    from mlflow.tracking import MlflowClient

    tags = {"dagster/run_id": "run-123", "dagster/asset": "trained_checkpoint"}
    run, proc = _run(shards, "mlflow", tracker="mlflow", tracker_uri=mlflow_server.uri, experiment="watching", tracker_tags=tags)
    summary = _summary(run, proc)
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    found = client.get_run(summary.tracker.run_id)
    assert (
        {k: found.data.tags[k] for k in tags} == tags and found.data.params["lr"] == "0.003" and found.data.params["model.d_model"] == "32"
    )
    history = {m.step: m.value for m in client.get_metric_history(summary.tracker.run_id, "train/loss")}
    assert history == {s: pytest.approx(v, rel=1e-6) for s, v in summary.losses[1::2]}
    validation = {m.step: m.value for m in client.get_metric_history(summary.tracker.run_id, "val/loss")}
    assert validation == {s: pytest.approx(v, rel=1e-6) for s, v, _ in summary.validations}
    assert summary.tracker.link == f"{mlflow_server.uri}/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"

    later = reopen("mlflow", mlflow_server.uri, "watching", run)  # as eval_metrics and published_model do
    assert later.run.run_id == summary.tracker.run_id
    later.log_metrics({"eval/loss": 4.5}, summary.steps)
    assert [m.value for m in client.get_metric_history(summary.tracker.run_id, "eval/loss")] == [4.5]
    assert later.register_model("watching-model", run.child("final")) == "1"
    [version] = client.search_model_versions("name='watching-model'")
    assert version.run_id == summary.tracker.run_id and version.source.startswith(f"runs:/{summary.tracker.run_id}/")


def test_a_tracker_that_goes_away_mid_run_costs_a_warning_not_the_run(shards, mlflow_server):
    tmp, folder, tokenizer = shards
    run = Storage(str(tmp / "mlflow-gone"))
    cfg = TrainConfig(
        shards_uris=(folder.uri,), run_uri=run.uri, model=MODEL, seq_len=32, micro_batch=4, steps=40, warmup_steps=2, dtype="fp32",
        checkpoint_every=20, log_every=2, eval_every=10, eval_tokens=2000, tracker="mlflow", tracker_uri=mlflow_server.uri,
    )  # fmt: skip
    run.write_bytes("train_config.json", cfg.to_json().encode())
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_pipeline.train.trainer", "--config", run.full("train_config.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 2/"):
            mlflow_server.stop()  # the tracker's server is gone from step 2 on
    assert proc.wait(timeout=300) == 0, "".join(lines)[-5000:]
    output = "".join(lines)
    assert "tracker mlflow failed to log metrics" in output and "training goes on without it" in output
    assert output.count("tracker mlflow failed") == 1  # one warning, then the tracker is left alone
    assert TrainSummary.read(run.child("final")).steps == 40


def test_weights_and_biases_writes_an_offline_run_without_a_key(shards, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run, proc = _run(shards, "wandb", tracker="wandb", experiment="watching", env={"WANDB_SILENT": "true"})
    summary = _summary(run, proc)
    assert summary.tracker.kind == "wandb" and summary.tracker.link.startswith("wandb sync ")
    folder = summary.tracker.link.removeprefix("wandb sync ")
    assert folder.startswith(run.child("wandb").path)
    [records] = glob.glob(os.path.join(folder, "run-*.wandb"))
    history = _wandb_history(records)
    losses = {row["_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert losses == {s: pytest.approx(v, rel=1e-6) for s, v in summary.losses[1::2]}
    validation = {row["_step"]: row["val/loss"] for row in history if "val/loss" in row}
    assert validation == {s: pytest.approx(v, rel=1e-6) for s, v, _ in summary.validations}


def _wandb_history(path: str) -> list[dict]:
    """The history rows of an offline W&B run file, parsed with W&B's own record definitions. The file
    is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    rows, pending, at = [], b"", 7
    while at + 7 <= len(data):
        if 32768 - at % 32768 < 7:  # a block's tail too short for a header is padding
            at += 32768 - at % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        if kind == 0 and length == 0:
            break
        pending += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows
