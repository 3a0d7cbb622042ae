"""Checkpoints are pickles: nothing is loaded from one that does not match its marker, and a crash while
saving never leaves a checkpoint that a later run uses. Real DeepSpeed ranks, local and S3 roots."""

import os
import shutil
import subprocess

import pytest

from llm_pipeline.faults import CRASH_ENV
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.checkpoints import MARKER, CheckpointStore
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import launch_command, launch_env
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline_tests.helpers import make_shards

MODEL = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)
OPTIONS = dict(seq_len=32, micro_batch=4, steps=9, warmup_steps=2, zero_stage=2, dtype="fp32", checkpoint_every=3, keep_last=5, log_every=3)


def test_the_marker_lists_every_file_and_verify_catches_changes(tmp_path):
    run = Storage(str(tmp_path / "run"))
    store = CheckpointStore(run)
    folder = tmp_path / "run" / "checkpoints" / "step_00000003"
    (folder / "sub").mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"model")
    (folder / "sub" / "optim.pt").write_bytes(b"optim")
    store.upload("step_00000003", rank=0)
    store.mark_complete("step_00000003", {"step": 3})
    marker = store.remote.child("step_00000003").read_json(MARKER)
    assert set(marker["files"]) == {"mp_rank_00_model_states.pt", "sub/optim.pt"}
    assert store.verify("step_00000003") == []
    # Another node's list being written (a shared disk) is bookkeeping, never hashed nor refused...
    (folder / "files-rank00001.json.tmp-0123456789abcdef0123456789abcdef").write_bytes(b"{}")
    assert store.verify("step_00000003") == []
    (folder / "sub" / "optim.pt").write_bytes(b"evil")
    # ...but a planted file that only looks like bookkeeping is refused like any other.
    (folder / "files-rank00000_zero_pp_rank_9_mp_rank_00_optim_states.pt").write_bytes(b"planted")
    problems = store.verify("step_00000003")
    assert problems == [
        "step_00000003/files-rank00000_zero_pp_rank_9_mp_rank_00_optim_states.pt: not listed in complete.json",
        "step_00000003/sub/optim.pt: sha256 does not match complete.json",
    ]
    warnings = []
    assert store.newest_intact(warnings.append) is None and "fails verification" in warnings[0]
    # Saving the tag again starts from an empty folder: the planted file cannot slip into a new marker.
    store.discard("step_00000003")
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "optim.pt").write_bytes(b"optim")
    store.upload("step_00000003", rank=0)
    store.mark_complete("step_00000003", {"step": 3})
    assert set(store.remote.child("step_00000003").read_json(MARKER)["files"]) == {"sub/optim.pt"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_tokenizer, sample_texts):
    tmp = tmp_path_factory.mktemp("integrity")
    _, shards, _ = make_shards(tmp, Storage(str(tmp / "root")), small_tokenizer, sample_texts)
    return tmp, shards


def _launch(run: Storage, env: dict | None = None) -> subprocess.CompletedProcess:
    launch = LaunchConfig(nproc=2)
    return subprocess.run(
        launch_command(launch, run.child("train_config.json").uri),
        env={**os.environ, **launch_env(launch), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _new_run(uri: str, shards: Storage, **storage_options) -> Storage:
    run = Storage(uri, **storage_options)
    run.write_bytes("train_config.json", TrainConfig(shards_uris=(shards.uri,), run_uri=run.uri, model=MODEL, **OPTIONS).to_json().encode())
    return run


def _losses(run: Storage) -> list[float]:
    return [loss for _, loss in run.child("final").read_json("summary.json")["losses"]]


@pytest.fixture(scope="module")
def reference(shards) -> tuple[Storage, list[float]]:
    """One uninterrupted run of the module's config: its folder (read-only: copy it to change it) and its losses."""
    tmp, shard_store = shards
    run = _new_run(str(tmp / "reference"), shard_store)
    proc = _launch(run)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run, _losses(run)


@pytest.mark.e2e
@pytest.mark.parametrize("where, point, rank", [("local", "after_save", 1), ("s3", "mid_upload", 0)])
def test_a_rank_killed_while_saving_leaves_nothing_that_is_used(shards, reference, where, point, rank, tmp_path, request):
    _, shard_store = shards
    env = {CRASH_ENV: f"{point}:{rank}:6:{tmp_path / 'fired'}"}
    if where == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        run = _new_run(f"s3://llm-pipeline-test/integrity-{tmp_path.name}", shard_store, client_kwargs={"endpoint_url": endpoint})
        env.update({"AWS_ENDPOINT_URL": endpoint, "LLM_PIPELINE_CHECKPOINT_STAGING": str(tmp_path / "staging")})
    else:
        run = _new_run(str(tmp_path / "run"), shard_store)

    crashed = _launch(run, env)
    assert crashed.returncode != 0 and (tmp_path / "fired").exists()
    checkpoints = run.child("checkpoints")
    assert checkpoints.exists(f"step_00000003/{MARKER}")
    assert not checkpoints.exists(f"step_00000006/{MARKER}")  # half-written: never complete
    if where == "s3":  # killed mid-upload: some of step 6 reached the bucket, not all of it
        assert 0 < len(checkpoints.child("step_00000006").listdir()) < len(checkpoints.child("step_00000003").listdir())
    assert not run.child("final").exists("summary.json")

    retried = _launch(run, env)  # the flag file is there: no second crash
    assert retried.returncode == 0, retried.stderr[-4000:]
    if where == "s3":  # a fresh client: the first one's listing cache predates the retry
        run = Storage(run.uri, client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}, skip_instance_cache=True)
        checkpoints = run.child("checkpoints")
    summary = run.child("final").read_json("summary.json")
    assert summary["resumed_from"] == "step_00000003"
    assert _losses(run) == pytest.approx(reference[1], rel=1e-6)
    assert set(checkpoints.listdir()) >= {"step_00000003", "step_00000006", "step_00000009"}
    assert checkpoints.exists(f"step_00000006/{MARKER}")


@pytest.mark.e2e
def test_a_tampered_newest_checkpoint_falls_back_to_the_previous_one(shards, reference, tmp_path):
    _, shard_store = shards
    finished, losses = reference
    # A finished run of the module's config: a copy of the reference run's outputs, under a config of its own.
    for folder in ("checkpoints", "final"):
        shutil.copytree(finished.full(folder), tmp_path / "run" / folder)
    run = _new_run(str(tmp_path / "run"), shard_store)
    newest = tmp_path / "run" / "checkpoints" / "step_00000009"
    target = sorted(newest.glob("*optim_states.pt"))[0]
    target.write_bytes(target.read_bytes() + b"\x00")  # whoever can write the prefix changed a pickle
    retried = _launch(run)
    assert retried.returncode == 0, retried.stderr[-4000:]
    assert f"checkpoint step_00000009 fails verification, not loading it: step_00000009/{target.name}: sha256" in retried.stderr
    assert run.child("final").read_json("summary.json")["resumed_from"] == "step_00000006"
    assert _losses(run) == pytest.approx(losses, rel=1e-6)
