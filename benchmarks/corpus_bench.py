"""Corpus stage speed: ours next to datatrove, same input, same cores, same work, in one run.

    pip install -e ".[bench]"        # datatrove[processing], spacy (benchmark-only)
    python -m benchmarks.corpus_bench [--mb 220] [--shards 16] [--skip-spacy]

Input: --mb MB of uncompressed JSON Lines in --shards `.jsonl.gz` files, made here from the stdlib's
own words (Zipf-sampled, so documents are distinct prose-like text), with injected exact duplicates
(4%), near duplicates (4%: a few words changed), and junk (3%: too short, binary noise, broken JSON).

The work, for both: read the gzip JSON Lines, length filter (64..1M chars) and printable-fraction
filter (>= 0.95, the same function), exact dedup on the text, MinHash near dedup on word 5-grams with
64 permutations in 8 bands x 8 rows, write Parquet. datatrove runs its documented multi-stage pipeline
(signatures, buckets, clusters, filter: its dedup stages replay the reader) on LocalPipelineExecutor with
workers = cores. Its word split is reported twice: a whitespace tokenizer with text normalisation off
(like ours), and its default (spaCy, normalised text).

Also measured: the tokenization stage on our output (MB/s, the issue's "no slower per MB" target), the
MinHash engines on the same documents (ours with rensa, rensa on Python shingles, datasketch), and the
dedup index's bytes on storage per kept document.

The web leg: --web-mb MB of docstring prose (with duplicates, spam and junk) through our `web` preset,
and through datatrove's own modules for the same filters (language ID on the same lid.176 model, Gopher
repetition and quality, C4, FineWeb, PII) followed by the same dedup, as FineWeb ran them.

Last lines: `web preset: ours/datatrove = X.XXx`, then `ratio ours/datatrove = X.XXx` (against
datatrove with the whitespace tokenizer, like for like).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

from llm_pipeline.corpus.build import iter_documents
from llm_pipeline.corpus.cleaning.text import printable_fraction
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.corpus.near_dedup import document_signatures
from llm_pipeline.storage.folders import Storage

CORES = os.cpu_count() or 1
FILTERS = FilterConfig()


# --- input -------------------------------------------------------------------------------------


def _vocabulary() -> list[str]:
    words: dict[str, int] = {}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py"))[:300]:
        for word in path.read_text(encoding="utf-8", errors="replace").split():
            if word.isalpha() and len(word) < 16:
                words[word] = words.get(word, 0) + 1
    return [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))][:20000]


class _GzipShards:
    """JSON Lines records dealt round-robin into `shards` gzip files; counts records and bytes."""

    def __init__(self, folder: Path, prefix: str, shards: int):
        self.files = [gzip.open(folder / f"{prefix}-{i:05d}.jsonl.gz", "wb", compresslevel=1) for i in range(shards)]
        self.records = self.bytes = 0

    def write(self, line: bytes) -> None:
        self.files[self.records % len(self.files)].write(line + b"\n")
        self.bytes += len(line) + 1
        self.records += 1

    def close(self) -> dict:
        for f in self.files:
            f.close()
        return {"records": self.records, "bytes": self.bytes}


def make_input(folder: Path, total_mb: int, shards: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vocab = np.array(_vocabulary() + ["\n"] * 400, dtype=object)  # ~2% newlines: paragraphs
    ranks = np.arange(1, len(vocab) + 1)
    probs = (1.0 / ranks**1.05) / np.sum(1.0 / ranks**1.05)
    target = total_mb * 1_000_000
    docs, kinds = [], {"unique": 0, "exact_dup": 0, "near_dup": 0, "junk": 0}
    out = _GzipShards(folder, "part", shards)
    while out.bytes < target:
        roll = rng.random()
        if roll < 0.04 and docs:
            text = docs[rng.integers(len(docs))]
            kinds["exact_dup"] += 1
        elif roll < 0.08 and docs:
            words = docs[rng.integers(len(docs))].split(" ")
            for i in rng.integers(0, len(words), size=max(1, len(words) // 100)):
                words[i] = vocab[rng.integers(len(vocab) - 400)]
            text = " ".join(words)
            kinds["near_dup"] += 1
        elif roll < 0.11:
            kinds["junk"] += 1
            junk = rng.integers(3)
            line = (
                json.dumps({"text": "too short"})
                if junk == 0
                else json.dumps({"text": bytes(rng.integers(0, 32, 2000, dtype=np.uint8)).decode("latin-1")})
                if junk == 1
                else '{"text": "broken json'
            )
            out.write(line.encode())
            continue
        else:
            length = int(min(max(rng.lognormal(6.3, 0.8), 30), 20000))
            text = " ".join(rng.choice(vocab, size=length, p=probs))
            kinds["unique"] += 1
            if len(docs) < 5000:
                docs.append(text)
            elif rng.random() < 0.05:
                docs[rng.integers(len(docs))] = text
        out.write(json.dumps({"text": text, "id": f"doc-{out.records}"}).encode())
    return {**out.close(), **kinds}


# --- ours ----------------------------------------------------------------------------------------


def run_ours(src: Path, out: Path, preset: str = "auto") -> tuple[float, int, float]:
    """Our stage through its command line, in a child process: (seconds, kept, peak RSS MB of any one process)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_pipeline.corpus",
            str(src),
            "--out",
            str(out),
            "--glob",
            "*.jsonl.gz",
            "--workers",
            str(CORES),
            "--preset",
            preset,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # the CLI and its workers are the only children so far: the largest of them
    return seconds, summary["documents"], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# --- datatrove -----------------------------------------------------------------------------------


