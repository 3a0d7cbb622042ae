"""Builders shared by tests: a small real corpus -> tokenizer -> shards chain."""

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
