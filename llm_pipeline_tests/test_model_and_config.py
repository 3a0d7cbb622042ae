import math

import pytest
import torch

from llm_pipeline.train.config import LaunchConfig, TrainConfig, resolve_dtype
from llm_pipeline.train.launch import launch_command
from llm_pipeline.train.model import CausalLM, ModelConfig
from llm_pipeline.train.trainer import lr_lambda

TINY = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)


def test_logits_match_transformers_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_pipeline.publish.export import hf_config

    torch.manual_seed(0)
    ours = CausalLM(TINY).eval()
    theirs = LlamaForCausalLM(LlamaConfig(**hf_config(TINY, eos_id=0))).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x).logits, atol=1e-5)


def test_loss_at_init_is_near_uniform():
    torch.manual_seed(0)
    x = torch.randint(0, 300, (4, 32))
    _, loss = CausalLM(TINY)(x, x)
    assert abs(loss.item() - math.log(300)) < 0.3


def test_sequence_longer_than_model_max_is_refused():
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
        CausalLM(TINY)(torch.zeros(1, 33, dtype=torch.long))


def test_param_count_matches_module():
    assert TINY.num_params() == sum(p.numel() for p in CausalLM(TINY).parameters())


def _cfg(**kw):
    return TrainConfig(shards_uri="s", run_uri="r", model=TINY, seq_len=kw.pop("seq_len", 16), **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zero_stage": 4}, "zero_stage must be one of 0, 1, 2, 3, got 4"),
        ({"steps": 0}, "steps must be > 0"),
        ({"seq_len": 64}, r"seq_len \(64\) exceeds the model's max_seq_len \(32\)"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"lr": 0}, "lr must be > 0"),
    ],
)
def test_train_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**kwargs)


def test_model_config_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match="divisible by model.n_heads"):
        ModelConfig(vocab_size=300, d_model=30, n_heads=4)


def test_config_json_roundtrip():
    cfg = _cfg(steps=7)
    assert TrainConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown training config field"):
        TrainConfig.from_dict({**__import__("json").loads(cfg.to_json()), "stepz": 3})


def test_deepspeed_config_batch_arithmetic():
    ds = _cfg(micro_batch=4, grad_accum=3, zero_stage=3).deepspeed_config(world_size=2, dtype="bf16")
    assert ds["train_batch_size"] == 24 and ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert "bf16" not in _cfg().deepspeed_config(1, "fp32")


def test_auto_dtype_is_explicit_dtype_passthrough():
    assert resolve_dtype("fp32", on_gpu=False) == "fp32"
    assert resolve_dtype("auto", on_gpu=False) in ("fp32", "bf16")


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lr_lambda(_cfg(steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_launch_commands():
    ds = launch_command(LaunchConfig("deepspeed", 2, 29500), "c.json")
    assert ds[1:] == ["-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "29500", "--module",
                      "llm_pipeline.train.trainer", "--config", "c.json"]
    tr = launch_command(LaunchConfig("torchrun", 2, 29500), "c.json")
    assert tr[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"] and tr[-3:] == ["llm_pipeline.train.trainer", "--config", "c.json"]
    with pytest.raises(ValueError, match="nproc must be 1"):
        LaunchConfig("none", 2)


def test_wsd_schedule_is_flat_then_decays_linearly():
    f = lr_lambda(_cfg(steps=100, warmup_steps=10, min_lr_ratio=0.1, lr_schedule="wsd", decay_fraction=0.2))
    assert f(9) == pytest.approx(1.0)
    assert all(f(s) == 1.0 for s in range(10, 80))
    assert f(90) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        _cfg(lr_schedule="step")


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    from llm_pipeline.train.activation_checkpointing import apply_activation_checkpointing

    x = torch.randint(0, 300, (2, 32))
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = CausalLM(TINY)
        if checkpointed:
            apply_activation_checkpointing(model)
        _, loss = model(x, x)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_presets_and_their_sizes():
    from llm_pipeline.train.model import PRESETS, preset_config

    demo = preset_config("demo", 4096)
    assert demo == ModelConfig(vocab_size=4096)  # the library default is the demo preset
    assert 110e6 < preset_config("125m", 32000).num_params() < 140e6
    assert 330e6 < preset_config("350m", 32000).num_params() < 420e6
    assert 0.9e9 < preset_config("1b", 32000).num_params() < 1.2e9
    assert preset_config("tiny", 512, n_layers=3).n_layers == 3
    with pytest.raises(ValueError, match="model preset must be one of"):
        preset_config("7b", 512)
    assert set(PRESETS) == {"tiny", "demo", "125m", "350m", "1b"}


def test_dagster_training_config_uses_presets_and_overrides():
    from llm_pipeline.assets.configs import TrainedCheckpointConfig

    assert TrainedCheckpointConfig().build_model_config(4096) == ModelConfig(vocab_size=4096)
    cfg = TrainedCheckpointConfig(preset="125m", n_layers=2).build_model_config(8192)
    assert (cfg.d_model, cfg.n_layers, cfg.max_seq_len) == (768, 2, 1024)
