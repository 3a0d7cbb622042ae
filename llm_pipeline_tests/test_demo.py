"""`make demo` as a newcomer runs it: a fresh copy of the repo, no LLM_PIPELINE_* variable, the
default storage root. It prints one line per stage, the checks and the summary; everything else
(Dagster's events, the DeepSpeed launcher, the ranks' warnings) goes to the log file."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest

from llm_pipeline_tests.services import fresh_copy

pytestmark = pytest.mark.e2e


def test_the_demo_prints_a_stage_per_line_and_logs_the_rest(tmp_path):
    home = fresh_copy(tmp_path / "llm-pipeline")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")} | {"DAGSTER_HOME": home}
    proc = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.demo", "--steps", "100"], cwd=home, env=env, capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    lines = out.strip().splitlines()
    for stage in ("raw_corpus", "tokenizer", "tokenized_shards", "trained_checkpoint", "eval_metrics", "published_model"):
        assert any(line.strip().startswith(stage) and "done in" in line for line in lines), f"no line for {stage}:\n{out}"
    for check in ("eval_loss_within_threshold", "no_eval_contamination", "harness_scores_meet_minimums"):
        assert any(f"check {check}" in line and "passed" in line for line in lines), check
    assert any(line.strip().startswith("lm-eval") and "heldout_continuation acc" in line for line in lines)
    assert any(line.strip().startswith("training  [") and "step 100/100" in line for line in lines)  # the progress bar
    assert "published model" in out and os.path.join(home, ".storage", "registry") in out  # the default root
    # Validation while it trained (every 30 steps by default, and at the end), and where the curves are:
    # TensorBoard's event files in the run folder, the evaluation's figures logged into the same run.
    assert [line.strip().split(":")[0] for line in lines if line.strip().startswith("validation at step")] == [
        f"validation at step {step}" for step in (30, 60, 90, 100)
    ]
    [while_training] = [line for line in lines if line.strip().startswith("val while train")]
    assert "step 30 " in while_training and "step 100 " in while_training
    [curves] = [line.strip() for line in lines if line.strip().startswith("curves")]
    logdir = curves.split("tensorboard --logdir ", 1)[1]
    assert logdir.startswith(os.path.join(home, ".storage", "trained_checkpoint"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir)
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [30, 60, 90, 100] and [e.step for e in events.Scalars("eval/loss")] == [100]
    assert len(lines) <= 36, out  # not the event stream
    assert "[INFO]" not in out and "DEBUG" not in out and "FutureWarning" not in out, out

    log = open(os.path.join(home, ".dagster", "demo.log"), encoding="utf-8", errors="replace").read()
    assert "STEP_SUCCESS" in log or "Finished execution of step" in log  # Dagster's events
    assert "deepspeed.launcher" in log  # the launcher's own lines, kept

    # lm-evaluation-harness ran offline on the demo model: finite results, stderr where the harness
    # computes one, and its held-out bits per byte are ours.
    [value_file] = glob.glob(os.path.join(home, ".storage", "_values", "eval_metrics", "*", "*.json"))
    metrics = json.load(open(value_file))
    harness = metrics["harness"]["results"]
    assert all(math.isfinite(v["value"]) for task in harness.values() for v in task.values())
    choice = harness["llm_pipeline_heldout_continuation"]
    assert 0 < choice["acc"]["stderr"] < 1 and 0 < choice["acc_norm"]["stderr"] < 1
    assert harness["llm_pipeline_heldout_perplexity"]["bits_per_byte"]["value"] == pytest.approx(metrics["bits_per_byte"], abs=1e-3)
    assert metrics["contamination"]["fraction"] <= 0.2  # the default gate passes on the built-in corpus
    assert metrics["contamination"]["sets"]["held_out"]["contaminated"] == 0  # the shards' decontamination, by construction
