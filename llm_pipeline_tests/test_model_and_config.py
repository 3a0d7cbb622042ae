import math

import pytest
import torch

from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.hardware import resolve_dtype
from llm_pipeline.train.launch import launch_command
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.trainer import lr_lambda

TINY = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)


def test_logits_match_transformers_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_pipeline.train.hf_config import hf_config

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
    return TrainConfig(shards_uris=("s",), run_uri="r", model=TINY, seq_len=kw.pop("seq_len", 16), **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zero_stage": 4}, "zero_stage must be one of 0, 1, 2, 3, got 4"),
        ({"steps": 0}, "steps must be > 0"),
        ({"seq_len": 64}, r"seq_len \(64\) exceeds the model's max_seq_len \(32\)"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"lr": 0}, "lr must be > 0"),
        ({"beta2": 1.0}, "beta1 and beta2 must be in"),
        ({"zero_stage": 1, "offload_optimizer": True}, "offload_optimizer needs zero_stage 2 or 3, got zero_stage 1"),
        ({"zero_stage": 2, "offload_params": True}, "offload_params needs zero_stage 3, got zero_stage 2"),
        ({"global_batch_tokens": 512, "grad_accum": 2}, "set either global_batch_tokens or grad_accum"),
        ({"global_batch_tokens": 100, "micro_batch": 4}, r"global_batch_tokens \(100\) must be a multiple of micro_batch x seq_len"),
        ({"keep_best": True, "eval_every": 0}, "keep_best needs eval_every > 0"),
        ({"tracker": "mlflow"}, "tracker mlflow needs tracker_uri"),
        ({"tracker": "comet"}, "tracker must be one of tensorboard, mlflow, wandb, none, got 'comet'"),
        ({"on_divergence": "ignore"}, "on_divergence must be one of stop, rollback"),
        ({"spike_factor": -1.0}, "spike_factor must be >= 0"),
    ],
)
def test_train_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**kwargs)


def test_where_the_curves_go_is_not_part_of_the_run():
    """A run resumes whichever tracker it logs to: the tracker settings and the tokenizer's location are
    not in the run key; what changes the computation is."""
    base = _cfg()
    assert _cfg(tracker="none", experiment="x", tracker_tags={"dagster/run_id": "r2"}, tokenizer_uri="s3://t").run_key() == base.run_key()
    assert _cfg(spike_factor=2.0).run_key() != base.run_key() and _cfg(eval_every=5).run_key() != base.run_key()


def test_model_config_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match="divisible by model.n_heads"):
        ModelConfig(vocab_size=300, d_model=30, n_heads=4)


