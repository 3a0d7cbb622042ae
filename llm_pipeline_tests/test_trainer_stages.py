"""The trainer as a standalone program (no Dagster) under each ZeRO stage and both launchers.

ZeRO partitions state but must not change the arithmetic: with fp32 on CPU every stage should
follow the same loss curve and consolidate to the same weights.
"""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import free_port, launch_command, launch_env
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline_tests.helpers import make_shards

pytestmark = pytest.mark.e2e
MODEL = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_tokenizer, sample_texts):
    tmp = tmp_path_factory.mktemp("stages")
    _, shards, _ = make_shards(tmp, Storage(str(tmp / "root")), small_tokenizer, sample_texts)
    return tmp, shards


def _config(tmp, shards, name: str, **extra) -> tuple[Storage, TrainConfig]:
    run = Storage(str(tmp / f"run-{name}"))
    options = dict(seq_len=32, micro_batch=4, steps=6, warmup_steps=2, zero_stage=2, dtype="fp32", checkpoint_every=3, log_every=3)
    cfg = TrainConfig(shards_uris=(shards.uri,), run_uri=run.uri, model=MODEL, **{**options, **extra})
    run.write_bytes("train_config.json", cfg.to_json().encode())
    return run, cfg


def _results(run: Storage, output: str) -> tuple[dict, dict]:
    final = run.child("final")
    assert final.exists("summary.json"), output[-6000:]
    return final.read_json("summary.json"), load_file(final.full("model.safetensors"))


def _train(tmp, shards, launcher: str = "deepspeed", **extra) -> tuple[dict, dict]:
    name = "-".join([launcher, *(f"{k}={v}" for k, v in sorted(extra.items()))])
    run, _ = _config(tmp, shards, name, **extra)
    launch = LaunchConfig(launcher=launcher, nproc=2)
    proc = subprocess.run(
        launch_command(launch, run.full("train_config.json")),
        env={**os.environ, **launch_env(launch)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return _results(run, proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def reference(shards):
    return _train(*shards)  # ZeRO-2, world 2, one node


def _assert_same_training(result, reference, rel=1e-4, atol=1e-4):
    (summary, weights), (ref_summary, ref_weights) = result, reference
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert [loss for _, loss in summary["losses"]] == pytest.approx([loss for _, loss in ref_summary["losses"]], rel=rel)
    # the consolidated fp32 weights load into the model and agree with the reference run
    CausalLM(MODEL).load_state_dict(weights, strict=True)
    assert set(weights) == set(ref_weights)
    for name, tensor in weights.items():
        assert tensor.dtype == torch.float32
        assert torch.allclose(tensor, ref_weights[name], atol=atol), name


@pytest.mark.parametrize(
    "launcher, extra",
    [
        ("deepspeed", {"zero_stage": 0}),
        ("torchrun", {"zero_stage": 1}),
        ("deepspeed", {"zero_stage": 3, "activation_checkpointing": True}),  # recomputation must not change the numbers
        # Half the micro-batch, twice the micro-steps: the same windows make each optimizer step.
        ("deepspeed", {"micro_batch": 2, "global_batch_tokens": 2 * 4 * 32}),
    ],
)
def test_every_zero_stage_trains_the_same_model(shards, reference, launcher, extra):
    result = _train(*shards, launcher=launcher, **extra)
    assert result[0]["zero_stage"] == extra.get("zero_stage", 2)
    _assert_same_training(result, reference)
    if "global_batch_tokens" in extra:
        assert result[0]["grad_accum"] == 2


@pytest.mark.parametrize(
    "extra",
    [
        {"zero_stage": 2, "offload_optimizer": True},
        {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
    ],
)
def test_cpu_offload_trains_the_same_model(shards, reference, extra):
    # DeepSpeed's vectorised CPU Adam rounds differently from torch's AdamW: close, not equal.
    result = _train(*shards, **extra)
    assert result[0]["zero_stage"] == extra["zero_stage"]
    _assert_same_training(result, reference, rel=2e-3, atol=2e-3)


@pytest.mark.parametrize("launcher", ["deepspeed", "torchrun"])
def test_two_nodes_on_loopback_train_like_one_node_with_two_ranks(tmp_path, shards, reference, launcher):
    """Two "nodes" of one process each, started the way a cluster starts them: each runs the
    launch module with its node rank, meeting at node 0's address."""
    run, _ = _config(*shards, f"two-nodes-{launcher}")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = str(free_port())
    procs = []
    for node_rank in (0, 1):
        args = [
            "--config",
            run.full("train_config.json"),
            "--launcher",
            launcher,
            "--nproc",
            "1",
            "--nnodes",
            "2",
            "--node-rank",
            str(node_rank),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            port,
        ]
        if launcher == "deepspeed":
            args += ["--hostfile", str(hostfile)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "llm_pipeline.train.launch", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    _assert_same_training(_results(run, outputs[0]), reference)


def test_a_compiled_model_trains_like_the_eager_one(shards):
    """`compile: true` (DeepSpeed's engine.compile: torch.compile with the inductor backend, here on the CPU)
    follows the eager run's loss curve and ends at its weights; the summary says it was compiled."""
    results = {}
    for compiled in (False, True):
        run, _ = _config(*shards, f"compile={compiled}", compile=compiled)
        launch = LaunchConfig(launcher="none", nproc=1)
        proc = subprocess.run(
            launch_command(launch, run.full("train_config.json")),
            env={**os.environ, **launch_env(launch)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        results[compiled] = _results(run, proc.stdout + proc.stderr)
        assert results[compiled][0]["compiled"] is compiled
    (summary, weights), (eager_summary, eager_weights) = results[True], results[False]
    assert [loss for _, loss in summary["losses"]] == pytest.approx([loss for _, loss in eager_summary["losses"]], rel=1e-5)
    for name, tensor in weights.items():
        # The compiled kernels sum in another order, and Adam turns a rounding difference in a gradient
        # near zero into a difference of up to a step for that element: a few of the 16,384 output-layer
        # weights end ~1.3e-5 apart after six steps. Every weight agrees within 1e-4, all but 0.1% within 1e-5.
        apart = (tensor - eager_weights[name]).abs()
        assert float(apart.max()) < 1e-4 and float((apart > 1e-5).float().mean()) <= 1e-3, (name, float(apart.max()))
    assert summary["attention"] == "flash"  # PyTorch's flash kernel runs this attention (its CPU version here)
