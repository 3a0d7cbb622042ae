"""The newcomer's data flow (test_continuous_daemon.py) with the storage root on the S3 API server:
the real `dagster-daemon` and webserver, a backfill launched as the UI launches one, and two
runs of one batch launched together, each reading its own run's values, also when one of its steps is
re-executed after the other run wrote newer values."""

import json
import os
import shutil

import pytest
import s3fs

from llm_pipeline_tests.helpers import stdlib_files
from llm_pipeline_tests.services import REPOSITORY, Dagster, fresh_copy

pytestmark = pytest.mark.e2e


def test_the_same_flow_on_s3(s3_endpoint, tmp_path):
    home = fresh_copy(tmp_path / "llm-pipeline")
    bucket = "llm-pipeline-test/continuous"
    dagster = Dagster(
        home,
        {
            "LLM_PIPELINE_STORAGE_ROOT": f"s3://{bucket}",
            "LLM_PIPELINE_S3_ENDPOINT_URL": s3_endpoint,
            # The data stages only here: training on S3 is covered by test_e2e_s3.
            "LLM_PIPELINE_RETRAIN_MIN_NEW_TOKENS": str(10**12),
        },
    )
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    try:
        for path in stdlib_files(20):
            fs.put_file(path, f"{bucket}/landing/d1/{os.path.basename(path)}")
        # Startup, two sensor ticks and three runs (each a fresh process loading the definitions).
        dagster.wait_for("batch 1 tokenized", lambda: dagster.materializations("tokenized_shards"), timeout=600)
        for path in stdlib_files(10, skip=20):
            fs.put_file(path, f"{bucket}/landing/d2/{os.path.basename(path)}")
        fs.put_file(stdlib_files(1)[0], f"{bucket}/landing/d2/repeated.py")
        shards = dagster.wait_for(
            "batch 2 tokenized", lambda: (lambda b: b if len(b) == 2 else None)(dagster.by_partition("tokenized_shards")), timeout=300
        )
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
        again = dagster.wait_for(
            "the backfill",
            lambda: (lambda b: b if all(len(m) == 2 for m in b.values()) else None)(dagster.by_partition("tokenized_shards")),
            timeout=300,
        )
        for batch, (new, old) in again.items():  # the same tokenizer and corpus: the same shards
            assert new["metadata"]["manifest_sha256"] == old["metadata"]["manifest_sha256"], batch

        # Two runs of one batch's stages launched together, as the UI's Materialize does, from two
        # different sources: each run's shards hold its own run's corpus.
        _runs_of_one_batch_read_their_own_values(dagster, tmp_path)
    finally:
        dagster.stop()


def _runs_of_one_batch_read_their_own_values(dagster: Dagster, tmp_path) -> None:
    added = dagster.query(f"""mutation {{ addDynamicPartition(repositorySelector: {{repositoryLocationName:
        "{REPOSITORY["repositoryLocationName"]}", repositoryName: "{REPOSITORY["repositoryName"]}"}},
        partitionsDefName: "corpus_batches", partitionKey: "builtin") {{ __typename }} }}""")
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added
    sources = []
    for name, files in (("a", stdlib_files(6, skip=100)), ("b", stdlib_files(12, skip=110))):
        os.makedirs(tmp_path / name)
        for path in files:
            shutil.copy2(path, tmp_path / name / os.path.basename(path))
        sources.append(str(tmp_path / name))
    configs = [{"ops": {"raw_corpus": {"config": {"source_uri": source}}}} for source in sources]
    assets, tags = ["raw_corpus", "tokenized_shards"], {"dagster/partition": "builtin"}
    runs = [dagster.launch(assets, config, tags) for config in configs]
    _wait_for_success(dagster, runs)
    corpus = {m["run_id"]: m["metadata"]["documents"] for m in dagster.materializations("raw_corpus") if m["run_id"] in runs}
    assert corpus[runs[0]] != corpus[runs[1]]
    assert _shard_documents(dagster, runs) == corpus  # each run tokenized its own corpus, not the other run's

    # Whether the two runs overlapped is up to the queue and the machine (on CI's two cores the second once started
    # 0.4 s after the first ended). What must hold whatever the timing: a step of the run whose corpus is no longer
    # the newest, re-executed as the UI's Re-execute -> Selected steps does, reads its own run's corpus.
    newest = dagster.materializations("raw_corpus")[0]["run_id"]
    [older] = [run for run in runs if run != newest]
    again = dagster.reexecute(older, assets, ["tokenized_shards"], configs[runs.index(older)], tags)
    _wait_for_success(dagster, [again])
    assert _shard_documents(dagster, [again]) == {again: corpus[older]}


def _wait_for_success(dagster: Dagster, runs: list[str]) -> None:
    dagster.wait_for(f"runs {', '.join(runs)}", lambda: all(dagster.run_status(run) == "SUCCESS" for run in runs), timeout=300)


def _shard_documents(dagster: Dagster, runs: list[str]) -> dict[str, int]:
    """Documents in the shards each of these runs wrote, by run."""
    return {
        m["run_id"]: m["metadata"]["train_documents"] + m["metadata"]["val_documents"]
        for m in dagster.materializations("tokenized_shards")
        if m["run_id"] in runs
    }
