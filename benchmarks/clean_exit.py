"""Every rank of a finished training exits 0: launch after launch of the real launcher, none aborting at exit.

    python -m benchmarks.clean_exit [--launches 200] [--launcher deepspeed] [--nproc 2] [--parallel 1]

A tiny model (2 layers, d_model 32) trains 2 steps on the built-in corpus's shards, on CPU with gloo,
world size --nproc; each launch is `python -m llm_pipeline.train.launch`, as `trained_checkpoint` runs
it, into a run folder of its own. A launch *aborted at exit* when its summary.json was written (the
run finished) and still its status is not 0; the output of every such launch is printed (the
signal, "terminate called ..."). A launch that did not finish is counted apart.

Last line: `launches aborted at exit = A of N (B did not finish)`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.builtin_shards import builtin_shards
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.model_config import ModelConfig

MODEL = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=32)


def launch(root: Storage, shards: Storage, i: int, launcher: str, nproc: int) -> tuple[int, bool, str]:
    run = root.child(f"run-{i:04}")
    cfg = TrainConfig(
        shards_uris=(shards.uri,),
        run_uri=run.uri,
        model=MODEL,
        seq_len=32,
        micro_batch=2,
        steps=2,
        warmup_steps=1,
        zero_stage=2,
        dtype="fp32",
        checkpoint_every=2,
        log_every=1,
    )
    run.write_bytes("train_config.json", cfg.to_json().encode())
    argv = [
        sys.executable,
        "-m",
        "llm_pipeline.train.launch",
        "--config",
        run.full("train_config.json"),
        "--launcher",
        launcher,
        "--nproc",
        str(nproc),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    return proc.returncode, run.child("final").exists("summary.json"), proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--launcher", default="deepspeed", choices=["deepspeed", "torchrun"])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1, help="launches at a time")
    args = parser.parse_args()
    LaunchConfig(launcher=args.launcher, nproc=args.nproc)  # refused here, by name, before any work
    with tempfile.TemporaryDirectory(prefix="clean-exit-") as tmp:
        root = Storage(tmp)
        builtin_shards(root, MODEL.vocab_size)
        start, aborted, unfinished = time.time(), 0, 0
        with ThreadPoolExecutor(args.parallel) as pool:
            results = pool.map(lambda i: launch(root, root.child("shards"), i, args.launcher, args.nproc), range(args.launches))
            for i, (status, finished, output) in enumerate(results, 1):
                if status != 0 and finished:
                    aborted += 1
                    print(f"launch {i}: finished, then exited {status}:\n{output[-3000:]}", flush=True)
                elif not finished:
                    unfinished += 1
                    print(f"launch {i}: did not finish (exit {status}):\n{output[-3000:]}", flush=True)
                if i % 20 == 0:
                    print(f"{i} launches, {aborted} aborted at exit, {unfinished} not finished, {time.time() - start:.0f} s", flush=True)
                if os.path.exists(root.child(f"run-{i - 1:04}").path):
                    subprocess.run(["rm", "-rf", root.child(f"run-{i - 1:04}").path], check=False)
    print(f"launches aborted at exit = {aborted} of {args.launches} ({unfinished} did not finish)")


if __name__ == "__main__":
    main()
