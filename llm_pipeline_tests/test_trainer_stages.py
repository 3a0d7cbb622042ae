"""The trainer as a standalone program (no Dagster) under each ZeRO stage and both launchers.

ZeRO partitions state but must not change the arithmetic: with fp32 on CPU every stage should
follow the same loss curve and consolidate to the same weights.
"""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from llm_pipeline.storage import Storage
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import launch_command, launch_env
from llm_pipeline.train.model import CausalLM, ModelConfig
from llm_pipeline_tests.helpers import make_shards

pytestmark = pytest.mark.e2e
MODEL = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, small_tokenizer, sample_texts):
    tmp = tmp_path_factory.mktemp("stages")
    _, shards, _ = make_shards(tmp, Storage(str(tmp / "root")), small_tokenizer, sample_texts)
    return tmp, shards


def _train(tmp, shards, stage: int, launcher: str, **extra) -> tuple[dict, dict]:
    run = Storage(str(tmp / f"run-{stage}-{launcher}-{len(extra)}"))
    cfg = TrainConfig(shards_uri=shards.uri, run_uri=run.uri, model=MODEL, seq_len=32, micro_batch=4, steps=6,
                      warmup_steps=2, zero_stage=stage, dtype="fp32", checkpoint_every=3, log_every=3, **extra)
    run.write_bytes("train_config.json", cfg.to_json().encode())
    launch = LaunchConfig(launcher=launcher, nproc=2)
    proc = subprocess.run(launch_command(launch, run.full("train_config.json")), env={**os.environ, **launch_env(launch)},
                          capture_output=True, text=True, timeout=300)
    final = run.child("final")
    assert final.exists("summary.json"), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = final.read_json("summary.json")
    return summary, load_file(final.full("model.safetensors"))


@pytest.fixture(scope="module")
def reference(shards):
    return _train(*shards, stage=2, launcher="deepspeed")


@pytest.mark.parametrize("stage, launcher, extra", [
    (0, "deepspeed", {}),
    (1, "torchrun", {}),
    (3, "deepspeed", {"activation_checkpointing": True}),  # recomputation must not change the numbers
])
def test_every_zero_stage_trains_the_same_model(shards, reference, stage, launcher, extra):
    summary, weights = _train(*shards, stage=stage, launcher=launcher, **extra)
    ref_summary, ref_weights = reference
    assert summary["zero_stage"] == stage and summary["world_size"] == 2 and summary["steps"] == 6
    assert [l for _, l in summary["losses"]] == pytest.approx([l for _, l in ref_summary["losses"]], rel=1e-4)
    # the consolidated fp32 weights load into the model and agree with the stage-2 run
    model = CausalLM(MODEL)
    model.load_state_dict(weights, strict=True)
    assert set(weights) == set(ref_weights)
    for name, tensor in weights.items():
        assert tensor.dtype == torch.float32
        assert torch.allclose(tensor, ref_weights[name], atol=1e-4), name
