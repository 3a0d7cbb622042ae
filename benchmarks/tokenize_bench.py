"""Tokenization and data-loading speed: our path next to the baselines, on the same data, in one run.

    python -m benchmarks.tokenize_bench [--big-gb 1.0] [--vocab 8192]

(a) ours: `tokenized_shards` end to end (read documents, encode, write shards + manifest)
(b) raw `tokenizers` encode_batch over the same documents + one pyarrow.parquet.write_table
(c) raw tiktoken encode_ordinary_batch over all documents, no I/O
Then peak RSS of (a) on a generated corpus of --big-gb GB (the stdlib corpus repeated with a
perturbation per copy, so every document is distinct), run in a child process, and the training
data loader's throughput against one training step's consumption rate.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from llm_pipeline.corpus.build import DOCUMENT_SCHEMA, CorpusConfig, build_corpus, iter_documents
from llm_pipeline.corpus.filters import FilterConfig, document_id
from llm_pipeline.corpus.manifest import (
    Cleaning,
    CorpusManifest,
    Decontaminated,
    DedupIndexSummary,
    NearDedupSettings,
    SegmentSummary,
)
from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import write_manifest
from llm_pipeline.storage.parquet_shards import ParquetFile
from llm_pipeline.tokenize.bpe import load_tokenizer, tokenizer_hash, train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder, tiktoken_encoding
from llm_pipeline.tokenize.shards import ShardConfig, write_shards
from llm_pipeline.train.hardware import peak_rss_bytes

THREADS = os.cpu_count() or 1


def _texts(corpus: Storage) -> list[str]:
    return [t for b in iter_documents(corpus, columns=("text",)) for t in b.column("text").to_pylist()]


def leg_ours(corpus: Storage, out: Storage, tok_json: str, cfg: ShardConfig | None = None) -> tuple[float, int]:
    """The stage at its defaults; its token count includes the training documents decontamination left out,
    so that every leg is credited with the same tokens."""
    tok = load_tokenizer(tok_json)
    start = time.perf_counter()
    manifest = write_shards(
        corpus, out, DocumentEncoder(tok, "tiktoken"), tok.get_vocab_size(), tokenizer_hash(tok_json), cfg or ShardConfig()
    )
    written = manifest.splits["train"].tokens + manifest.splits["val"].tokens
    dropped = manifest.decontamination.dropped_as_eval_overlap if manifest.decontamination else None
    return time.perf_counter() - start, written + (dropped.tokens + dropped.documents if dropped else 0)  # + their EOS


def leg_tokenizers(corpus: Storage, out_path: str, tok_json: str) -> tuple[float, int]:
    tok = load_tokenizer(tok_json)
    start = time.perf_counter()
    texts = _texts(corpus)
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    pq.write_table(pa.table({"tokens": pa.array(ids, type=pa.large_list(pa.uint16()))}), out_path, compression="zstd")
    return time.perf_counter() - start, sum(map(len, ids)) + len(ids)  # + one EOS per document, as ours writes


def leg_tiktoken(texts: list[str], tok_json: str) -> tuple[float, int]:
    enc = tiktoken_encoding(load_tokenizer(tok_json))
    start = time.perf_counter()
    ids = enc.encode_ordinary_batch(texts, num_threads=THREADS)
    return time.perf_counter() - start, sum(map(len, ids)) + len(ids)


def make_big_corpus(texts: list[str], out: Storage, target_bytes: int) -> int:
    """Distinct documents: each copy of the stdlib gets its own first line (so its own id)."""
    written, shard, rows, row_bytes, copy = 0, 0, [], 0, 0
    shards = []
    while written < target_bytes:
        for text in texts:
            doc = f"# copy {copy}\n{text}"
            rows.append({"id": document_id(doc), "text": doc, "source": "generated"})
            row_bytes += len(doc.encode())
            if row_bytes >= 64_000_000:
                name = f"documents-{shard:05d}.parquet"
                pq.write_table(pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA), out.full(name), compression="zstd")
                shards.append(ParquetFile(name=name, rows=len(rows), size=row_bytes, bytes=out.size(name), sha256=out.sha256(name)))
                written += row_bytes
                shard, rows, row_bytes = shard + 1, [], 0
                if written >= target_bytes:
                    break
        copy += 1
    write_manifest(out, _generated_manifest(shards, written).model_dump(mode="json"))
    return written


def _generated_manifest(shards: list[ParquetFile], text_bytes: int) -> CorpusManifest:
    """The manifest of a corpus written here rather than by build_corpus: its shards, nothing cleaned."""
    documents = sum(s.rows for s in shards)
    return CorpusManifest(
        source_uri="generated",
        glob="",
        exclude=(),
        format="parquet",
        text_field="text",
        files_listed=None,
        max_bytes=None,
        files_matched=0,
        files_read=0,
        files_skipped=0,
        skipped={},
        records=documents,
        documents=documents,
        text_bytes=text_bytes,
        bytes_read=0,
        decoded_bytes=0,
        dropped={},
        modified={},
        cleaning=Cleaning(
            preset="minimal",
            files_by_preset={},
            steps={},
            languages=(),
            min_language_score=0.0,
            rule_settings={},
            decontaminated_against=Decontaminated(tasks=(), n=0),
        ),
        dropped_examples={},
        duplicates_of_earlier_batches=0,
        dedup_index=DedupIndexSummary(
            segment=SegmentSummary(format=0, documents=0, near_dedup=False, exact_rows=0, band_rows=0, bytes=0),
            earlier_documents=0,
            earlier_bytes=0,
        ),
        deduplicated_against=(),
        near_dedup=NearDedupSettings(enabled=False, threshold=0.0, num_perm=0, bands=0, shingle_words=0, library=""),
        shards=tuple(shards),
        quarantine=(),
        files=(),
    )


def big_child(corpus_dir: str, out_dir: str, tok_path: str) -> None:
    with open(tok_path) as f:
        seconds, tokens = leg_ours(Storage(corpus_dir), Storage(out_dir), f.read())
    print(f"{seconds} {tokens} {peak_rss_bytes()}")


def loader_vs_trainer(tokens: np.ndarray) -> tuple[float, float]:
    import torch

    from llm_pipeline.train.data import DataMixture, MicroBatches, TokenWindows
    from llm_pipeline.train.model import CausalLM
    from llm_pipeline.train.model_config import ModelConfig

    loader = MicroBatches(DataMixture([TokenWindows(tokens, 128, 0)], [1.0], 0), 16, 0, 1)
    start, n = time.perf_counter(), 0
    for k in range(2000):
        x, _ = loader.at(k * 16)
        n += x.numel()
    loader_rate = n / (time.perf_counter() - start)
    torch.set_num_threads(THREADS)
    model = CausalLM(ModelConfig(vocab_size=int(tokens.max()) + 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for k in range(7):
        if k == 2:
            start = time.perf_counter()
        x, y = loader.at(k * 16)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    train_rate = 5 * 16 * 128 / (time.perf_counter() - start)
    return loader_rate, train_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-gb", type=float, default=1.0, help="size of the generated corpus for the memory leg (0: skip)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--big-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.big_child:
        big_child(*args.big_child)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        root = Storage(tmp)
        corpus = root.child("corpus")
        t = time.perf_counter()
        # The whole stdlib (site-packages excluded); no near-dedup, to match the plain file set.
        build_corpus(CorpusConfig(max_bytes=10**12, filters=FilterConfig(near_dedup=False)), corpus)
        texts = _texts(corpus)
        mb = sum(len(x.encode()) for x in texts) / 1e6
        tok = train_bpe(iter(texts[: len(texts) // 4]), args.vocab)
        tok_json = tok.to_str()
        print(f"corpus: {len(texts)} documents, {mb:.1f} MB (built in {time.perf_counter() - t:.1f}s); vocab {args.vocab}; {THREADS} cores")

        sa, na = leg_ours(corpus, root.child("shards"), tok_json)
        sb, nb = leg_tokenizers(corpus, os.path.join(tmp, "hf.parquet"), tok_json)
        sc, nc = leg_tiktoken(texts, tok_json)
        assert na == nb == nc, f"token counts differ: ours {na}, tokenizers {nb}, tiktoken {nc}"
        rows = [
            ("(a) ours: read + encode + write shards", sa),
            ("(b) tokenizers encode_batch + write_table", sb),
            ("(c) tiktoken encode_ordinary_batch, no I/O", sc),
        ]
        for name, s in rows:
            print(f"{name:45s} {na / s / 1e6:6.2f} M tokens/s {mb / s:7.2f} MB/s  ({s:.2f}s)")
        print(f"ratio (a)/(b) = {sb / sa:.2f}x   (target >= 4)")
        print(f"ratio (a)/(c) = {sc / sa:.2f}x   (target >= 0.8)")
        # Decontamination against the validation split, on and off, in interleaved rounds.
        times: dict[int, list[float]] = {13: [], 0: []}
        for round_ in range(3):
            for ngram in times:
                out = root.child(f"shards_{ngram}_{round_}")
                times[ngram].append(leg_ours(corpus, out, tok_json, ShardConfig(decontaminate_ngram=ngram))[0])
                out.remove()
        on, off = min(times[13]), min(times[0])
        print(f"decontamination against the validation split: {on:.2f}s vs {off:.2f}s without, +{100 * (on / off - 1):.1f}%")

        from llm_pipeline.train.token_store import TokenCache, open_split

        stream, _ = open_split([root.child("shards")], "train", TokenCache(os.path.join(tmp, "token-cache"), 100 << 30))
        train_tokens = np.concatenate([np.asarray(array) for array in stream.arrays])
        loader_rate, train_rate = loader_vs_trainer(train_tokens)
        print(
            f"loader {loader_rate / 1e6:.2f} M tokens/s vs one training step (default model, fp32, 16x128) "
            f"{train_rate:,.0f} tokens/s: {loader_rate / train_rate:,.0f}x   (target >= 20)"
        )

        if args.big_gb > 0:
            big = root.child("big")
            big.makedirs()
            size = make_big_corpus(texts, big, int(args.big_gb * 1e9))
            tok_path = os.path.join(tmp, "tokenizer.json")
            with open(tok_path, "w") as f:
                f.write(tok_json)
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.tokenize_bench", "--big-child", big.path, root.child("big_shards").path, tok_path],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds, tokens, peak = out.stdout.split()
            print(
                f"(a) on a {size / 1e9:.2f} GB corpus: {int(tokens) / float(seconds) / 1e6:.2f} M tokens/s, "
                f"{size / 1e6 / float(seconds):.1f} MB/s, peak RSS {int(peak) / 1e9:.2f} GB   (target < 1.5 GB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
