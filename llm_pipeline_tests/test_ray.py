"""The pipeline on a real Ray cluster: a head and two worker nodes of one CPU each, started here and
shut down after (llm_pipeline/local_ray.py). Training as a Ray job through dagster-ray, a node
lost mid-training, a run terminated from the UI, the checks that fail before any work, and the data
stages' Ray executor against the local one."""

import hashlib
import json
import os
import re
import shlex
import time

import dagster as dg
import pytest

from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.definitions import ASSETS, make_resources
from llm_pipeline.local_ray import LocalRayCluster, only_loopback
from llm_pipeline.ray_cluster import driver_address, placement_problem
from llm_pipeline.resources import RayClusterResource
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import id_space, tokenizer_hash
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards
from llm_pipeline.train.checkpoints import CheckpointStore
from llm_pipeline.train.config import LaunchConfig
from llm_pipeline.train.launch import ray_job_command, ray_job_env
from llm_pipeline_tests.helpers import GERMAN, WITH_CONTACT, distinct_text, step_failure
from llm_pipeline_tests.services import Dagster
from llm_pipeline_tests.test_e2e_graph import SMALL, _run_config

pytestmark = pytest.mark.e2e
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_RAY = {
    "raw_corpus": {"executor": "ray"},
    "tokenized_shards": {"executor": "ray"},
    "trained_checkpoint": {"launcher": "ray", "num_workers": 2, "cpus_per_worker": 1},
}
STAGES = ["raw_corpus", "tokenizer", "tokenized_shards", "trained_checkpoint", "eval_metrics"]


@pytest.fixture(scope="module")
def cluster():
    if not only_loopback():
        pytest.fail(
            "the Ray tests need a private network namespace (Ray's nodes would take this machine's interface "
            "address): `make test` runs them in one; by hand: unshare -n bash -c 'ip link set lo up; .venv/bin/pytest ...'"
        )
    cluster = LocalRayCluster(workers=2, cpus_per_worker=1)
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A persistent Dagster instance (the webserver of the termination test shares it)."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text(f"telemetry: {{enabled: false}}\nstorage: {{sqlite: {{base_dir: {home / 'storage'}}}}}\n")
    (home / "workspace.yaml").write_text(open(os.path.join(REPO, "workspace.yaml")).read())
    return home


@pytest.fixture(scope="module")
def on_ray(cluster, home, tmp_path_factory):
    """The graph up to evaluation, every stage that can on the cluster: corpus and shards as Ray tasks,
    training as a Ray job of two workers (ZeRO-2 over gloo)."""
    root = str(tmp_path_factory.mktemp("ray") / "root")
    resources = {**make_resources(root), "ray_cluster": RayClusterResource(address=cluster.job_address, driver_address=cluster.gcs_address)}
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("corpus_batches", ["builtin"])
    assets = [a for a in ASSETS if a.key.path[0] in STAGES]
    result = dg.materialize(
        assets, resources=resources, run_config=_run_config(ON_RAY, only=STAGES), instance=instance, partition_key="builtin"
    )
    assert result.success
    return root, result, instance


def test_training_on_the_ray_cluster_through_dagster(on_ray):
    root, result, instance = on_ray
    ckpt = result.output_for_node("trained_checkpoint")
    final = Storage(ckpt.final_uri)
    assert final.exists("model.safetensors") and ckpt.steps == 20 and ckpt.tokens_seen == 20 * 2 * 8 * 64
    assert CheckpointStore(Storage(ckpt.run_uri)).complete_tags()[-1] == ckpt.checkpoint == "step_00000020"
    summary = final.read_json("summary.json")
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2 and summary["device"] == "cpu"
    mats = {m.asset_key.to_user_string(): m.materialization.metadata for m in result.get_asset_materialization_events()}
    meta = mats["trained_checkpoint"]
    assert meta["world_size"].value == 2 and meta["steps"].value == 20 and "data:image/png;base64," in meta["loss_curve"].value
    # The trainer's live progress reached the run through the job's log, as with the local launchers.
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    progress = [m.split()[1] for m in messages if m.startswith("step ") and " loss " in m and "tok/s" in m]
    assert progress == ["5/20", "10/20", "15/20", "20/20"]
    assert any(m.startswith("[pipes] Ray job") and m.endswith("started.") for m in messages)
    # The model evaluates: better than a uniform guess over the vocabulary.
    metrics = result.output_for_node("eval_metrics")
    assert metrics.loss < metrics.uniform_loss


