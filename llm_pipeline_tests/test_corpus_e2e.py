"""The corpus stage as users run it: from S3, from the command line, and as the `raw_corpus` asset."""

import gzip
import json
import os
import subprocess
import sys

import dagster as dg
import pyarrow.parquet as pq
import pytest
import s3fs

from llm_pipeline.assets.corpus import raw_corpus
from llm_pipeline.corpus.build import CorpusConfig, build_corpus, iter_documents
from llm_pipeline.definitions import make_resources
from llm_pipeline.resources import REPO_ROOT
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.helpers import batch_instance

pytestmark = pytest.mark.e2e


def _mixed_folder(root, sample_texts):
    """What lands in practice: compressed JSON Lines with a bad line, Parquet, text, an upload in flight."""
    texts = [f"# doc {i}\n" + t for i, t in enumerate(sample_texts[:6])]
    (root / "deliveries").mkdir(parents=True)
    lines = [json.dumps({"text": t}).encode() for t in texts[:3]] + [b'{"text": broken']
    (root / "deliveries" / "web.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    import pyarrow as pa

    pq.write_table(pa.table({"text": texts[3:5]}), root / "deliveries" / "code.parquet")
    (root / "deliveries" / "notes.txt").write_text(texts[5])
    (root / "deliveries" / "late.jsonl.part").write_bytes(lines[0])
    return texts


def test_jsonl_gz_from_the_s3_api_server_with_worker_processes(s3_endpoint, tmp_path, sample_texts):
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**opts)
    texts = [f"# s3 doc {i}\n" + t for i, t in enumerate(sample_texts)]
    for part in range(3):
        chunk = texts[part * 4 : part * 4 + 4] + [texts[0]]  # texts[0] again: a duplicate across objects
        fs.pipe(
            f"llm-pipeline-test/landing-e2e/part-{part}.jsonl.gz",
            gzip.compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in chunk)),
        )
    fs.pipe("llm-pipeline-test/landing-e2e/.hidden.jsonl", b"{}\n")
    out = Storage(str(tmp_path / "out"))
    manifest = build_corpus(CorpusConfig(source_uri="s3://llm-pipeline-test/landing-e2e", glob="**/*", workers=2), out, opts).model_dump(
        mode="json"
    )
    kept = [t for b in iter_documents(out, columns=("text",)) for t in b.column("text").to_pylist()]
    assert kept == texts
    assert manifest["dropped"] == {"exact_duplicate": 3} and manifest["skipped"] == {"hidden_or_in_flight": 1}
    assert all(f["uri"].startswith("s3://llm-pipeline-test/landing-e2e/") for f in manifest["files"])
    from llm_pipeline.corpus.build import CorpusSourceError

    with pytest.raises(CorpusSourceError, match="s3://no-such-bucket/x"):
        build_corpus(CorpusConfig(source_uri="s3://no-such-bucket/x"), out.child("none"), opts)


def _clean_env() -> dict:
    """The environment a newcomer has: no LLM_PIPELINE_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")}


def test_command_line_does_what_the_asset_does(tmp_path, sample_texts):
    texts = _mixed_folder(tmp_path / "src", sample_texts)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.corpus", str(tmp_path / "src"), "--out", str(out), "--glob", "**/*"],
        cwd=REPO_ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["documents"] == 6 and summary["files_matched"] == 4 and summary["files_skipped"] == 1
    assert summary["dropped"] == {"invalid_json": 1}
    assert sorted(pq.read_table(out / "documents-00000.parquet").column("text").to_pylist()) == sorted(texts)
    assert pq.read_table(out / "quarantine-00000.parquet").column("reason").to_pylist() == ["invalid_json"]

    missing = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.corpus", str(tmp_path / "nope"), "--out", str(out)],
        cwd=REPO_ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_command_line_draws_a_progress_bar_on_a_terminal(tmp_path, sample_texts):
    import pty

    _mixed_folder(tmp_path / "src", sample_texts)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_pipeline.corpus", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--glob", "**/*"],
        cwd=REPO_ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    stdout, _ = proc.communicate(timeout=120)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert proc.returncode == 0
    assert b"3/3 files" in screen and b"6 documents" in screen and b"MB/s" in screen
    assert json.loads(stdout.decode().strip().splitlines()[-1])["documents"] == 6  # stdout stays machine-readable


def test_raw_corpus_asset_reads_a_mixed_landing_folder(tmp_path, sample_texts, monkeypatch):
    for key in [k for k in os.environ if k.startswith("LLM_PIPELINE_")]:
        monkeypatch.delenv(key)
    _mixed_folder(tmp_path / "src", sample_texts)
    result = dg.materialize(
        [raw_corpus],
        resources=make_resources(str(tmp_path / "root")),
        instance=batch_instance(),
        partition_key="builtin",
        run_config={"ops": {"raw_corpus": {"config": {"source_uri": str(tmp_path / "src"), "glob": "**/*"}}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("raw_corpus")[0].metadata
    assert metadata["documents"].value == 6
    assert (metadata["files_matched"].value, metadata["files_read"].value, metadata["files_skipped"].value) == (4, 3, 1)
    drops = {r.data["reason"]: r.data["documents"] for r in metadata["dropped_by_reason"].value.records}
    assert drops == {"invalid_json": 1}
    skips = {r.data["reason"]: r.data["files"] for r in metadata["skipped_by_reason"].value.records}
    assert skips == {"hidden_or_in_flight": 1}


def test_sensor_takes_s3_objects_once_by_etag(s3_endpoint, monkeypatch):
    from llm_pipeline.automation import new_corpus_sensor
    from llm_pipeline.corpus.batches import read_batch
    from llm_pipeline.resources import AutomationSettings, StorageResource

    storage = StorageResource(root_uri="s3://llm-pipeline-test/sensor-root", s3_endpoint_url=s3_endpoint)
    automation = AutomationSettings(landing_uri="s3://llm-pipeline-test/sensor-landing")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.pipe("llm-pipeline-test/sensor-landing/batch-1/a.jsonl", b'{"text": "one"}\n')
    cursor = [None]

    def tick():  # one long-lived process, as the daemon's code server: no cache clearing here
        result = new_corpus_sensor.evaluate_tick(
            dg.build_sensor_context(cursor=cursor[0], resources={"storage": storage, "automation": automation})
        )
        cursor[0] = result.cursor
        requests = result.dynamic_partitions_requests or []
        return [read_batch(storage.root(), key)["files"] for r in requests for key in r.partition_keys]

    assert not tick()
    [first] = tick()
    assert list(first) == ["batch-1/a.jsonl"]
    assert not tick()
    fs.pipe("llm-pipeline-test/sensor-landing/batch-1/a.jsonl", b'{"text": "one, changed"}\n')  # new ETag
    tick()
    [changed] = tick()
    assert list(changed) == ["batch-1/a.jsonl"] and changed != first
