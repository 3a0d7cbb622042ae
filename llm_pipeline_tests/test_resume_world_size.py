"""A run checkpointed at one world size resumes at another: ZeRO 1-3 through DeepSpeed's universal
checkpoints, plain data parallelism (stage 0) directly. The loader's position is a count of global
samples, so the resumed run reads exactly the samples the uninterrupted one reads. With fp32 on the
CPU the only difference is the order of floating-point sums (two ranks' gradients averaged vs. two
micro-steps accumulated): the loss curve continues to 1e-5 and the weights agree to 1e-5.
Resuming at the same world size is exact (test_checkpoint_integrity.py compares it with a run that
was never interrupted)."""

import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.checkpoints import CheckpointStore
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import launch_command, launch_env
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline_tests.helpers import make_shards

pytestmark = pytest.mark.e2e
MODEL = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)
# global_batch_tokens keeps the optimizer step's samples the same at any world size (grad_accum follows).
OPTIONS = dict(
    seq_len=32,
    micro_batch=4,
    global_batch_tokens=32 * 4 * 2,
    steps=6,
    warmup_steps=1,
    dtype="fp32",
    checkpoint_every=3,
    keep_last=5,
    log_every=1,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_tokenizer, sample_texts):
    tmp = tmp_path_factory.mktemp("world-size")
    _, shards, _ = make_shards(tmp, Storage(str(tmp / "root")), small_tokenizer, sample_texts)
    return shards


def _run(folder, shards: Storage, **options) -> Storage:
    run = Storage(str(folder))
    cfg = TrainConfig(shards_uris=(shards.uri,), run_uri=run.uri, model=MODEL, **{**OPTIONS, **options})
    run.write_bytes("train_config.json", cfg.to_json().encode())
    return run


def _launch(run: Storage, world: int) -> subprocess.CompletedProcess:
    launch = LaunchConfig(launcher="deepspeed" if world > 1 else "none", nproc=world)
    return subprocess.run(
        launch_command(launch, run.full("train_config.json")),
        env={**os.environ, **launch_env(launch)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _checkpoint_copied(source: Storage, folder, shards: Storage, tag: str, **options) -> Storage:
    """A new run holding only `source`'s checkpoint `tag`, as if it had stopped there."""
    run = _run(folder, shards, **options)
    shutil.copytree(source.full(f"checkpoints/{tag}"), run.full(f"checkpoints/{tag}"))
    return run


@pytest.mark.parametrize("stage, saved_at, resumed_at", [(1, 2, 1), (2, 1, 2), (3, 2, 1), (0, 2, 1)])
def test_a_run_resumes_on_another_world_size(tmp_path, shards, stage, saved_at, resumed_at):
    uninterrupted = _run(tmp_path / "uninterrupted", shards, zero_stage=stage)
    done = _launch(uninterrupted, saved_at)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = _checkpoint_copied(uninterrupted, tmp_path / "resumed", shards, "step_00000003", zero_stage=stage)
    done = _launch(resumed, resumed_at)
    assert done.returncode == 0, done.stderr[-4000:]
    log = done.stdout + done.stderr
    assert "resumed from checkpoint step_00000003: step 3" in log
    # Stage 0 keeps the whole optimizer state in one file: it loads as it is. ZeRO is converted.
    assert ("universal checkpoint format" in log) == (stage > 0)

    before, after = (r.child("final").read_json("summary.json") for r in (uninterrupted, resumed))
    assert after["world_size"] == resumed_at and after["resumed_from"] == "step_00000003"
    assert after["samples_seen"] == before["samples_seen"] == 6 * 8  # no sample repeated or skipped
    assert [s for s, _ in after["losses"]] == list(range(1, 7))
    for (_, a), (_, b) in zip(before["losses"][3:], after["losses"][3:]):
        assert a == pytest.approx(b, abs=1e-5)
    assert before["losses"][-1][1] < before["losses"][0][1] - 0.05  # real text: the curve moves
    weights_before, weights_after = (load_file(r.full("final/model.safetensors")) for r in (uninterrupted, resumed))
    for name, value in weights_before.items():
        torch.testing.assert_close(weights_after[name], value, rtol=0, atol=1e-5, msg=name)
    assert not os.path.exists(resumed.full("checkpoints/universal/step_00000003"))  # the converted copy is dropped


def test_a_checkpoint_that_cannot_be_converted_stops_every_rank_before_training(tmp_path, shards):
    """A checkpoint that verifies but that DeepSpeed's converter cannot read (here: the optimizer file cut short,
    and the marker rewritten to match, as a faulty copy tool would): every rank stops with the reason."""
    saved = _run(tmp_path / "saved", shards, zero_stage=1, steps=3)
    done = _launch(saved, 1)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = _checkpoint_copied(saved, tmp_path / "resumed", shards, "step_00000003", zero_stage=1)
    optimizer_file = resumed.full("checkpoints/step_00000003/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with open(optimizer_file, "r+b") as f:
        f.truncate(100)
    store = CheckpointStore(resumed)
    store.upload("step_00000003", rank=0)
    store.mark_complete("step_00000003", {"step": 3})
    done = _launch(resumed, 2)  # rank 0 converts; rank 1 must stop too, not wait for it
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert ("checkpoint step_00000003 cannot resume on another world size: DeepSpeed's universal checkpoint conversion failed") in log
    assert "step 4/" not in log and not resumed.child("final").exists("summary.json")
