"""Our whole trainer next to bare PyTorch loops, same model, batch and thread count, in one run.

    python -m benchmarks.train_bench [--steps 60] [--preset demo]

Ours runs as users run it: launched by the `deepspeed` launcher, reading real shards through the
data loader, logging, and saving checkpoints every 20 steps. Baselines: a bare loop (world 1,
all cores) and DDP under torchrun (world 2, one core each) on synthetic batches, each run twice:
as a user would start it, and with the glibc allocator settings our launcher sets on CPU, so
the ratios show what the trainer itself costs apart from that setting.
"""

from __future__ import annotations

import argparse
import json
import os
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
from llm_pipeline.train.model import preset_config

CORES = os.cpu_count() or 1


def ours(root: Storage, shards: Storage, vocab: int, args, stage: int, nproc: int) -> float:
    run = root.child(f"run-z{stage}-w{nproc}")
    cfg = TrainConfig(shards_uris=(shards.uri,), run_uri=run.uri, model=preset_config(args.preset, vocab), steps=args.steps,
                      zero_stage=stage, dtype="fp32", checkpoint_every=20, log_every=10, micro_batch=16, seq_len=128)
    run.write_bytes("train_config.json", cfg.to_json().encode())
    launch = LaunchConfig(launcher="deepspeed" if nproc > 1 else "none", nproc=nproc)
    env = {**os.environ, **launch_env(launch)}
    subprocess.run(launch_command(launch, run.full("train_config.json")), env=env, check=True, capture_output=True)
    return run.child("final").read_json("summary.json")["tokens_per_s"]


def bare(args, ddp: bool, allocator: bool = False) -> float:
    script = ["-m", "benchmarks.bare_train", "--preset", args.preset, "--steps", str(args.steps)]
    if ddp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               *script, "--ddp"]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // 2))}
    else:
        cmd, env = [sys.executable, *script], {**os.environ, "OMP_NUM_THREADS": str(CORES)}
    if allocator:  # the glibc settings our launcher applies on CPU (llm_pipeline/train/launch.py)
        env.update(CPU_ALLOCATOR_ENV)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["tokens_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--preset", default="demo")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Storage(tmp)
        build_corpus(CorpusConfig(), root.child("corpus"))
        texts = [t for b in iter_documents(root.child("corpus"), columns=("text",)) for t in b.column("text").to_pylist()]
        tok = train_bpe(iter(texts), 4096)
        write_shards(root.child("corpus"), root.child("shards"), DocumentEncoder(tok, "tiktoken"), 4096,
                     tokenizer_hash(tok.to_str()), ShardConfig())
        params = preset_config(args.preset, 4096).num_params()
        print(f"model: preset {args.preset}, {params / 1e6:.2f}M params; 16x128 tokens per rank per step, fp32, "
              f"{args.steps} steps, {CORES} cores")
        rows = {
            "bare PyTorch loop, world 1": bare(args, ddp=False),
            "bare loop + our allocator env": bare(args, ddp=False, allocator=True),
            "ours, ZeRO-2, world 1": ours(root, root.child("shards"), 4096, args, 2, 1),
            "DDP (torchrun), world 2": bare(args, ddp=True),
            "DDP + our allocator env": bare(args, ddp=True, allocator=True),
            "ours, ZeRO-2, world 2": ours(root, root.child("shards"), 4096, args, 2, 2),
            "ours, ZeRO-3, world 2": ours(root, root.child("shards"), 4096, args, 3, 2),
        }
        for name, rate in rows.items():
            print(f"{name:32s} {rate:9,.0f} tokens/s")
        r = rows
        print(f"ours/bare at world 1      = {r['ours, ZeRO-2, world 1'] / r['bare PyTorch loop, world 1']:.3f}x (target >= 0.95); "
              f"vs bare with the same allocator env {r['ours, ZeRO-2, world 1'] / r['bare loop + our allocator env']:.3f}x")
        print(f"ours ZeRO-2/DDP, world 2  = {r['ours, ZeRO-2, world 2'] / r['DDP (torchrun), world 2']:.3f}x (target >= 0.95); "
              f"vs DDP with the same allocator env {r['ours, ZeRO-2, world 2'] / r['DDP + our allocator env']:.3f}x")
        print(f"ours ZeRO-3/DDP, world 2  = {r['ours, ZeRO-3, world 2'] / r['DDP (torchrun), world 2']:.3f}x; "
              f"vs DDP with the same allocator env {r['ours, ZeRO-3, world 2'] / r['DDP + our allocator env']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
