"""The training data beyond RAM: a rank's memory with 10x the tokens.

    python -m benchmarks.loader_bench [--tokens 50000000]

Writes synthetic token shards of N and 10N tokens (uniform ids below 4,096, documents of 1,000
tokens, 1% held out) through the project's own shard writer (Parquet shards plus the flat files
the trainer maps), then runs the real trainer on each as users run it: the `deepspeed` launcher,
world size 2, the tiny preset, 6 steps. Each rank's peak RSS comes from the trainer's summary.
The loader's gather (the memory-mapped 10N split) is timed against a training step.
The last line: `rank peak RSS ratio 10x tokens = X.XXx` (target <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

import numpy as np

from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.shards import ShardConfig, write_token_documents
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.data import DataMixture, MicroBatches, TokenWindows
from llm_pipeline.train.launch import launch_command, launch_env
from llm_pipeline.train.model_config import preset_config
from llm_pipeline.train.token_store import TokenCache, open_split

VOCAB, DOC = 4096, 1000


def synthetic_shards(out: Storage, tokens: int, seed: int) -> None:
    rng = np.random.default_rng(seed)

    def documents():
        for i in range(tokens // DOC):
            yield ("val" if i % 100 == 0 else "train"), rng.integers(0, VOCAB - 1, DOC - 1, dtype=np.uint16), 4 * DOC

    write_token_documents(out, documents(), VOCAB, VOCAB - 1, "synthetic", ShardConfig(tokens_per_shard=50_000_000), "synthetic")


def train(root: Storage, shards: Storage, cache: str, name: str) -> dict:
    run = root.child(f"run-{name}")
    cfg = TrainConfig(
        shards_uris=(shards.uri,),
        run_uri=run.uri,
        model=preset_config("tiny", VOCAB),
        steps=6,
        warmup_steps=1,
        seq_len=128,
        micro_batch=8,
        zero_stage=2,
        dtype="fp32",
        checkpoint_every=6,
        log_every=6,
        token_cache=cache,
    )
    run.write_bytes("train_config.json", cfg.to_json().encode())
    launch = LaunchConfig(launcher="deepspeed", nproc=2)
    subprocess.run(
        launch_command(launch, run.full("train_config.json")), env={**os.environ, **launch_env(launch)}, check=True, capture_output=True
    )
    return run.child("final").read_json("summary.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=50_000_000, help="N; the second run has 10N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Storage(tmp), os.path.join(tmp, "node-cache")
        peaks, summaries = {}, {}
        for name, tokens in (("N", args.tokens), ("10N", 10 * args.tokens)):
            started = time.perf_counter()
            synthetic_shards(root.child(f"shards-{name}"), tokens, seed=len(name))
            print(f"{name}: {tokens:,} tokens written in {time.perf_counter() - started:.0f} s", flush=True)
            summaries[name] = train(root, root.child(f"shards-{name}"), cache, name)
            peaks[name] = summaries[name]["peak_rss_bytes_per_rank"]
            print(f"{name}: peak RSS per rank " + ", ".join(f"rank {r} {b / 2**20:,.0f} MB" for r, b in enumerate(peaks[name])), flush=True)

        stream, _ = open_split([root.child("shards-10N")], "train", TokenCache(cache, 100 << 30))
        loader = MicroBatches(DataMixture([TokenWindows(stream, 128, 0)], [1.0], 0), 8, rank=0, world_size=2)
        started = time.perf_counter()
        for step in range(500):
            loader.at(step * loader.samples_per_micro_step)
        gather_s = (time.perf_counter() - started) / 500
        step_s = summaries["10N"]["train_loop_s"] / summaries["10N"]["steps"]
        print(
            f"loader: {gather_s * 1e6:,.0f} us per micro-batch from the 10N map; a training step {step_s * 1e3:,.0f} ms: "
            f"{step_s / gather_s:,.0f}x"
        )
        print(f"rank peak RSS ratio 10x tokens = {max(peaks['10N']) / max(peaks['N']):.2f}x")


if __name__ == "__main__":
    main()
