"""The fast encoder on the real default corpus, remote shards, and the streaming encoder's order."""

import numpy as np
import pytest

from llm_pipeline.corpus.build import CorpusConfig, build_corpus, iter_documents
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import tokenizer_hash, train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder, choose_encoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards
from llm_pipeline_tests.helpers import load_split_tokens, make_shards


@pytest.mark.e2e
def test_tiktoken_is_identical_on_every_document_of_the_default_corpus(tmp_path):
    corpus = Storage(str(tmp_path / "corpus"))
    build_corpus(CorpusConfig(), corpus)  # the built-in default: the stdlib, 8 MB
    texts = [t for b in iter_documents(corpus, columns=("text",)) for t in b.column("text").to_pylist()]
    tok = train_bpe(iter(texts[: len(texts) // 2]), 4096)
    encoder, report = choose_encoder(tok, texts)
    assert report["engine"] == "tiktoken", report
    assert report["verified_documents"] == len(texts) and report["mismatches"] == 0
    assert report["verified_tokens"] > 2_000_000


@pytest.mark.parametrize("engine", ["tiktoken", "tokenizers"])
def test_encode_stream_keeps_order(small_tokenizer, sample_texts, engine):
    encoder = DocumentEncoder(small_tokenizer, engine)
    texts = sample_texts * 3
    streamed = [a.tolist() for a in encoder.encode_stream(iter(texts), window=4)]
    assert streamed == encoder.encode_batch(texts)


def test_shards_on_s3_are_written_and_read_back(tmp_path, s3_endpoint, small_tokenizer, sample_texts):
    local, _, manifest = make_shards(tmp_path, Storage(str(tmp_path / "local")), small_tokenizer, sample_texts)
    remote = Storage("s3://llm-pipeline-test/shards-test", client_kwargs={"endpoint_url": s3_endpoint})
    write_shards(
        local,
        remote,
        DocumentEncoder(small_tokenizer, "tiktoken"),
        512,
        tokenizer_hash(small_tokenizer.to_str()),
        ShardConfig(val_fraction=0.2, tokens_per_shard=20_000),
    )
    assert remote.read_json("manifest.json") == manifest
    local_tokens, _ = load_split_tokens(Storage(str(tmp_path / "local")).child("shards"), "train")
    remote_tokens, _ = load_split_tokens(remote, "train", manifest["tokenizer_sha256"])
    assert np.array_equal(local_tokens, remote_tokens)
