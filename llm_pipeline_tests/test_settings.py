"""Each setting is declared once, in the library's Settings models; the launchpad and the command
lines are derived from them. These tests fail when the two drift apart."""

import argparse
import math

import dagster as dg
import pytest
from pydantic import Field, create_model

from llm_pipeline.assets.configs import (
    FILLED_BY_THE_ASSET,
    EvalMetricsConfig,
    RawCorpusConfig,
    TokenizedShardsConfig,
    TrainedCheckpointConfig,
    check_launchpad,
    launchpad,
)
from llm_pipeline.corpus.__main__ import _parser as corpus_parser
from llm_pipeline.corpus.build import CorpusConfig
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.settings import add_options, default_of, given_options, to_options
from llm_pipeline.tokenize.shards import ShardConfig
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.model_config import ModelConfig, preset_config

LAUNCHPAD = [
    (CorpusConfig, RawCorpusConfig),
    (FilterConfig, RawCorpusConfig),
    (ShardConfig, TokenizedShardsConfig),
    (TrainConfig, TrainedCheckpointConfig),
    (LaunchConfig, TrainedCheckpointConfig),
    (EvalConfig, EvalMetricsConfig),
]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("library, launchpad", LAUNCHPAD, ids=lambda c: c.__name__)
def test_every_library_setting_is_in_the_launchpad_with_its_default_and_description(library, launchpad):
    filled = FILLED_BY_THE_ASSET.get(library, set())
    assert filled <= set(library.model_fields), f"FILLED_BY_THE_ASSET names fields {library.__name__} does not have"
    for name, field in library.model_fields.items():
        if name in filled:
            continue
        assert name in launchpad.model_fields, f"{library.__name__}.{name} is missing from {launchpad.__name__}"
        theirs = launchpad.model_fields[name]
        assert _plain(default_of(library, name)) == theirs.get_default(call_default_factory=True), f"{name}: defaults differ"
        assert theirs.description and theirs.description == field.description, f"{name}: no description, or a different one"


def test_a_launchpad_class_that_drifts_from_the_library_fails_by_name():
    fields = {name: (field.annotation, launchpad(ShardConfig, name)) for name, field in TokenizedShardsConfig.model_fields.items()}
    check_launchpad(create_model("Same", __base__=dg.Config, **fields), ShardConfig)  # what the module does
    missing = {name: f for name, f in fields.items() if name != "tokens_per_shard"}
    with pytest.raises(TypeError, match="must declare tokens_per_shard = launchpad"):
        check_launchpad(create_model("Missing", __base__=dg.Config, **missing), ShardConfig)
    retyped = {**fields, "val_fraction": (int, launchpad(ShardConfig, "val_fraction"))}
    with pytest.raises(TypeError, match="val_fraction is <class 'int'>; ShardConfig.val_fraction shows as <class 'float'>"):
        check_launchpad(create_model("Retyped", __base__=dg.Config, **retyped), ShardConfig)
    redescribed = {**fields, "val_fraction": (float, Field(default=0.01, description="mine"))}
    with pytest.raises(TypeError, match="must declare val_fraction"):
        check_launchpad(create_model("Redescribed", __base__=dg.Config, **redescribed), ShardConfig)
    with pytest.raises(TypeError, match="'row_group_rows' is a field of both ShardConfig and CorpusConfig"):
        check_launchpad(TokenizedShardsConfig, ShardConfig, CorpusConfig)


def test_model_dimensions_override_the_preset_one_by_one():
    for name in set(ModelConfig.model_fields) - FILLED_BY_THE_ASSET[ModelConfig]:
        field = TrainedCheckpointConfig.model_fields[name]
        assert field.default is None and name in field.description
    cfg = TrainedCheckpointConfig(preset="tiny", rope_theta=500.0).build_model_config(512)
    assert (cfg.rope_theta, cfg.d_model) == (500.0, 64)


def test_the_launchpad_converts_to_the_library_configs_with_the_same_values():
    assert TrainedCheckpointConfig().to_library(("s",), "r", 4096, "") == TrainConfig(
        shards_uris=("s",), run_uri="r", model=ModelConfig(vocab_size=4096)
    )
    assert TrainedCheckpointConfig().launch_config() == LaunchConfig()
    assert EvalMetricsConfig().to_library() == EvalConfig()
    assert TokenizedShardsConfig(val_fraction=0.1).to_library() == ShardConfig(val_fraction=0.1)
    corpus = RawCorpusConfig(near_dedup=False, exclude=["a/*"]).to_library()
    assert corpus == CorpusConfig(filters=FilterConfig(near_dedup=False), exclude=("a/*",))


