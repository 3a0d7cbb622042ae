"""GPU check: our whole trainer on one GPU, bf16, ZeRO-2, the ~125M preset. Prints tokens/s and MFU.

    python -m benchmarks.gpu_check            # on a machine with a CUDA GPU, under 5 minutes
    python -m benchmarks.gpu_check --smoke    # the same path on the CPU, tiny model, to test the script

On the GPU the trainer runs as configured for speed: `compile: true` (torch.compile through
DeepSpeed's engine.compile), fused AdamW, bf16, and flash attention through PyTorch's SDPA (the
summary says whether flash ran, or why not). `--no-compile` measures the eager model.

Data is the built-in default corpus (the Python standard library), tokenized here: nothing is
downloaded. MFU = FLOPs/token (6N + attention, PaLM accounting) x tokens/s / the GPU's dense
bf16 peak (llm_pipeline/train/mfu.py). Target: MFU >= 45%.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.builtin_shards import builtin_shards
from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.hardware import on_gpu
from llm_pipeline.train.launch import launch_command, launch_env
from llm_pipeline.train.model_config import preset_config

VOCAB = 8192


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="run on the CPU with a tiny model (tests the script, measures nothing)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--no-compile", action="store_true", help="the eager model (no torch.compile)")
    args = p.parse_args()
    if not args.smoke and not on_gpu():
        print("no CUDA GPU here: run this on a GPU machine, or with --smoke to test the script on the CPU", file=sys.stderr)
        return 2
    preset, dtype, seq_len, steps = (
        ("tiny", "fp32", 128, args.steps or 4) if args.smoke else ("125m", "bf16", args.seq_len, args.steps or 120)
    )
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Storage(tmp)
        builtin_shards(root, VOCAB)
        print(f"data ready in {time.time() - t0:.0f}s", flush=True)
        run = root.child("run")
        cfg = TrainConfig(
            shards_uris=(root.child("shards").uri,),
            run_uri=run.uri,
            model=preset_config(preset, VOCAB, max_seq_len=seq_len),
            seq_len=seq_len,
            micro_batch=args.micro_batch,
            steps=steps,
            warmup_steps=min(10, steps),
            lr=6e-4,
            zero_stage=2,
            dtype=dtype,
            checkpoint_every=10**6,
            log_every=max(1, steps // 6),
            compile=not (args.smoke or args.no_compile),
        )
        run.write_bytes("train_config.json", cfg.to_json().encode())
        launch = LaunchConfig(launcher="deepspeed" if not args.smoke else "none", nproc=1)
        proc = subprocess.run(
            launch_command(launch, run.full("train_config.json")),
            env={**os.environ, **launch_env(launch)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        progress = [line for line in proc.stdout.splitlines() if line.startswith(("training ", "step ", "finished"))]
        print("\n".join(progress))
        if proc.returncode or not run.child("final").exists("summary.json"):
            print(proc.stdout[-5000:], file=sys.stderr)
            return 1
        s = run.child("final").read_json("summary.json")
    mfu = f"{s['mfu']:.1%}" if s["mfu"] is not None else "n/a (CPU or unknown GPU peak)"
    print(
        f"device {s['accelerator']}, preset {preset} ({s['num_params'] / 1e6:.1f}M params), {dtype}, ZeRO-{s['zero_stage']}, "
        f"{args.micro_batch}x{seq_len} tokens/step, {steps} steps, compiled {s['compiled']}, attention {s['attention']}"
    )
    print(
        f"tokens/s {s['steady_tokens_per_s'] or s['tokens_per_s']:,.0f} (after the first step)   MFU {mfu}   (target >= 45%)   "
        f"total {time.time() - t0:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
