"""Drop files, get a model: the real `dagster-daemon` and webserver on the repo's own dagster.yaml,
in a fresh copy of the repo, with no LLM_PIPELINE_* variable (the default storage root `.storage/`
and landing folder `.storage/landing`), as a newcomer runs `dagster dev`. Then the same data flow
on the S3 API server. Nothing is switched on by hand."""

import json
import os
import shutil
import subprocess

import pytest
import s3fs

from llm_pipeline_tests.conftest import _STDLIB
from llm_pipeline_tests.services import REPOSITORY, Dagster, fresh_copy

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _stdlib_files(count: int, skip: int = 0) -> list[str]:
    """Real Python source files from the standard library, in a fixed order."""
    names = sorted(n for n in os.listdir(_STDLIB) if n.endswith(".py") and 4_000 < os.path.getsize(os.path.join(_STDLIB, n)) < 60_000)
    return [os.path.join(_STDLIB, n) for n in names[skip:skip + count]]


@pytest.fixture
def newcomer(tmp_path):
    home = fresh_copy(tmp_path / "llm-pipeline")
    dagster = Dagster(home, {})
    try:
        yield home, dagster
    finally:
        dagster.stop()


def test_files_dropped_in_the_default_landing_folder_become_a_model(newcomer, tmp_path):
    home, dagster = newcomer
    landing = os.path.join(home, ".storage", "landing")

    # Delivery 1, copied with the files' original (old) modification times, plus an upload in flight.
    os.makedirs(os.path.join(landing, "delivery-1"))
    for path in _stdlib_files(40):
        shutil.copy2(path, os.path.join(landing, "delivery-1", os.path.basename(path)))
    uploading = os.path.join(landing, "delivery-1", "notes.jsonl.part")
    with open(uploading, "w") as f:
        f.write("".join(json.dumps({"text": f"note {i}: " + "words of a note " * 20}) + "\n" for i in range(50)))

    dagster.wait_for("batch 1 tokenized and its training started", lambda: dagster.materializations("tokenized_shards")
                     and dagster.runs("training_job"), timeout=300)
    [batch1] = dagster.partitions()
    record1 = json.load(open(os.path.join(home, ".storage", "batches", f"{batch1}.json")))
    assert len(record1["files"]) == 40 and not any(rel.endswith(".part") for rel in record1["files"])

    # Delivery 2 (while the first training runs): more old-mtime copies, one document repeating delivery 1, and the finished upload
    # renamed into place.
    os.makedirs(os.path.join(landing, "delivery-2"))
    for path in _stdlib_files(25, skip=40):
        shutil.copy2(path, os.path.join(landing, "delivery-2", os.path.basename(path)))
    shutil.copy2(_stdlib_files(1)[0], os.path.join(landing, "delivery-2", "repeated.py"))
    os.rename(uploading, os.path.join(landing, "delivery-2", "notes.jsonl"))

    # The first training goes on to evaluate and publish (the checks pass on the default settings), on batch 1
    # alone; batch 2, tokenized meanwhile, waits for it, then a second training run takes both. (That run's
    # model is not waited for here: test_load_postgres follows many such rounds to their published models.)
    dagster.wait_for("the first training to publish", lambda: dagster.materializations("published_model"), timeout=600)
    [training1] = dagster.materializations("trained_checkpoint")
    assert list(training1["metadata"]["batches"]) == [batch1]
    batch1_, batch2 = dagster.wait_for("batch 2", lambda: (lambda p: p if len(p) == 2 else None)(dagster.partitions()), timeout=60)
    assert batch1_ == batch1
    second = dagster.wait_for("a second training run on the new batch", lambda: [
        r for r in dagster.run_records("training_job") if r["runId"] != training1["run_id"]], timeout=300)
    assert [t["value"] for t in second[0]["tags"] if t["key"] == "llm_pipeline/new_batches"] == [batch2]
    dagster.stop_daemon()  # and the second training with it: what follows reads the instance and the UI alone
    record2 = json.load(open(os.path.join(home, ".storage", "batches", f"{batch2}.json")))
    assert sorted(record2["files"]) == sorted([f"delivery-2/{os.path.basename(p)}" for p in _stdlib_files(25, skip=40)]
                                              + ["delivery-2/repeated.py", "delivery-2/notes.jsonl"])

    # Each batch cleaned and tokenized once; the repeated document dropped as a duplicate of batch 1.
    corpus, shards = dagster.by_partition("raw_corpus"), dagster.by_partition("tokenized_shards")
    assert {b: len(m) for b, m in corpus.items()} == {batch1: 1, batch2: 1}
    assert {b: len(m) for b, m in shards.items()} == {batch1: 1, batch2: 1}
    assert corpus[batch2][0]["metadata"]["duplicates_of_earlier_batches"] == 1
    assert len(dagster.materializations("tokenizer")) == 1  # one tokenizer across batches
    # The default storage root of a fresh clone: everything under its .storage/.
    assert os.path.isdir(os.path.join(home, ".storage", "raw_corpus", batch2))

    if CHROMIUM:  # the UI renders the partitions (a screenshot for people, the DOM for the assertion)
        page = f"{dagster.url}/assets/raw_corpus?view=partitions"
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,900", "--virtual-time-budget=20000"]
        dom = subprocess.run(args + ["--dump-dom", page], capture_output=True, timeout=120).stdout.decode()
        shot = str(tmp_path / "partitions.png")
        subprocess.run(args + [f"--screenshot={shot}", page], capture_output=True, timeout=120)
        assert batch1 in dom and batch2 in dom, "the asset page does not show the batches"
        assert os.path.getsize(shot) > 10_000
    else:
        pytest.fail("chromium is not installed: `make test` installs it (Debian package `chromium`)")