@pytest.mark.parametrize("cls", [LaunchConfig, CorpusConfig, FilterConfig, TrainConfig, EvalConfig, ShardConfig], ids=lambda c: c.__name__)
def test_a_command_line_has_every_option_and_the_model_s_defaults(cls):
    parser = argparse.ArgumentParser()
    names = add_options(parser, cls, skip=FILLED_BY_THE_ASSET.get(cls, ()))
    assert given_options(parser.parse_args([]), names) == {}  # nothing given: the model's own defaults apply
    help_text = parser.format_help()
    for name in names:
        assert f"--{name.replace('_', '-')}" in help_text


def test_the_worker_command_gives_every_node_node_0_s_launch_settings():
    from llm_pipeline.train.launch import worker_command

    head = LaunchConfig(launcher="deepspeed", nproc=4, nnodes=2, master_addr="10.0.0.1", master_port=29500, hostfile="/h")
    command = worker_command(head, "s3://b/run/train_config.json")
    assert command[:5] == ["python", "-m", "llm_pipeline.train.launch", "--config", "s3://b/run/train_config.json"]
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    names = add_options(parser, LaunchConfig)
    argv = [a.replace("<this node's rank>", "1") for a in command[3:]]
    assert LaunchConfig(**given_options(parser.parse_args(argv), names)) == head.replaced(node_rank=1)


def test_the_command_lines_parse_into_the_library_configs():
    from llm_pipeline.train.launch import main as launch_main

    with pytest.raises(SystemExit):  # argparse's usage error, naming the rule
        launch_main(["--config", "c.json", "--launcher", "none", "--nproc", "2"])
    args = corpus_parser().parse_args(["src", "--out", "o", "--no-near-dedup", "--exclude", "x/*", "--exclude", "y/*", "--min-chars", "3"])
    assert given_options(args, FilterConfig.model_fields) == {"near_dedup": False, "min_chars": 3}
    assert given_options(args, ["exclude"]) == {"exclude": ["x/*", "y/*"]}
    parser = argparse.ArgumentParser()
    names = add_options(parser, TrainConfig, only=["mixture"])
    mixture = given_options(parser.parse_args(["--mixture", "web-*=0.7", "--mixture", "code-*=0.3"]), names)["mixture"]
    assert TrainConfig(shards_uris=("a",), run_uri="r", model=preset_config("tiny", 512), mixture=mixture).mixture == {
        "web-*": 0.7,
        "code-*": 0.3,
    }
    assert to_options(TrainConfig(shards_uris=("a",), run_uri="r", model=preset_config("tiny", 512), mixture={"a*": 1.0}), names) == [
        "--mixture",
        "a*=1.0",
    ]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: LaunchConfig(nproc=0), "nproc must be > 0, got 0"),
        (lambda: LaunchConfig(launcher="mpi"), "launcher must be one of deepspeed, torchrun, ray, none, got 'mpi'"),
        (lambda: LaunchConfig(master_port=70000), "master_port must be <= 65535, got 70000"),
        (lambda: LaunchConfig(launcher="ray", nnodes=2, master_port=29500), "launcher 'ray' places its ranks itself: set num_workers"),
        (lambda: LaunchConfig(launcher="ray", num_workers=0), "num_workers must be > 0, got 0"),
        (lambda: CorpusConfig(executor="spark"), "executor must be one of local, ray, got 'spark'"),
        (lambda: CorpusConfig(text_field=""), "text_field is empty"),
        (lambda: CorpusConfig(format="xml"), "format must be one of auto, text, jsonl, parquet, got 'xml'"),
        (lambda: CorpusConfig(filters={"min_chars": -1}), "filters: min_chars must be >= 0, got -1"),
        (lambda: ShardConfig(val_fraction=1.0), r"val_fraction must be < 1.0, got 1.0"),
        (lambda: EvalConfig(temperature=math.nan), "temperature must be a finite number, got nan"),
        (lambda: EvalConfig(sed=1), "unknown EvalConfig field 'sed'"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field_and_the_value(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_settings_are_frozen_and_replaced_with_validation():
    cfg = ShardConfig()
    with pytest.raises(ValueError):
        cfg.val_fraction = 0.5
    assert cfg.replaced(val_fraction=0.5).val_fraction == 0.5
    with pytest.raises(ValueError, match="val_fraction must be > 0"):
        cfg.replaced(val_fraction=0.0)
