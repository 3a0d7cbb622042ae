"""Evaluation at inference speed: held-out tokens/s of eval_metrics' scoring next to the training tokens/s
of the same model on the same machine.

    python -m benchmarks.eval_bench [--steps 180]

Data: the built-in default corpus (the Python standard library), tokenized here with a 4,096-id BPE, as
`make demo` does. Training: the real trainer as the demo launches it (the `deepspeed` launcher, world
size 2, the demo preset, the default settings: seq 128, micro-batch 16, ZeRO-2, dtype auto, 180
steps, validating every 30 steps on 8,192 tokens), its tokens/s from the summary (the training loop
only, after the first step), and the share of the loop's host time its validations took (the
summary's step_host_ms): `validation during training = X.X% of training time` (target <= 5%).
Evaluation: the trained
model scoring every held-out document the way eval_metrics does (`held_out_loss`: rolling windows of
the model's context, forward only), timed in this process, for each evaluation dtype; the fp32 and
bf16 numbers are printed side by side so the precision cost is visible.
The last line: `eval tokens/s = X (dtype), training tokens/s = Y: Z.ZZx` (target >= 3x).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from tokenizers import Tokenizer

from benchmarks.builtin_shards import builtin_shards
from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.evaluate.metrics import held_out_documents, held_out_loss
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import EOS_TOKEN
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.launch import launch_command, launch_env
from llm_pipeline.train.model_config import preset_config
from llm_pipeline.train.summary import TrainSummary
from llm_pipeline.train.token_store import TokenCache, open_split
from llm_pipeline.train.weights import load_trained_model

VOCAB = 4096


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=180, help="training steps timed (the demo's: 180)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Storage(tmp)
        tokenizer = builtin_shards(root, VOCAB)
        root.child("tokenizer").write_bytes("tokenizer.json", tokenizer.to_str().encode())  # the validation's bits per byte
        run = root.child("run")
        cfg = TrainConfig(
            shards_uris=(root.child("shards").uri,),
            run_uri=run.uri,
            model=preset_config("demo", VOCAB),
            steps=args.steps,
            token_cache=os.path.join(tmp, "cache"),
            tokenizer_uri=root.child("tokenizer").uri,
        )
        run.write_bytes("train_config.json", cfg.to_json().encode())
        launch = LaunchConfig(launcher="deepspeed", nproc=2)
        done = subprocess.run(
            launch_command(launch, run.full("train_config.json")), env={**os.environ, **launch_env(launch)}, capture_output=True, text=True
        )
        if done.returncode or not run.child("final").exists("summary.json"):
            print((done.stdout + done.stderr)[-5000:], file=sys.stderr)
            return 1
        summary = TrainSummary.read(run.child("final"))
        train_rate = summary.tokens_per_s
        print(
            f"training: {train_rate:,.0f} tokens/s ({summary.num_params / 1e6:.1f}M params, world {summary.world_size}, "
            f"{summary.dtype}, ZeRO-{summary.zero_stage}, {args.steps} steps)"
        )
        phases = summary.step_host_ms
        print(
            f"validations: {len(summary.validations)} ("
            + ", ".join(f"step {step} loss {loss:.4f}" for step, loss, _ in summary.validations)
            + f"), {phases.get('validation', 0.0):.1f} of {sum(phases.values()):.1f} host ms a step"
        )
        print(f"validation during training = {100 * phases.get('validation', 0.0) / sum(phases.values()):.1f}% of training time")

        val, _ = open_split([root.child("shards")], "val", TokenCache(os.path.join(tmp, "cache"), 100 << 30))
        held_out = held_out_documents(val, tokenizer.token_to_id(EOS_TOKEN), Tokenizer.from_str(tokenizer.to_str()))
        rates = {}
        for dtype in ("fp32", "bf16"):
            model = load_trained_model(run.child("final"), dtype)
            started = time.perf_counter()
            metrics = held_out_loss(model, held_out, tokenizer.token_to_id(EOS_TOKEN), EvalConfig(dtype=dtype))
            seconds = time.perf_counter() - started
            rates[dtype] = metrics.tokens_evaluated / seconds
            print(
                f"evaluation {dtype}: {metrics.tokens_evaluated:,} held-out tokens in {seconds:.1f} s, {rates[dtype]:,.0f} tokens/s, "
                f"loss {metrics.loss:.6f}, bits per byte {metrics.bits_per_byte:.6f}"
            )
        chosen = EvalConfig().resolved_dtype()
        print(
            f"eval tokens/s = {rates[chosen]:,.0f} ({chosen}, the default here), training tokens/s = {train_rate:,.0f}: "
            f"{rates[chosen] / train_rate:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
