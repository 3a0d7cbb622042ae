"""Drop files, get a model: the real `dagster-daemon` and webserver on the repo's own dagster.yaml,
in a fresh copy of the repo, with no LLM_PIPELINE_* variable (the default storage root `.storage/`
and landing folder `.storage/landing`), as a newcomer runs `dagster dev`. Nothing is switched on by hand. (The same data flow on the S3
API server: test_continuous_daemon_on_s3.py.)"""

import json
import os
import shutil
import subprocess

import pytest

from llm_pipeline_tests.helpers import stdlib_files
from llm_pipeline_tests.services import Dagster, fresh_copy

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
    for path in stdlib_files(40):
        shutil.copy2(path, os.path.join(landing, "delivery-1", os.path.basename(path)))
    uploading = os.path.join(landing, "delivery-1", "notes.jsonl.part")
    with open(uploading, "w") as f:
        f.write("".join(json.dumps({"text": f"note {i}: " + "words of a note " * 20}) + "\n" for i in range(50)))

    dagster.wait_for(
        "batch 1 tokenized and its training started",
        lambda: dagster.materializations("tokenized_shards") and dagster.runs("training_job"),
        timeout=300,
    )
    [batch1] = dagster.partitions()
    record1 = json.load(open(os.path.join(home, ".storage", "batches", f"{batch1}.json")))
    assert len(record1["files"]) == 40 and not any(rel.endswith(".part") for rel in record1["files"])

    # Delivery 2 (while the first training runs): more old-mtime copies, one document repeating delivery 1, and the finished upload
    # renamed into place.
    os.makedirs(os.path.join(landing, "delivery-2"))
    for path in stdlib_files(25, skip=40):
        shutil.copy2(path, os.path.join(landing, "delivery-2", os.path.basename(path)))
    shutil.copy2(stdlib_files(1)[0], os.path.join(landing, "delivery-2", "repeated.py"))
    os.rename(uploading, os.path.join(landing, "delivery-2", "notes.jsonl"))

    # The first training goes on to evaluate and publish (the checks pass on the default settings), on batch 1
    # alone; batch 2, tokenized meanwhile, waits for it, then a second training run takes both. (That run's
    # model is not waited for here: test_load_postgres follows many such rounds to their published models.)
    dagster.wait_for("the first training to publish", lambda: dagster.materializations("published_model"), timeout=600)
    [training1] = dagster.materializations("trained_checkpoint")
    assert list(training1["metadata"]["batches"]) == [batch1]
    batch1_, batch2 = dagster.wait_for("batch 2", lambda: (lambda p: p if len(p) == 2 else None)(dagster.partitions()), timeout=60)
    assert batch1_ == batch1
    second = dagster.wait_for(
        "a second training run on the new batch",
        lambda: [r for r in dagster.run_records("training_job") if r["runId"] != training1["run_id"]],
        timeout=300,
    )
    assert [t["value"] for t in second[0]["tags"] if t["key"] == "llm_pipeline/new_batches"] == [batch2]
    dagster.stop_daemon()  # and the second training with it: what follows reads the instance and the UI alone
    record2 = json.load(open(os.path.join(home, ".storage", "batches", f"{batch2}.json")))
    assert sorted(record2["files"]) == sorted(
        [f"delivery-2/{os.path.basename(p)}" for p in stdlib_files(25, skip=40)] + ["delivery-2/repeated.py", "delivery-2/notes.jsonl"]
    )

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
        args = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1400,900",
            "--virtual-time-budget=20000",
        ]
        dom = subprocess.run(args + ["--dump-dom", page], capture_output=True, timeout=120).stdout.decode()
        shot = str(tmp_path / "partitions.png")
        subprocess.run(args + [f"--screenshot={shot}", page], capture_output=True, timeout=120)
        assert batch1 in dom and batch2 in dom, "the asset page does not show the batches"
        assert os.path.getsize(shot) > 10_000
    else:
        pytest.fail("chromium is not installed: `make test` installs it (Debian package `chromium`)")
