"""Builders shared by tests: a small real corpus -> tokenizer -> shards chain."""

import os

from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.tokenize.bpe import id_space, tokenizer_hash
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards


def make_shards(tmp_path, root, tokenizer, texts, shard_cfg: ShardConfig | None = None, engine: str = "tiktoken",
                vocab_size: int | None = None):
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (src / f"{i:03d}.py").write_text(text)
    corpus = root.child("corpus")
    build_corpus(CorpusConfig(source_uri=str(src)), corpus)
    shards = root.child("shards")
    manifest = write_shards(corpus, shards, DocumentEncoder(tokenizer, engine), vocab_size or id_space(tokenizer),
                            tokenizer_hash(tokenizer.to_str()), shard_cfg or ShardConfig(val_fraction=0.2, tokens_per_shard=20_000))
    return corpus, shards, manifest


def batch_instance(*batches: str, home: str | None = None):
    """A Dagster instance that knows the given corpus batches (partitions); `builtin` by default.
    With `home`, a persistent one (runs in subprocesses, re-execution); else in memory."""
    import dagster as dg

    from llm_pipeline.assets.partitions import corpus_batches

    if home:
        os.makedirs(home, exist_ok=True)
    instance = dg.DagsterInstance.local_temp(home) if home else dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(corpus_batches.name, list(batches or ["builtin"]))
    return instance
