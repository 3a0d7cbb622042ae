"""Dedup at scale: a small batch's cost against 10x the history, and one build's memory at 10x the documents.

    python -m benchmarks.dedup_scale [--n 500000] [--batch 1000] [--rounds 3] [--keep DIR]

Synthetic distinct documents (60-140 words drawn from a 20,000-word vocabulary) in `.jsonl.gz`
shards, made by this script. Each leg is one `build_corpus` in a fresh process, which reports its
build time and the peak RSS of any one of its processes (the build's own, or a cleaning worker's):

    (a) a batch of --batch new documents against the corpus of N earlier documents, and of 10N
        (the two builds of (b)), in interleaved rounds; the median of each
    (b) one build of N documents, and one of 10N

The last line is read by scripts:
    dedup at 10x history: batch time = X.XXx, peak RSS = Y.YYx; one build at 10x documents: peak RSS = Z.ZZx
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCABULARY = 20_000


def make_documents(folder: Path, count: int, seed: int, shards: int) -> int:
    """`count` distinct documents dealt round-robin into `shards` gzip files; returns the bytes of text.
    A folder made before (with --keep) is used again."""
    done = folder / ".made"
    if done.exists():
        return int(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(VOCABULARY)], dtype=object)
    files = [gzip.open(folder / f"part-{i:05d}.jsonl.gz", "wt", compresslevel=1) for i in range(shards)]
    text_bytes = 0
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        lengths = rng.integers(60, 141, size=n)
        words = vocab[rng.integers(0, VOCABULARY, size=int(lengths.sum()))].tolist()
        ends = np.cumsum(lengths).tolist()
        begin = 0
        for i, end in enumerate(ends):
            text = " ".join(words[begin:end])
            begin = end
            text_bytes += len(text)
            files[(start + i) % shards].write(json.dumps({"text": text}) + "\n")
    for f in files:
        f.close()
    done.write_text(str(text_bytes))
    return text_bytes


def leg(src: str, out: str, earlier: list[str]) -> dict:
    """One build in a fresh process: {seconds, rss_mb, documents, lookup_seconds}."""
    code = (
        "import json, resource, sys, time\n"
        "from llm_pipeline.corpus.build import BuildStats, CorpusConfig, build_corpus\n"
        "from llm_pipeline.storage.folders import Storage\n"
        "src, out, earlier = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
        "stats = BuildStats()\n"
        "start = time.perf_counter()\n"
        "manifest = build_corpus(CorpusConfig(source_uri=src), Storage(out), earlier=[(u, Storage(u)) for u in earlier], stats=stats)\n"
        "seconds = time.perf_counter() - start\n"
        "own, workers = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'seconds': seconds, 'rss_mb': max(own, workers) / 1024, 'build_rss_mb': own / 1024,\n"
        "                  'worker_rss_mb': workers / 1024, 'documents': manifest.documents,\n"
        "                  'lookup_seconds': stats.dedup_lookup_seconds, 'index_bytes': manifest.dedup_index.segment.bytes}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, src, out, json.dumps(earlier)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"build of {src} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000, help="N: documents of the smaller history and build (10N for the larger)")
    parser.add_argument("--batch", type=int, default=1000, help="documents of the small batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="keep the generated input and outputs in this folder (its input is used again)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="dedup-scale-"))
    started = time.perf_counter()
    sizes = {"N": args.n, "10N": 10 * args.n}
    text = {name: make_documents(work / f"src-{name}", count, seed, 16) for seed, (name, count) in enumerate(sizes.items())}
    make_documents(work / "src-batch", args.batch, 99, 1)
    print(
        f"input: {sizes['N']:,} documents ({text['N'] / 1e6:.0f} MB of text) and {sizes['10N']:,} ({text['10N'] / 1e6:.0f} MB); "
        f"made in {time.perf_counter() - started:.0f} s",
        flush=True,
    )

    builds = {}
    for name in sizes:
        shutil.rmtree(work / f"out-{name}", ignore_errors=True)
        builds[name] = leg(str(work / f"src-{name}"), str(work / f"out-{name}"), [])
        b = builds[name]
        print(
            f"(b) one build of {name:>3} = {sizes[name]:>9,} documents: {b['seconds']:7.1f} s, peak RSS {b['rss_mb']:6.0f} MB, "
            f"(the build's own {b['build_rss_mb']:.0f} MB, a cleaning worker's {b['worker_rss_mb']:.0f} MB), "
            f"index segment {b['index_bytes'] / 1e6:.0f} MB ({b['index_bytes'] / b['documents']:.0f} bytes per document)",
            flush=True,
        )

    batch = {"none": [], "N": [], "10N": []}
    for r in range(args.rounds):
        for name in batch:
            earlier = [] if name == "none" else [str(work / f"out-{name}")]
            out = work / f"batch-{name}-{r}"
            batch[name].append(leg(str(work / "src-batch"), str(out), earlier))
            shutil.rmtree(out)
    med = {
        name: {key: statistics.median(run[key] for run in runs) for key in ("seconds", "rss_mb", "lookup_seconds")}
        for name, runs in batch.items()
    }
    for name, m in med.items():
        against = "alone" if name == "none" else f"against {name} = {sizes[name]:,} earlier documents"
        print(
            f"(a) a batch of {args.batch:,} documents {against}: {m['seconds']:.3f} s (of it dedup lookups {m['lookup_seconds']:.3f} s), "
            f"peak RSS {m['rss_mb']:.0f} MB (median of {args.rounds})",
            flush=True,
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    time_ratio = med["10N"]["seconds"] / med["N"]["seconds"]
    rss_ratio = med["10N"]["rss_mb"] / med["N"]["rss_mb"]
    build_ratio = builds["10N"]["rss_mb"] / builds["N"]["rss_mb"]
    print(
        f"dedup at 10x history: batch time = {time_ratio:.2f}x, peak RSS = {rss_ratio:.2f}x; "
        f"one build at 10x documents: peak RSS = {build_ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