def _quality(doc) -> bool:  # the same filter as ours, as a datatrove LambdaFilter
    text = doc.text
    return FILTERS.min_chars <= len(text) <= FILTERS.max_chars and printable_fraction(text) >= FILTERS.min_printable_fraction


def make_web_input(folder: Path, total_mb: int, shards: int, seed: int = 0) -> dict:
    """Prose for the web leg: documents of 8-16 sentences from the standard library's docstrings in 2-4
    paragraphs, with 4% exact and 4% near duplicates, 3% spam (one line repeated), 3% too short."""
    from benchmarks.filter_conformance import stdlib_docstrings
    from llm_pipeline.corpus.cleaning.text import sentence_spans

    sentences = [
        " ".join(doc[a:b].split())
        for doc in stdlib_docstrings()
        for a, b in sentence_spans(doc)
        if 8 <= len(doc[a:b].split()) <= 40 and "{" not in doc[a:b] and doc[a:b].rstrip()[-1:] in ".!?"
    ]
    rng = np.random.default_rng(seed)
    target, docs = total_mb * 1_000_000, []
    kinds = {"unique": 0, "exact_dup": 0, "near_dup": 0, "spam": 0, "junk": 0}
    out = _GzipShards(folder, "web", shards)
    while out.bytes < target:
        roll = rng.random()
        if roll < 0.04 and docs:
            text, kind = docs[rng.integers(len(docs))], "exact_dup"
        elif roll < 0.08 and docs:
            words = docs[rng.integers(len(docs))].split(" ")
            words[rng.integers(len(words))] = "indeed"
            text, kind = " ".join(words), "near_dup"
        elif roll < 0.11:
            text, kind = "\n".join([sentences[rng.integers(len(sentences))]] * 12), "spam"
        elif roll < 0.14:
            text, kind = "too short", "junk"
        else:
            picked = [sentences[i] for i in rng.integers(0, len(sentences), size=rng.integers(8, 17))]
            cuts = sorted(rng.choice(np.arange(1, len(picked)), size=rng.integers(1, 4), replace=False))
            text = "\n\n".join(" ".join(part) for part in np.split(np.array(picked, dtype=object), cuts))
            kind = "unique"
            if len(docs) < 5000:
                docs.append(text)
        kinds[kind] += 1
        out.write(json.dumps({"text": text, "id": f"doc-{out.records}"}).encode())
    return {**out.close(), **kinds}


def _web_filters(words) -> list:
    """FineWeb's filters, as datatrove's own modules, with our settings' defaults."""
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.filters.language_filter import LanguageFilter
    from datatrove.pipeline.formatters import PIIFormatter

    from benchmarks.datatrove_words import LocalLid176

    language = LanguageFilter(languages=["en"], language_threshold=0.65)
    language.model = LocalLid176(["en"])
    return [
        language,
        GopherRepetitionFilter(language=words),
        GopherQualityFilter(language=words),
        C4QualityFilter(filter_no_terminal_punct=False, language=words),
        FineWebQualityFilter(language=words),
        PIIFormatter(),
    ]


