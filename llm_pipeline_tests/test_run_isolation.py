"""Runs never read each other's values: each step reads what the run that produced its input wrote."""

from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pytest

from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests import jobs
from llm_pipeline_tests.helpers import batch_instance

pytestmark = pytest.mark.e2e
SELECTION = [dg.AssetKey("raw_corpus"), dg.AssetKey("tokenizer"), dg.AssetKey("tokenized_shards")]


def _corpus(folder, texts):
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.py").write_text(text)
    return str(folder)


def _config(source: str) -> dict:
    return {
        "ops": {
            "raw_corpus": {"config": {"source_uri": source}},
            "tokenizer": {"config": {"vocab_size": 300}},
            "tokenized_shards": {"config": {"val_fraction": 0.3}},
        }
    }


def _uri(result, instance, asset: str) -> str:
    """Where the run's materialization of `asset` lives (its `uri` metadata)."""
    mat = next(
        e
        for e in instance.all_logs(result.run_id)
        if e.dagster_event and e.dagster_event.is_step_materialization and e.dagster_event.asset_key == dg.AssetKey(asset)
    )
    return mat.dagster_event.materialization.metadata["uri"].value


def _documents(result, instance, asset: str) -> int:
    """Documents in the run's corpus, or in the shards it wrote: the two corpora differ in size, so this says which one."""
    manifest = Storage(_uri(result, instance, asset)).read_json("manifest.json")
    return manifest["documents"] if asset == "raw_corpus" else sum(s["documents"] for s in manifest["splits"].values())


def _overlap(instance, run_ids) -> bool:
    a, b = (instance.get_run_stats(r) for r in run_ids)
    return a.start_time < b.end_time and b.start_time < a.end_time


def test_overlapping_runs_and_reexecution_read_the_right_runs_values(tmp_path, monkeypatch, sample_texts):
    monkeypatch.setenv("LLM_PIPELINE_STORAGE_ROOT", str(tmp_path / "root"))
    source_a = _corpus(tmp_path / "a", sample_texts[:6])
    source_b = _corpus(tmp_path / "b", sample_texts[2:])
    job = dg.reconstructable(jobs.llm_pipeline_job)
    with batch_instance(home=str(tmp_path / "home")) as instance:
        # Two runs of the same batch's stages at the same time, each in its own processes
        # (multiprocess executor): every step writes and reads values while the other run does.
        def run(source):
            return dg.execute_job(
                job, instance, run_config=_config(source), asset_selection=SELECTION, tags={"dagster/partition": "builtin"}
            )

        with ThreadPoolExecutor(2) as pool:
            run_a, run_b = pool.map(run, (source_a, source_b))
        assert run_a.success and run_b.success
        assert _overlap(instance, (run_a.run_id, run_b.run_id))
        corpus = {r.run_id: _documents(r, instance, "raw_corpus") for r in (run_a, run_b)}
        assert corpus[run_a.run_id] != corpus[run_b.run_id]
        assert _documents(run_a, instance, "tokenized_shards") == corpus[run_a.run_id]
        assert _documents(run_b, instance, "tokenized_shards") == corpus[run_b.run_id]

        # Re-executing run A's last step after run B wrote newer values: it reads run A's inputs.
        again = dg.execute_job(
            job,
            instance,
            reexecution_options=dg.ReexecutionOptions(parent_run_id=run_a.run_id, step_selection=["tokenized_shards"]),
            tags={"dagster/partition": "builtin"},
        )
        assert again.success
        assert _documents(again, instance, "tokenized_shards") == corpus[run_a.run_id]

        # A run of that step alone reads the latest materialization of its batch's corpus.
        [latest] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_corpus"), asset_partitions=["builtin"]), limit=1
        ).records
        alone = dg.execute_job(
            job,
            instance,
            run_config=_config(source_b),
            asset_selection=[dg.AssetKey("tokenized_shards")],
            tags={"dagster/partition": "builtin"},
        )
        assert alone.success
        assert _documents(alone, instance, "tokenized_shards") == corpus[latest.run_id]
