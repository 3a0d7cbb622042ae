"""What a new corpus batch costs: processing 1% new data next to rebuilding everything.

    python -m benchmarks.incremental_bench [--new-fraction 0.01]

The corpus is the Python standard library's source, uncapped (~31 MB). Its files are split, in
sorted order, into the existing corpus (the first 1 - f of the bytes) and one new batch (the rest).
Both legs run our own code on the same files in one run:
  (a) full rebuild: clean + dedup + write the whole corpus, then tokenize it into shards (what a
      pipeline without batches pays on every delivery);
  (b) incremental: clean + dedup the new batch against the existing batch's persisted dedup index,
      then tokenize the new batch alone (what a `corpus_batches` partition costs).
The tokenizer is trained once beforehand and shared (one tokenizer across batches).
The last line: `incremental batch cost = X.XX% of a full rebuild (new data = Y.YY% of bytes)`.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from llm_pipeline.corpus.build import CorpusConfig, build_corpus, default_corpus_uri, iter_documents
from llm_pipeline.corpus.sources import list_sources
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import tokenizer_hash, train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards

VOCAB = 4096


def _stage(cfg: CorpusConfig, out: Storage, tok, earlier=()) -> tuple[float, float, dict]:
    start = time.perf_counter()
    manifest = build_corpus(cfg, out.child("corpus"), earlier=earlier)
    corpus_s = time.perf_counter() - start
    start = time.perf_counter()
    write_shards(
        out.child("corpus"),
        out.child("shards"),
        DocumentEncoder(tok, "tiktoken"),
        tok.get_vocab_size(),
        tokenizer_hash(tok.to_str()),
        ShardConfig(),
    )
    return corpus_s, time.perf_counter() - start, manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-fraction", type=float, default=0.01, help="share of the corpus bytes that is new")
    args = parser.parse_args(argv)

    source = default_corpus_uri()
    base = CorpusConfig(source_uri=source, max_bytes=10**12)  # the whole standard library, no cap
    files = list_sources(source, base.file_glob, base.excluded).files
    total = sum(f.size for f in files)
    existing, new, running = [], [], 0
    for f in files:
        (existing if running < (1 - args.new_fraction) * total else new).append(f.rel)
        running += f.size
    new_bytes = sum(f.size for f in files if f.rel in set(new))
    print(
        f"corpus: {len(files)} files, {total / 1e6:.1f} MB; new batch: {len(new)} files, {new_bytes / 1e6:.2f} MB "
        f"({100 * new_bytes / total:.2f}% of bytes)"
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Storage(tmp)
        # The shared tokenizer, trained once on the existing batch's first files (as the tokenizer asset does).
        warm = root.child("warm")
        build_corpus(CorpusConfig(source_uri=source, files=dict.fromkeys(existing[:200], "")), warm)
        tok = train_bpe((t for b in iter_documents(warm, columns=("text",)) for t in b.column("text").to_pylist()), VOCAB)

        full_corpus_s, full_tok_s, full = _stage(base, root.child("full"), tok)
        print(
            f"(a) full rebuild : corpus {full_corpus_s:.2f}s + tokenize {full_tok_s:.2f}s = {full_corpus_s + full_tok_s:.2f}s "
            f"({full['documents']} documents)"
        )

        # The existing batch, built once (not timed: it was paid when that batch landed).
        build_corpus(CorpusConfig(source_uri=source, files=dict.fromkeys(existing, "")), root.child("existing", "corpus"))
        new_corpus_s, new_tok_s, inc = _stage(
            CorpusConfig(source_uri=source, files=dict.fromkeys(new, "")),
            root.child("new"),
            tok,
            earlier=[("existing", root.child("existing", "corpus"))],
        )
        print(
            f"(b) incremental  : corpus {new_corpus_s:.2f}s (dedup against {inc.deduplicated_against[0].batch}'s index) "
            f"+ tokenize {new_tok_s:.2f}s = {new_corpus_s + new_tok_s:.2f}s ({inc.documents} new documents, "
            f"{inc.duplicates_of_earlier_batches} duplicates of the existing batch)"
        )
        index_bytes = inc.dedup_index.earlier_bytes
        print(f"persisted dedup index of the existing batch: {index_bytes / 1e6:.2f} MB")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    ratio = (new_corpus_s + new_tok_s) / (full_corpus_s + full_tok_s)
    print(f"incremental batch cost = {100 * ratio:.2f}% of a full rebuild (new data = {100 * new_bytes / total:.2f}% of bytes)")


if __name__ == "__main__":
    main()