def run_datatrove(src: Path, work: Path, shards: int, whitespace: bool, web: bool = False, glob: str = "*.jsonl.gz") -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.text import TextNormConfig

    from benchmarks.datatrove_words import WhitespaceTokenizer

    def text_of(doc) -> str:
        return doc.text

    norm = TextNormConfig(False, False, False, False, False) if whitespace else TextNormConfig()
    minhash = MinhashConfig(n_grams=5, num_buckets=8, hashes_per_bucket=8, norm_config=norm)
    exact = ExactDedupConfig(content_getter=text_of)
    words = WhitespaceTokenizer() if whitespace else "en"

    def executor(pipeline, tasks, name):
        return LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=min(CORES, tasks), logging_dir=str(work / "logs" / name), skip_completed=False
        )

    start = time.perf_counter()
    dedup_src = src
    if web:  # as FineWeb ran it: filter once, write, then deduplicate what the filters kept
        from datatrove.pipeline.writers import JsonlWriter

        executor(
            [
                JsonlReader(str(src), glob_pattern=glob, text_key="text"),
                LambdaFilter(_quality),
                *_web_filters(words),
                JsonlWriter(str(work / "filtered")),
            ],
            shards,
            "web-0",
        ).run()
        dedup_src = work / "filtered"

    def read():
        return [JsonlReader(str(dedup_src), glob_pattern="*.jsonl.gz", text_key="text"), LambdaFilter(_quality)]

    executor(read() + [ExactDedupSignature(str(work / "exact_sigs"), config=exact)], shards, "exact-1").run()
    executor([ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=exact)], 1, "exact-2").run()
    executor(
        read()
        + [
            ExactDedupFilter(str(work / "exact_dups"), config=exact),
            MinhashDedupSignature(str(work / "mh_sigs"), config=minhash, language=words),
        ],
        shards,
        "mh-1",
    ).run()
    executor([MinhashDedupBuckets(str(work / "mh_sigs"), str(work / "mh_buckets"), config=minhash)], minhash.num_buckets, "mh-2").run()
    executor([MinhashDedupCluster(str(work / "mh_buckets"), str(work / "mh_remove"), config=minhash)], 1, "mh-3").run()
    executor(
        read()
        + [
            ExactDedupFilter(str(work / "exact_dups"), config=exact),
            MinhashDedupFilter(str(work / "mh_remove")),
            ParquetWriter(str(work / "out")),
        ],
        shards,
        "mh-4",
    ).run()
    seconds = time.perf_counter() - start
    import pyarrow.parquet as pq

    kept = sum(pq.ParquetFile(p).metadata.num_rows for p in (work / "out").rglob("*.parquet"))
    return seconds, kept


# --- the other measurements --------------------------------------------------------------------


def tokenization_rate(corpus: Storage, work: Path) -> float:
    """The tokenized_shards stage on our output: MB of document text per second."""
    from llm_pipeline.tokenize.bpe import tokenizer_hash, train_bpe
    from llm_pipeline.tokenize.encoder import DocumentEncoder
    from llm_pipeline.tokenize.shards import ShardConfig, write_shards

    sample = []
    for batch in iter_documents(corpus, columns=("text",)):
        sample.extend(batch.column("text").to_pylist())
        if len(sample) > 2000:
            break
    tok = train_bpe(iter(sample), 8192)
    text_bytes = corpus.read_json("manifest.json")["text_bytes"]
    start = time.perf_counter()
    write_shards(
        corpus,
        Storage(str(work / "shards")),
        DocumentEncoder(tok, "tiktoken"),
        tok.get_vocab_size(),
        tokenizer_hash(tok.to_str()),
        ShardConfig(),
    )
    return text_bytes / 1e6 / (time.perf_counter() - start)


def minhash_engines(corpus: Storage) -> dict[str, float]:
    """MB/s on one core for signatures of the same documents (word 5-grams, 64 permutations)."""
    from datasketch import MinHash
    from rensa import RMinHash

    texts = []
    for batch in iter_documents(corpus, columns=("text",)):
        texts.extend(batch.column("text").to_pylist())
        if len(texts) >= 3000:
            break
    mb = sum(len(t.encode()) for t in texts) / 1e6

    def shingles(text):
        w = text.split()
        return [" ".join(w[i : i + 5]) for i in range(max(1, len(w) - 4))]

    def timed(fn, subset):
        start = time.perf_counter()
        fn(subset)
        return sum(len(t.encode()) for t in subset) / 1e6 / (time.perf_counter() - start)

    def rensa_strings(subset):
        for t in subset:
            m = RMinHash(num_perm=64, seed=1)
            m.update(shingles(t))
            m.digest()

    def datasketch(subset):
        for t in subset:
            m = MinHash(num_perm=64, seed=1)
            m.update_batch([s.encode() for s in shingles(t)])
            m.digest()

    return {
        "ours (numpy shingles + rensa signatures)": timed(document_signatures, texts),
        "rensa on Python shingle strings": timed(rensa_strings, texts),
        "datasketch on Python shingle strings": timed(datasketch, texts[:500]),
        "_mb": mb,
    }