def test_the_same_flow_on_s3(s3_endpoint, tmp_path):
    home = fresh_copy(tmp_path / "llm-pipeline")
    bucket = "llm-pipeline-test/continuous"
    dagster = Dagster(home, {"LLM_PIPELINE_STORAGE_ROOT": f"s3://{bucket}", "LLM_PIPELINE_S3_ENDPOINT_URL": s3_endpoint,
                             # The data stages only here: training on S3 is covered by test_e2e_s3.
                             "LLM_PIPELINE_RETRAIN_MIN_NEW_TOKENS": str(10**12)})
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    try:
        for path in _stdlib_files(20):
            fs.put_file(path, f"{bucket}/landing/d1/{os.path.basename(path)}")
        # Startup, two sensor ticks and three runs (each a fresh process importing torch and dagster).
        dagster.wait_for("batch 1 tokenized", lambda: dagster.materializations("tokenized_shards"), timeout=600)
        for path in _stdlib_files(10, skip=20):
            fs.put_file(path, f"{bucket}/landing/d2/{os.path.basename(path)}")
        fs.put_file(_stdlib_files(1)[0], f"{bucket}/landing/d2/repeated.py")
        shards = dagster.wait_for("batch 2 tokenized", lambda: (lambda b: b if len(b) == 2 else None)(
            dagster.by_partition("tokenized_shards")), timeout=300)
        corpus = dagster.by_partition("raw_corpus")
        assert sorted(corpus) == sorted(shards) == sorted(dagster.partitions())
        assert all(len(m) == 1 for m in (*corpus.values(), *shards.values()))
        batch2 = dagster.partitions()[1]
        assert corpus[batch2][0]["metadata"]["duplicates_of_earlier_batches"] == 1
        assert corpus[batch2][0]["metadata"]["uri"].startswith(f"s3://{bucket}/raw_corpus/{batch2}/")
        assert fs.exists(f"{bucket}/batches/{batch2}.json")
        assert not dagster.materializations("trained_checkpoint")  # below the retraining threshold

        # A backfill of both batches, launched as the UI launches one (Materialize -> partitions).
        launched = dagster.query(f"""mutation {{ launchPartitionBackfill(backfillParams: {{
            partitionNames: {json.dumps(sorted(shards))}, assetSelection: [{{path: ["tokenized_shards"]}}]}}) {{
            __typename ... on LaunchBackfillSuccess {{ backfillId }} ... on PythonError {{ message }} }} }}""")
        assert launched["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", launched
        again = dagster.wait_for("the backfill", lambda: (lambda b: b if all(len(m) == 2 for m in b.values()) else None)(
            dagster.by_partition("tokenized_shards")), timeout=300)
        for batch, (new, old) in again.items():  # the same tokenizer and corpus: the same shards
            assert new["metadata"]["manifest_sha256"] == old["metadata"]["manifest_sha256"], batch

        # Two overlapping runs of one batch's stages, launched as the UI's Materialize does, from two
        # different sources: each run's shards hold its own run's corpus.
        _overlapping_runs_read_their_own_values(dagster, tmp_path)
    finally:
        dagster.stop()


def _overlapping_runs_read_their_own_values(dagster: Dagster, tmp_path) -> None:
    added = dagster.query(f"""mutation {{ addDynamicPartition(repositorySelector: {{repositoryLocationName:
        "{REPOSITORY['repositoryLocationName']}", repositoryName: "{REPOSITORY['repositoryName']}"}},
        partitionsDefName: "corpus_batches", partitionKey: "builtin") {{ __typename }} }}""")
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added
    sources = []
    for name, files in (("a", _stdlib_files(6, skip=100)), ("b", _stdlib_files(12, skip=110))):
        os.makedirs(tmp_path / name)
        for path in files:
            shutil.copy2(path, tmp_path / name / os.path.basename(path))
        sources.append(str(tmp_path / name))
    runs = [dagster.launch(["raw_corpus", "tokenized_shards"], {"ops": {"raw_corpus": {"config": {"source_uri": source}}}},
                           {"dagster/partition": "builtin"}) for source in sources]

    def finished():
        data = dagster.query("{ runsOrError { ... on Runs { results { runId status startTime endTime } } } }")
        mine = {r["runId"]: r for r in data["runsOrError"]["results"] if r["runId"] in runs}
        return mine if all(r["status"] == "SUCCESS" for r in mine.values()) and len(mine) == 2 else None

    stats = dagster.wait_for("two overlapping runs", finished, timeout=300)
    a, b = (stats[r] for r in runs)
    assert a["startTime"] < b["endTime"] and b["startTime"] < a["endTime"], "the runs did not overlap"
    corpus = {m["run_id"]: m["metadata"]["documents"] for m in dagster.materializations("raw_corpus") if m["run_id"] in runs}
    shards = {m["run_id"]: m["metadata"]["train_documents"] + m["metadata"]["val_documents"]
              for m in dagster.materializations("tokenized_shards") if m["run_id"] in runs}
    assert corpus[runs[0]] != corpus[runs[1]]
    assert shards == corpus  # each run tokenized its own corpus, not the other run's
