"""The whole graph with the storage root on S3 (a real S3 API server on loopback, through s3fs).

The trainer, a separate process tree, reaches the same bucket; its checkpoints are written locally
and mirrored to the bucket, and a re-run resumes from the bucket's copy.
"""

import shutil

import dagster as dg
import pytest

from llm_pipeline.definitions import ASSETS, CHECKS
from llm_pipeline.resources import JsonIOManager, StorageResource
from llm_pipeline.train.checkpoints import CheckpointStore
from llm_pipeline_tests.test_e2e_graph import _run_config

pytestmark = pytest.mark.e2e


def test_graph_on_s3_root_publishes_and_resumes(s3_endpoint):
    storage = StorageResource(root_uri="s3://llm-pipeline-test/graph", s3_endpoint_url=s3_endpoint)
    resources = {"storage": storage, "io_manager": JsonIOManager(storage=storage), "pipes_subprocess_client": dg.PipesSubprocessClient()}
    result = dg.materialize(ASSETS + CHECKS, resources=resources, run_config=_run_config())
    assert result.success
    published = result.output_for_node("published_model")
    assert published["uri"].startswith("s3://llm-pipeline-test/graph/registry/llm-pipeline-demo/")
    registry = storage.root().child("registry", "llm-pipeline-demo")
    assert registry.read_bytes("latest").decode().strip() == published["version"]
    from llm_pipeline.publish.verify import verify

    assert verify(storage.at(published["uri"])) == []

    run = storage.at(result.output_for_node("trained_checkpoint")["run_uri"])
    store = CheckpointStore(run)
    assert store.mirrored and store.complete_tags() == ["step_00000010", "step_00000020"]
    # Lose the step-20 checkpoint, the final outputs and the local mirror: resume must download step 10.
    run.child("checkpoints").remove("step_00000020")
    run.child("final").remove()
    shutil.rmtree(store.local_dir)
    again = dg.materialize(ASSETS + CHECKS, selection=["trained_checkpoint"], resources=resources,
                           run_config=_run_config(only=["trained_checkpoint"]))
    assert again.success
    summary = run.child("final").read_json("summary.json")
    assert summary["resumed_from"] == "step_00000010" and summary["steps"] == 20
