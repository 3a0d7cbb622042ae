"""The built-in default corpus (the Python standard library) as token shards, for the benchmarks that
train: cleaned, a BPE trained on a quarter of it, every document encoded, as the pipeline does."""

from __future__ import annotations

from tokenizers import Tokenizer

from llm_pipeline.corpus.build import CorpusConfig, build_corpus, iter_documents
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import tokenizer_hash, train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards


def builtin_shards(root: Storage, vocab_size: int) -> Tokenizer:
    """`<root>/corpus` and `<root>/shards`; returns the tokenizer."""
    build_corpus(CorpusConfig(), root.child("corpus"))
    texts = [t for b in iter_documents(root.child("corpus"), columns=("text",)) for t in b.column("text").to_pylist()]
    tokenizer = train_bpe(iter(texts[: max(1, len(texts) // 4)]), vocab_size)
    write_shards(
        root.child("corpus"),
        root.child("shards"),
        DocumentEncoder(tokenizer, "tiktoken"),
        vocab_size,
        tokenizer_hash(tokenizer.to_str()),
        ShardConfig(),
    )
    return tokenizer