def index_bytes_per_document(corpus: Storage) -> float:
    segment = corpus.read_json("manifest.json")["dedup_index"]["segment"]
    return segment["bytes"] / max(segment["documents"], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=220, help="MB of uncompressed JSON Lines (>= 200 for the issue's target)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--web-mb", type=int, default=60, help="MB of uncompressed JSON Lines prose for the web preset's leg")
    parser.add_argument("--skip-spacy", action="store_true", help="skip datatrove with its default spaCy word tokenizer")
    parser.add_argument("--keep", help="keep the generated input and outputs in this folder")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="corpus-bench-"))
    src = work / "input"
    src.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    made = make_input(src, args.mb, args.shards)
    gz_mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6
    mb = made["bytes"] / 1e6
    print(
        f"input: {mb:.1f} MB of JSON Lines ({gz_mb:.1f} MB gzip) in {args.shards} shards, {made['records']} records "
        f"({made['exact_dup']} exact dups, {made['near_dup']} near dups, {made['junk']} junk), made in "
        f"{time.perf_counter() - start:.0f} s; {CORES} cores",
        flush=True,
    )

    ours_s, ours_kept, ours_rss = run_ours(src, work / "ours")
    print(
        f"ours:                        {mb / ours_s:6.1f} MB/s  {ours_s:6.1f} s  kept {ours_kept}  "
        f"(peak RSS of any one process: {ours_rss:.0f} MB)",
        flush=True,
    )
    dt_s, dt_kept = run_datatrove(src, work / "dt-whitespace", args.shards, whitespace=True)
    print(f"datatrove (whitespace words): {mb / dt_s:6.1f} MB/s  {dt_s:6.1f} s  kept {dt_kept}", flush=True)
    if not args.skip_spacy:
        sp_s, sp_kept = run_datatrove(src, work / "dt-spacy", args.shards, whitespace=False)
        print(
            f"datatrove (default, spaCy):   {mb / sp_s:6.1f} MB/s  {sp_s:6.1f} s  kept {sp_kept}  (ours is {sp_s / ours_s:.2f}x this)",
            flush=True,
        )

    web_src = work / "web-input"
    web_src.mkdir(parents=True, exist_ok=True)
    web_made = make_web_input(web_src, args.web_mb, args.shards)
    web_mb = web_made["bytes"] / 1e6
    print(
        f"web input: {web_mb:.1f} MB of JSON Lines of docstring prose, {web_made['records']} records "
        f"({web_made['exact_dup']} exact dups, {web_made['near_dup']} near dups, {web_made['spam']} spam, "
        f"{web_made['junk']} too short)",
        flush=True,
    )
    web_ours_s, web_ours_kept, _ = run_ours(web_src, work / "ours-web", preset="web")
    print(f"ours, web preset:             {web_mb / web_ours_s:6.1f} MB/s  {web_ours_s:6.1f} s  kept {web_ours_kept}", flush=True)
    web_dt_s, web_dt_kept = run_datatrove(web_src, work / "dt-web", args.shards, whitespace=True, web=True)
    print(f"datatrove, the same filters:  {web_mb / web_dt_s:6.1f} MB/s  {web_dt_s:6.1f} s  kept {web_dt_kept}", flush=True)

    corpus = Storage(str(work / "ours"))
    tok_rate = tokenization_rate(corpus, work)
    text_mb = corpus.read_json("manifest.json")["text_bytes"] / 1e6
    print(
        f"tokenization stage on our output: {tok_rate:.1f} MB/s of text; corpus stage: {text_mb / ours_s:.1f} MB/s of kept "
        f"text ({mb / ours_s:.1f} MB/s of input)"
    )
    engines = minhash_engines(corpus)
    print(
        f"MinHash on one core ({engines.pop('_mb'):.1f} MB of documents): "
        + ", ".join(f"{name} {rate:.1f} MB/s" for name, rate in engines.items())
    )
    print(
        f"dedup index: {index_bytes_per_document(corpus):.0f} bytes per kept document on storage "
        f"(id and signature, exact and band keys); in memory, at most dedup_memory_mb"
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"web preset: ours/datatrove = {web_dt_s / web_ours_s:.2f}x")
    print(f"ratio ours/datatrove = {dt_s / ours_s:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
