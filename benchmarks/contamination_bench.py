"""The contamination check at corpus scale: 13-grams of eval documents against N training tokens.

    python -m benchmarks.contamination_bench [--train-tokens 100000000]

Training tokens are synthetic (uniform over a 50,257-token vocabulary, GPT-2's size, as uint32),
streamed to the check in 10M-token pieces as shards would be; the eval side is 2,000 documents of
512 tokens, 20 of them copied from the training stream (the check must find exactly those). It
measures the check itself (evaluate/contamination.py), not the shard reads, which the trainer's
loader already does. Our own code only: no peer library does this over token ids.
The last line: `contamination check: N training tokens in X.X s (Y.Y M tokens/s), peak RSS Z.ZZ GB`.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from llm_pipeline.evaluate.contamination import contamination

VOCAB = 50_257
PIECE = 10_000_000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-tokens", type=int, default=100_000_000)
    parser.add_argument("--eval-docs", type=int, default=2000)
    parser.add_argument("--doc-tokens", type=int, default=512)
    parser.add_argument("--copied", type=int, default=20)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    pieces = [
        rng.integers(0, VOCAB, min(PIECE, args.train_tokens - start), dtype=np.uint32) for start in range(0, args.train_tokens, PIECE)
    ]
    docs = [rng.integers(0, VOCAB, args.doc_tokens, dtype=np.uint32) for _ in range(args.eval_docs - args.copied)]
    for i in range(args.copied):  # whole training documents, the last one across a piece border
        start = (i + 1) * (args.train_tokens // (args.copied + 1))
        if i == args.copied - 1 and len(pieces) > 1:
            start = PIECE - args.doc_tokens // 2
        piece = start // PIECE
        window = np.concatenate(pieces[piece : piece + 2])
        docs.append(window[start % PIECE : start % PIECE + args.doc_tokens].copy())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    started = time.perf_counter()
    report = contamination(iter(pieces), {"eval": docs})["eval"]
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"eval documents: {report.documents}, contaminated: {report.contaminated} (planted: {args.copied}), "
        f"sharing any 13-gram: {report.sharing}"
    )
    print(f"peak RSS before the check (the synthetic data itself): {rss_before:.2f} GB")
    assert report.contaminated == args.copied, report
    print(
        f"contamination check: {args.train_tokens:,} training tokens in {seconds:.1f} s "
        f"({args.train_tokens / seconds / 1e6:.1f} M tokens/s), peak RSS {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
