"""Our whole trainer next to bare PyTorch loops, same model, batch and thread count, in one run.

    python -m benchmarks.train_bench [--steps 60] [--preset demo]

Ours runs as users run it: launched by the `deepspeed` launcher, reading real shards through the
data loader, logging, and saving checkpoints every 20 steps. Baselines: a bare loop (world 1,
all cores) and DDP under torchrun (world 2, one core each) on synthetic batches, with the glibc
allocator settings our launcher sets on CPU (the headline: like for like, what the trainer itself
costs), and once as a user would start them. A step is compared with a step: ours is the summary's
steady_tokens_per_s (steps after the first, checkpoint saves left out), the baselines' time from
their second step too; the whole loop with its saves is printed beside it. Our runs also print
where a step's host time goes (the summary's step_host_ms).

Last line: `ours/bare same env = X.XXx, ZeRO-2/DDP same env = Y.YYx`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from llm_pipeline.corpus.build import CorpusConfig, build_corpus, iter_documents
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import tokenizer_hash, train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import CPU_ALLOCATOR_ENV, free_port, launch_command, launch_env
from llm_pipeline.train.model_config import preset_config

CORES = os.cpu_count() or 1


def ours(root: Storage, shards: Storage, vocab: int, args, stage: int, nproc: int, round_: int) -> dict:
    run = root.child(f"run-z{stage}-w{nproc}-{round_}")  # a run folder of its own: the same one would resume, finished
    cfg = TrainConfig(
        shards_uris=(shards.uri,),
        run_uri=run.uri,
        model=preset_config(args.preset, vocab),
        steps=args.steps,
        zero_stage=stage,
        dtype="fp32",
        checkpoint_every=20,
        log_every=10,
        micro_batch=16,
        seq_len=128,
    )
    run.write_bytes("train_config.json", cfg.to_json().encode())
    launch = LaunchConfig(launcher="deepspeed" if nproc > 1 else "none", nproc=nproc)
    env = {**os.environ, **launch_env(launch)}
    subprocess.run(launch_command(launch, run.full("train_config.json")), env=env, check=True, capture_output=True)
    return run.child("final").read_json("summary.json")


def bare(args, ddp: bool, allocator: bool = False) -> float:
    script = ["-m", "benchmarks.bare_train", "--preset", args.preset, "--steps", str(args.steps)]
    if ddp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), *script, "--ddp"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // 2))}
    else:
        cmd, env = [sys.executable, *script], {**os.environ, "OMP_NUM_THREADS": str(CORES)}
    if allocator:  # the glibc settings our launcher applies on CPU (llm_pipeline/train/launch.py)
        env.update(CPU_ALLOCATOR_ENV)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"]


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--preset", default="demo")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every like-for-like run, interleaved; medians compared")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Storage(tmp)
        build_corpus(CorpusConfig(), root.child("corpus"))
        texts = [t for b in iter_documents(root.child("corpus"), columns=("text",)) for t in b.column("text").to_pylist()]
        tok = train_bpe(iter(texts), 4096)
        shards = root.child("shards")
        write_shards(root.child("corpus"), shards, DocumentEncoder(tok, "tiktoken"), 4096, tokenizer_hash(tok.to_str()), ShardConfig())
        params = preset_config(args.preset, 4096).num_params()
        print(
            f"model: preset {args.preset}, {params / 1e6:.2f}M params; 16x128 tokens per rank per step, fp32, "
            f"{args.steps} steps (checkpoints every 20), {CORES} cores, {args.repeats} interleaved rounds (medians)"
        )
        # One machine's speed drifts by 10% from minute to minute: each round runs every configuration once,
        # so a ratio compares runs minutes apart at most.
        runs = {"bare": [], "ddp": [], "z2w1": [], "z2w2": [], "z3w2": []}
        for round_ in range(args.repeats):
            runs["bare"].append(bare(args, ddp=False, allocator=True))
            runs["z2w1"].append(ours(root, shards, 4096, args, 2, 1, round_))
            runs["ddp"].append(bare(args, ddp=True, allocator=True))
            runs["z2w2"].append(ours(root, shards, 4096, args, 2, 2, round_))
            runs["z3w2"].append(ours(root, shards, 4096, args, 3, 2, round_))
        plain_bare, plain_ddp = bare(args, ddp=False), bare(args, ddp=True)
        step = {k: _median([s["steady_tokens_per_s"] for s in runs[k]]) for k in ("z2w1", "z2w2", "z3w2")}
        loop = {k: _median([s["tokens_per_s"] for s in runs[k]]) for k in ("z2w1", "z2w2", "z3w2")}
        base = {k: _median(runs[k]) for k in ("bare", "ddp")}
        for name, rate in (
            ("bare loop, world 1 (+ our allocator env)", base["bare"]),
            ("DDP, world 2 (+ our allocator env)", base["ddp"]),
            ("bare loop as a user starts it", plain_bare),
            ("DDP as a user starts it", plain_ddp),
        ):
            print(f"{name:44s} {rate:9,.0f} tokens/s")
        for key, name in (("z2w1", "ours, ZeRO-2, world 1"), ("z2w2", "ours, ZeRO-2, world 2"), ("z3w2", "ours, ZeRO-3, world 2")):
            print(f"{name:44s} {step[key]:9,.0f} tokens/s a step ({loop[key]:,.0f} over the whole loop, checkpoint saves included)")
            phases = ", ".join(
                f"{phase} {_median([s['step_host_ms'][phase] for s in runs[key]]):.1f}" for phase in runs[key][0]["step_host_ms"]
            )
            print(f"{'':44s} host ms per step: {phases}")
        world1, zero2, zero3 = step["z2w1"] / base["bare"], step["z2w2"] / base["ddp"], step["z3w2"] / base["ddp"]
        print("like for like (a step against a baseline step, both with the allocator env our launcher sets):")
        print(f"  ours/bare, world 1    = {world1:.3f}x (target >= 0.97); whole loop with saves {loop['z2w1'] / base['bare']:.3f}x")
        print(f"  ZeRO-2/DDP, world 2   = {zero2:.3f}x (target >= 0.97); whole loop with saves {loop['z2w2'] / base['ddp']:.3f}x")
        print(f"  ZeRO-3/DDP, world 2   = {zero3:.3f}x (target >= 0.90); whole loop with saves {loop['z3w2'] / base['ddp']:.3f}x")
        print(
            "against the baselines as a user starts them (no allocator env): "
            f"ours/bare {step['z2w1'] / plain_bare:.3f}x, ZeRO-2/DDP {step['z2w2'] / plain_ddp:.3f}x, ZeRO-3/DDP {step['z3w2'] / plain_ddp:.3f}x"
        )
        print(f"ours/bare same env = {world1:.2f}x, ZeRO-2/DDP same env = {zero2:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