def test_config_json_roundtrip():
    cfg = _cfg(steps=7)
    assert TrainConfig.from_dict(__import__("json").loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown training config field"):
        TrainConfig.from_dict({**__import__("json").loads(cfg.to_json()), "stepz": 3})


def test_deepspeed_config_batch_arithmetic():
    ds = _cfg(micro_batch=4, grad_accum=3, zero_stage=3).deepspeed_config(world_size=2, dtype="bf16", on_gpu=False)
    assert ds["train_batch_size"] == 24 and ds["zero_optimization"] == {"stage": 3} and ds["bf16"]["enabled"]
    assert "bf16" not in _cfg().deepspeed_config(1, "fp32", on_gpu=False)


def test_global_batch_in_tokens_sets_gradient_accumulation_per_world_size():
    cfg = _cfg(micro_batch=4, seq_len=16, global_batch_tokens=4 * 16 * 8)
    assert [cfg.grad_accum_for(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    assert cfg.tokens_per_step(2) == 512 and cfg.deepspeed_config(2, "fp32", on_gpu=False)["gradient_accumulation_steps"] == 4
    with pytest.raises(ValueError, match=r"multiple of micro_batch x seq_len x world size \(4 x 16 x 3 = 192\)"):
        cfg.validate_for(world_size=3, on_gpu=False)
    with pytest.raises(ValueError, match="dtype fp16 needs a GPU"):
        _cfg(dtype="fp16").validate_for(world_size=1, on_gpu=False)


def test_offload_goes_into_the_zero_config():
    zero = _cfg(zero_stage=3, offload_optimizer=True, offload_params=True).deepspeed_config(2, "bf16", on_gpu=True)["zero_optimization"]
    assert zero == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
    }


def test_mfu_uses_the_dense_16bit_peak_of_the_named_gpu():
    from llm_pipeline.train.mfu import model_flops_utilization

    assert model_flops_utilization(494.5e12, "bf16", 0, "NVIDIA H200") == pytest.approx(0.5)
    assert model_flops_utilization(378e12, "bf16", 0, "NVIDIA H100 PCIe") == pytest.approx(0.5)
    assert model_flops_utilization(1e12, "fp32", 0, "NVIDIA H100 80GB HBM3") is None  # no tensor-core fp32 peak
    assert model_flops_utilization(1e12, "bf16", 0, "Mystery GPU") is None
    assert model_flops_utilization(1e12, "bf16", 10.0, "Mystery GPU") == pytest.approx(0.1)


def test_auto_dtype_is_explicit_dtype_passthrough():
    assert resolve_dtype("fp32", on_gpu=False) == "fp32"
    assert resolve_dtype("auto", on_gpu=False) in ("fp32", "bf16")


def test_lr_schedule_warmup_then_cosine_to_floor():
    f = lr_lambda(_cfg(steps=100, warmup_steps=10, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


def test_launch_commands():
    ds = launch_command(LaunchConfig(launcher="deepspeed", nproc=2, master_port=29500), "c.json")
    assert ds[1:] == [
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        "29500",
        "--module",
        "llm_pipeline.train.trainer",
        "--config",
        "c.json",
    ]
    tr = launch_command(LaunchConfig(launcher="torchrun", nproc=2, master_port=29500), "c.json")
    assert tr[1:3] == ["-m", "torch.distributed.run"] and tr[-3:] == ["llm_pipeline.train.trainer", "--config", "c.json"]
    with pytest.raises(ValueError, match="nproc and nnodes must be 1"):
        LaunchConfig(launcher="none", nproc=2)


def test_multi_node_launch_commands():
    node1 = LaunchConfig(launcher="deepspeed", nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500, hostfile="hosts")
    ds = launch_command(node1, "c.json")
    assert ds[3:17] == [
        "--hostfile",
        "hosts",
        "--num_nodes",
        "2",
        "--num_gpus",
        "4",
        "--master_addr",
        "10.0.0.1",
        "--no_ssh",
        "--node_rank",
        "1",
        "--master_port",
        "29500",
        "--module",
    ]
    head = LaunchConfig(launcher="deepspeed", nproc=4, nnodes=2, master_addr="10.0.0.1", master_port=29500, hostfile="hosts", ssh=True)
    assert "--no_ssh" not in launch_command(head, "c.json")
    tr = launch_command(
        LaunchConfig(launcher="torchrun", nproc=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29500), "c.json"
    )
    assert tr[3:15] == [
        "--nnodes",
        "2",
        "--node_rank",
        "1",
        "--nproc_per_node",
        "4",
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29500",
        "-m",
        "llm_pipeline.train.trainer",
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nnodes": 2, "master_port": 0}, "master_port must be set when nnodes > 1"),
        ({"nnodes": 2, "master_port": 29500, "launcher": "deepspeed"}, "the deepspeed launcher needs a hostfile"),
        ({"nnodes": 2, "node_rank": 2, "master_port": 29500}, r"node_rank must be in \[0, nnodes=2\)"),
        ({"launcher": "torchrun", "ssh": True}, "ssh applies to the deepspeed launcher with a hostfile only"),
        ({"nproc": 0}, "nproc must be > 0"),
    ],
)
def test_launch_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaunchConfig(**kwargs)


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
    from llm_pipeline.train.model_config import PRESETS, preset_config

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
