"""The memory-mapped token store: the same tokens as the Parquet shards, verified once per node,
refused by name when tampered or out of range, copied and evicted for remote roots."""

import os

import numpy as np
import pytest

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.data import ShardError
from llm_pipeline.train.token_store import TokenCache, TokenStream, open_split
from llm_pipeline_tests.helpers import load_tokens, make_shards, single_source, upload_dir


@pytest.fixture()
def shards(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    return shards, manifest


def test_the_flat_split_holds_the_parquet_tokens(tmp_path, shards):
    folder, manifest = shards
    for split in ("train", "val"):
        mapped, _ = open_split([folder], split, TokenCache(str(tmp_path / "cache"), 100 << 30))
        parquet, _ = load_tokens([folder], split)
        assert np.array_equal(mapped[np.arange(len(mapped))], parquet)
        ends = np.frombuffer(folder.read_bytes(f"{split}.docs"), dtype="<u8")
        assert ends[-1] == len(parquet) and len(ends) == manifest["splits"][split]["documents"]
        assert isinstance(mapped.arrays[0], np.memmap)


def test_windows_from_the_map_equal_windows_from_memory(tmp_path, shards):
    folder, _ = shards
    mapped, _ = open_split([folder, folder], "train", TokenCache(str(tmp_path / "cache"), 100 << 30))  # two sets: gathers cross a border
    memory = np.concatenate([load_tokens([folder], "train")[0]] * 2)
    a, b = single_source(mapped, 32, 4, seed=3), single_source(memory, 32, 4, seed=3)
    for step in range(0, 40, 7):
        assert all(np.array_equal(x, y) for x, y in zip(a.at(step * 4), b.at(step * 4)))


def test_a_tampered_flat_file_is_refused_and_verified_again_after_a_change(tmp_path, shards):
    folder, _ = shards
    cache = str(tmp_path / "cache")
    open_split([folder], "train", TokenCache(cache, 100 << 30))
    path = folder.full("train.tokens")
    data = bytearray(open(path, "rb").read())
    data[10] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(ShardError, match="train.tokens does not match its sha256"):
        open_split([folder], "train", TokenCache(cache, 100 << 30))


def test_ids_outside_the_vocabulary_are_refused(tmp_path, shards):
    folder, manifest = shards
    with pytest.raises(ShardError, match="outside the vocabulary of 100"):
        open_split([folder], "train", TokenCache(str(tmp_path / "cache"), 100 << 30), vocab_size=100)


def test_shards_without_flat_files_are_converted_once(tmp_path, shards):
    folder, manifest = shards
    del manifest["flat"]
    folder.write_json("manifest.json", manifest)
    cache = tmp_path / "cache"
    mapped, _ = open_split([folder], "train", TokenCache(str(cache), 100 << 30))
    assert np.array_equal(mapped[np.arange(len(mapped))], load_tokens([folder], "train")[0])
    assert len([n for n in os.listdir(cache) if n.endswith(".converted.tokens")]) == 1


def test_remote_roots_are_copied_into_the_node_cache_within_its_limit(tmp_path, shards, s3_endpoint):
    folder, manifest = shards
    remote = Storage(f"s3://llm-pipeline-test/token-store-{tmp_path.name}", client_kwargs={"endpoint_url": s3_endpoint})
    upload_dir(remote, folder.local_path())
    cache = tmp_path / "cache"
    mapped, _ = open_split([remote], "train", TokenCache(str(cache), 100 << 30))
    assert np.array_equal(mapped[np.arange(len(mapped))], load_tokens([folder], "train")[0])
    size = manifest["flat"]["train"]["tokens"]["bytes"]
    with pytest.raises(ShardError, match="does not fit the node token cache"):
        open_split([remote], "val", TokenCache(str(cache), manifest["flat"]["val"]["tokens"]["bytes"] - 1))
    open_split([remote], "val", TokenCache(str(cache), size))  # train's copy is evicted to make room
    assert [n for n in os.listdir(cache) if n.endswith(".tokens")] == [f"{manifest['flat']['val']['tokens']['sha256']}.tokens"]


def test_token_stream_gathers_across_arrays():
    stream = TokenStream([np.arange(5, dtype=np.uint16), np.array([50, 60, 70], dtype=np.uint16)])
    assert len(stream) == 8
    assert stream[np.array([[3, 4, 5], [6, 7, 0]])].tolist() == [[3, 4, 50], [60, 70, 0]]
    assert stream[2:6].tolist() == [2, 3, 4, 50]


@pytest.mark.e2e
def test_a_ranks_memory_stays_flat_when_the_training_tokens_grow_tenfold(tmp_path):
    """The trainer in its own process (world 1) on 2M and 20M synthetic tokens: its peak RSS grows by
    far less than the 36 MB the extra tokens take as uint16 (an in-memory split would grow by more)."""
    import subprocess

    from benchmarks.loader_bench import synthetic_shards
    from llm_pipeline.train.config import LaunchConfig, TrainConfig
    from llm_pipeline.train.launch import launch_command, launch_env
    from llm_pipeline.train.model_config import preset_config

    root, peaks = Storage(str(tmp_path)), {}
    for tokens in (2_000_000, 20_000_000):
        shards, run = root.child(f"shards-{tokens}"), root.child(f"run-{tokens}")
        synthetic_shards(shards, tokens, seed=1)
        cfg = TrainConfig(
            shards_uris=(shards.uri,),
            run_uri=run.uri,
            model=preset_config("tiny", 4096),
            steps=3,
            warmup_steps=1,
            seq_len=64,
            micro_batch=4,
            dtype="fp32",
            checkpoint_every=3,
            token_cache=str(tmp_path / "cache"),
        )
        run.write_bytes("train_config.json", cfg.to_json().encode())
        launch = LaunchConfig(launcher="none", nproc=1)
        subprocess.run(
            launch_command(launch, run.full("train_config.json")),
            env={**os.environ, **launch_env(launch)},
            check=True,
            capture_output=True,
            timeout=300,
        )
        [peaks[tokens]] = run.child("final").read_json("summary.json")["peak_rss_bytes_per_rank"]
    assert peaks[20_000_000] - peaks[2_000_000] < 18 * 2**20, peaks
