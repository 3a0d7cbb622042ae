"""`make demo` as a newcomer runs it: a fresh copy of the repo, no LLM_PIPELINE_* variable, the
default storage root. It prints one line per stage, the checks and the summary; everything else
(Dagster's events, the DeepSpeed launcher, the ranks' warnings) goes to the log file."""

import os
import subprocess
import sys

import pytest

from llm_pipeline_tests.test_continuous_daemon import _fresh_copy

pytestmark = pytest.mark.e2e


def test_the_demo_prints_a_stage_per_line_and_logs_the_rest(tmp_path):
    home = _fresh_copy(tmp_path / "llm-pipeline")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")} | {"DAGSTER_HOME": home}
    proc = subprocess.run([sys.executable, "-m", "llm_pipeline.demo", "--steps", "100"], cwd=home, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    lines = out.strip().splitlines()
    for stage in ("raw_corpus", "tokenizer", "tokenized_shards", "trained_checkpoint", "eval_metrics", "published_model"):
        assert any(line.strip().startswith(stage) and "done in" in line for line in lines), f"no line for {stage}:\n{out}"
    assert any("check eval_loss_within_threshold" in line and "passed" in line for line in lines)
    assert any(line.strip().startswith("training  [") and "step 100/100" in line for line in lines)  # the progress bar
    assert "published model" in out and os.path.join(home, ".storage", "registry") in out  # the default root
    assert len(lines) <= 30, out  # not the event stream
    assert "[INFO]" not in out and "DEBUG" not in out and "FutureWarning" not in out, out

    log = open(os.path.join(home, ".dagster", "demo.log"), encoding="utf-8", errors="replace").read()
    assert "STEP_SUCCESS" in log or "Finished execution of step" in log  # Dagster's events
    assert "deepspeed.launcher" in log  # the launcher's own lines, kept