def _files(folder: Storage) -> dict[str, str]:
    """Every file under the folder (the dedup index's included), by relative name, with its hash."""
    return {
        path[len(folder.path) + 1 :]: hashlib.sha256(folder.fs.cat_file(path)).hexdigest() for path in sorted(folder.fs.find(folder.path))
    }


def test_data_stages_on_ray_are_byte_identical_to_local(cluster, tmp_path, small_tokenizer):
    """Through Ray Client, the default way in for a Dagster process off the cluster."""
    # Duplicates across files (exact and near), a bad file, and many small files: the merge's order decides.
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(sorted(os.listdir(os.path.dirname(os.__file__)))[:60]):
        path = os.path.join(os.path.dirname(os.__file__), name)
        if os.path.isfile(path) and name.endswith(".py"):
            text = open(path, encoding="utf-8", errors="replace").read()
            (src / f"{i:03d}.py").write_text(text)
            if i % 7 == 0:
                (src / f"{i:03d}_copy.py").write_text(text)
                (src / f"{i:03d}_near.py").write_text(text.replace("def ", "def  ", 1))
    (src / "binary.py").write_bytes(bytes(range(1, 32)) * 10)
    outputs = {}
    for executor in ("local", "ray"):
        root = Storage(str(tmp_path / executor))
        manifest = build_corpus(
            CorpusConfig(source_uri=str(src), executor=executor, workers=2), root.child("corpus"), ray_address=cluster.driver_address
        ).model_dump(mode="json")
        encoder = DocumentEncoder(small_tokenizer, "tiktoken")
        write_shards(
            root.child("corpus"),
            root.child("shards"),
            encoder,
            id_space(small_tokenizer),
            tokenizer_hash(small_tokenizer.to_str()),
            ShardConfig(val_fraction=0.2, row_group_rows=16, executor=executor),
            ray_address=cluster.driver_address,
        )
        outputs[executor] = (manifest, _files(root.child("corpus")), _files(root.child("shards")))
    local, ray = outputs["local"], outputs["ray"]
    assert local[0]["files_read"] > 40 and sum(local[0]["dropped"].values()) > 0  # dedup and filters had work to do
    assert ray[1] == local[1]  # every corpus file, the manifest, quarantine and dedup index included
    assert ray[2] == local[2]  # every shard and flat file, and the manifest
    # A later batch deduplicated against it: on Ray the keys are looked up and added by one worker per
    # key range (the driver holds none); the same decisions and the same index segment, byte for byte.
    later = tmp_path / "later"
    later.mkdir()
    for i, path in enumerate(sorted(src.iterdir())[::3]):
        (later / f"copy-{i:03d}.py").write_text(path.read_text(errors="replace"))
        (later / f"near-{i:03d}.py").write_text(path.read_text(errors="replace").replace("import ", "import  ", 1))
    for i, name in enumerate(sorted(os.listdir(os.path.dirname(os.__file__)))[60:90]):
        path = os.path.join(os.path.dirname(os.__file__), name)
        if os.path.isfile(path) and name.endswith(".py"):
            (later / f"new-{i:03d}.py").write_text(open(path, encoding="utf-8", errors="replace").read())
    for executor in ("local", "ray"):
        root = Storage(str(tmp_path / executor))
        manifest = build_corpus(
            CorpusConfig(source_uri=str(later), executor=executor, dedup_memory_mb=1),
            root.child("later"),
            earlier=[("first", root.child("corpus"))],
            ray_address=cluster.driver_address,
        ).model_dump(mode="json")
        outputs[executor] = (manifest, _files(root.child("later")))
    assert outputs["local"][0]["duplicates_of_earlier_batches"] > 20 and outputs["local"][0]["documents"] > 10
    # the manifests differ only in where the earlier batch lies (each executor's own folder)
    assert {**outputs["ray"][0], "deduplicated_against": []} == {**outputs["local"][0], "deduplicated_against": []}
    assert {k: v for k, v in outputs["ray"][1].items() if k != "manifest.json"} == {
        k: v for k, v in outputs["local"][1].items() if k != "manifest.json"
    }
    # The web preset's steps (the language model, C4's line removal, PII placeholders) in Ray tasks too.
    prose = tmp_path / "prose"
    prose.mkdir()
    for part in range(3):
        texts = [distinct_text(10 * part + i) for i in range(6)] + [GERMAN, WITH_CONTACT]
        (prose / f"part-{part}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    web = {}
    for executor in ("local", "ray"):
        out = Storage(str(tmp_path / f"web-{executor}"))
        manifest = build_corpus(
            CorpusConfig(source_uri=str(prose), executor=executor, filters=FilterConfig(preset="web")),
            out,
            ray_address=cluster.driver_address,
        ).model_dump(mode="json")
        web[executor] = (manifest, _files(out))
    assert web["local"][0]["dropped"]["language"] == 3 and web["local"][0]["modified"]["pii"] == 3
    assert web["ray"][1] == web["local"][1]


def test_a_worker_node_lost_mid_training_resumes_with_equal_losses(cluster, on_ray, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    root, result, _ = on_ray
    reference = Storage(result.output_for_node("trained_checkpoint").final_uri).read_json("summary.json")
    # The same training in a run folder of its own, with every rank stopped once step 10's checkpoint is complete.
    config = json.loads(Storage(result.output_for_node("trained_checkpoint").run_uri).read_bytes("train_config.json"))
    run = Storage(str(tmp_path / "lost_node_run"))
    run.write_bytes("train_config.json", json.dumps({**config, "run_uri": run.uri}).encode())
    flags = [str(tmp_path / f"paused-{rank}") for rank in (0, 1)]
    pause = ",".join(f"after_checkpoint:{rank}:10:{flag}" for rank, flag in zip((0, 1), flags))
    launch = LaunchConfig(launcher="ray", num_workers=2, cpus_per_worker=1)
    client = JobSubmissionClient(cluster.job_address)
    job = client.submit_job(
        entrypoint=shlex.join(ray_job_command(launch, run.child("train_config.json").uri)),
        runtime_env={"env_vars": {**ray_job_env(launch), "LLM_PIPELINE_TEST_PAUSE": pause}},
        entrypoint_num_cpus=0,
    )
    try:
        _wait(lambda: all(os.path.exists(f) for f in flags), 240, "both ranks past step 10's checkpoint", client, job)
        lost = cluster.workers[0]
        cluster.remove_worker(lost)  # one rank's node gone at once; Ray Train restarts the group
        cluster.add_worker()  # a replacement node, as an autoscaler (or an operator) brings
        _wait(lambda: client.get_job_status(job).is_terminal(), 300, "the job to finish", client, job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]
    finally:
        if not client.get_job_status(job).is_terminal():
            client.stop_job(job)
    summary = run.child("final").read_json("summary.json")
    assert summary["resumed_from"] == "step_00000010"
    assert [s for s, _ in summary["losses"]] == [s for s, _ in reference["losses"]]
    assert [loss for _, loss in summary["losses"]] == pytest.approx([loss for _, loss in reference["losses"]], rel=1e-6)
    assert "restart" in client.get_job_logs(job).lower() or "failure" in client.get_job_logs(job).lower()


def _wait(condition, timeout: float, what: str, client=None, job=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if client is not None and client.get_job_status(job).is_terminal():
            raise AssertionError(f"the Ray job ended while waiting for {what}: {client.get_job_logs(job)[-3000:]}")
        time.sleep(1)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}")


def test_terminating_the_run_in_the_ui_stops_the_ray_job(cluster, on_ray, home):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    root, _, _ = on_ray
    dagster = Dagster(str(home), {"LLM_PIPELINE_STORAGE_ROOT": root, "LLM_PIPELINE_RAY_ADDRESS": cluster.job_address})
    client = JobSubmissionClient(cluster.job_address)
    try:
        # Long enough never to finish: the run is terminated once the trainer reports progress.
        config = _training_config(steps=100_000, log_every=10)
        run_id = dagster.launch(["trained_checkpoint"], config)

        def training():  # the run's Ray job (dagster-ray tags it with the run id), its trainer stepping
            jobs = [j for j in client.list_jobs() if j.metadata.get("dagster/run-id") == run_id]
            # Its log holds rank 0's Pipes messages, one JSON object a line: the progress records among them.
            return jobs if jobs and re.search(r'"kind": "progress", "step": \d+', client.get_job_logs(jobs[0].submission_id)) else None

        jobs = dagster.wait_for("the Ray job's trainer to report progress", training, timeout=300)
        assert len(jobs) == 1 and client.get_job_status(jobs[0].submission_id) == JobStatus.RUNNING, jobs
        dagster.terminate(run_id)
        dagster.wait_for("the run to be canceled", lambda: dagster.run_status(run_id) == "CANCELED", timeout=120, failed_runs_allowed=True)
        _wait(lambda: client.get_job_status(jobs[0].submission_id) == JobStatus.STOPPED, 60, "the Ray job to stop")
        _wait(
            lambda: not list_actors(address=cluster.job_address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]),
            60,
            "every Ray Train worker to end",
        )
    finally:
        dagster.stop()


def test_an_unreachable_address_and_impossible_resources_fail_by_name_within_seconds(cluster, on_ray):
    root, _, _ = on_ray
    cases = {
        "http://127.0.0.1:9": ("cannot be reached", "http://127.0.0.1:9"),
        cluster.job_address: ("cannot place 2 workers", "CPU: 4 asked (2 x 2 workers), 2 in the cluster"),
    }
    for address, expected in cases.items():
        cfg = _training_config(cpus_per_worker=2 if address == cluster.job_address else 1)
        resources = {**make_resources(root), "ray_cluster": RayClusterResource(address=address)}
        started = time.monotonic()
        result = _materialize_training(resources, cfg, on_ray[2])
        seconds = time.monotonic() - started
        _, message = step_failure(result)
        assert all(part in message for part in expected), message
        assert seconds < 30, seconds


def _training_config(**overrides) -> dict:
    return {"ops": {"trained_checkpoint": {"config": {**SMALL["trained_checkpoint"], **ON_RAY["trained_checkpoint"], **overrides}}}}


def _materialize_training(resources, run_config, instance):
    """trained_checkpoint alone, its inputs (tokenizer, shards) the graph's latest materializations."""
    return dg.materialize(
        ASSETS, selection=["trained_checkpoint"], resources=resources, run_config=run_config, instance=instance, raise_on_error=False
    )


def test_the_driver_address_defaults_to_ray_client_on_the_head():
    launch = LaunchConfig(launcher="ray", num_workers=3, cpus_per_worker=4)
    assert launch.world_size == 3 and launch.ranks_on_this_node == 0
    assert ray_job_env(launch)["OMP_NUM_THREADS"] == "4" and ray_job_env(launch)["DS_ACCELERATOR"] == "cpu"
    assert driver_address("http://head.example:8265") == "ray://head.example:10001"
    assert driver_address("http://head:8265", "head:6379") == "head:6379"
    assert placement_problem([{"CPU": 1}, {"CPU": 1}], 2, {"CPU": 1}) is None
    problem = placement_problem([{"CPU": 4, "GPU": 1}, {"CPU": 4}], 2, {"CPU": 1, "GPU": 1})
    assert "only 1 fit on its 2 nodes" in problem and "GPU: 2 asked (1 x 2 workers), 1 in the cluster" in problem
