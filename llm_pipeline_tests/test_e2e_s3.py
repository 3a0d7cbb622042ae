"""The whole graph with the storage root on S3 (a real S3 API server on loopback, through s3fs).

The trainer, a separate process tree, reaches the same bucket; its checkpoints are written locally
and mirrored to the bucket, and a re-run resumes from the bucket's copy.
"""

import os
import shutil
import subprocess
import sys

import dagster as dg
import pytest
from safetensors.torch import load

from llm_pipeline.definitions import ASSETS, CHECKS
from llm_pipeline.resources import JsonIOManager, RayClusterResource, StorageResource
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.checkpoints import STAGING_ENV, CheckpointStore
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.launch import free_port
from llm_pipeline.train.model import CausalLM
from llm_pipeline_tests.helpers import batch_instance, make_shards
from llm_pipeline_tests.test_e2e_graph import _run_config
from llm_pipeline_tests.test_trainer_stages import MODEL

pytestmark = pytest.mark.e2e


def test_graph_on_s3_root_publishes_and_resumes(s3_endpoint):
    storage = StorageResource(root_uri="s3://llm-pipeline-test/graph", s3_endpoint_url=s3_endpoint)
    resources = {
        "storage": storage,
        "io_manager": JsonIOManager(storage=storage),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
        "ray_cluster": RayClusterResource(),
    }
    instance = batch_instance()
    result = dg.materialize(ASSETS + CHECKS, resources=resources, run_config=_run_config(), instance=instance, partition_key="builtin")
    assert result.success
    published = result.output_for_node("published_model")
    assert published.uri.startswith("s3://llm-pipeline-test/graph/registry/llm-pipeline-demo/")
    registry = storage.root().child("registry", "llm-pipeline-demo")
    assert registry.read_bytes("latest").decode().strip() == published.version
    from llm_pipeline.publish.verify import verify

    assert verify(storage.at(published.uri)) == []

    run = storage.at(result.output_for_node("trained_checkpoint").run_uri)
    store = CheckpointStore(run)
    assert store.mirrored and store.complete_tags() == ["step_00000010", "step_00000020"]
    # Lose the step-20 checkpoint, the final outputs and the local mirror: resume must download step 10.
    run.child("checkpoints").remove("step_00000020")
    run.child("final").remove()
    shutil.rmtree(store.local_dir)
    again = dg.materialize(
        ASSETS + CHECKS,
        selection=["trained_checkpoint"],
        resources=resources,
        instance=instance,
        run_config=_run_config(only=["trained_checkpoint"]),
    )
    assert again.success
    summary = run.child("final").read_json("summary.json")
    assert summary["resumed_from"] == "step_00000010" and summary["steps"] == 20


def test_two_nodes_with_their_own_disks_share_checkpoints_through_s3(s3_endpoint, tmp_path, small_tokenizer, sample_texts):
    """Two "nodes" on loopback that share nothing but the bucket: each stages and uploads its own
    rank's checkpoint shards; rank 0 fetches the other node's shards to consolidate the model."""
    _, shards, _ = make_shards(tmp_path, Storage(str(tmp_path / "root")), small_tokenizer, sample_texts)
    run = Storage("s3://llm-pipeline-test/two-nodes/run", client_kwargs={"endpoint_url": s3_endpoint})
    cfg = TrainConfig(
        shards_uris=(shards.uri,),
        run_uri=run.uri,
        model=MODEL,
        seq_len=32,
        micro_batch=4,
        steps=4,
        warmup_steps=1,
        zero_stage=2,
        dtype="fp32",
        checkpoint_every=2,
        keep_last=1,
        log_every=2,
    )
    run.write_bytes("train_config.json", cfg.to_json().encode())
    port, procs = str(free_port()), []
    for node_rank in (0, 1):
        env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, STAGING_ENV: str(tmp_path / f"disk-{node_rank}")}
        args = [
            "--config",
            run.uri + "/train_config.json",
            "--launcher",
            "torchrun",
            "--nproc",
            "1",
            "--nnodes",
            "2",
            "--node-rank",
            str(node_rank),
            "--master-port",
            port,
        ]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "llm_pipeline.train.launch", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    summary = run.child("final").read_json("summary.json")
    assert summary["world_size"] == 2 and summary["steps"] == 4
    CausalLM(MODEL).load_state_dict(load(run.child("final").read_bytes("model.safetensors")), strict=True)
    checkpoints = run.child("checkpoints")
    assert CheckpointStore(run).complete_tags() == ["step_00000004"]  # keep_last 1 pruned step 2 from the bucket
    shards_in_bucket = sorted(n for n in checkpoints.child("step_00000004").listdir() if "optim_states" in n)
    assert shards_in_bucket == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    key = os.path.basename(CheckpointStore(run).local_dir)
    disk0, disk1 = (tmp_path / f"disk-{n}" / key / "step_00000004" for n in (0, 1))
    assert (disk0 / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()  # fetched for consolidation
    assert not (disk1 / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()  # node 1 never saw rank 0's shard
    assert not (tmp_path / "disk-1" / key / "step_00000002").exists()  # pruned on every node
