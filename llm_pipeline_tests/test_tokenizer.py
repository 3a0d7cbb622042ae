import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_pipeline.tokenize.bpe import EOS_TOKEN, load_tokenizer, smallest_uint_type, train_bpe, validate_vocab_size
from llm_pipeline.tokenize.encoder import DocumentEncoder, choose_encoder


def test_trained_tokenizer_has_eos_and_vocab_size(small_tokenizer):
    assert small_tokenizer.get_vocab_size() == 512
    assert small_tokenizer.token_to_id(EOS_TOKEN) == 0


def test_vocab_too_small_for_special_tokens_names_the_field():
    with pytest.raises(ValueError, match="vocab_size=258 is too small"):
        validate_vocab_size(258, [EOS_TOKEN, "<|pad|>"])
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(iter(["abc"]), 100)


def test_extra_special_tokens_are_added(sample_texts):
    tok = train_bpe(iter(sample_texts[:2]), 400, ["<|pad|>"])
    assert tok.token_to_id("<|pad|>") == 1


def test_smallest_uint_type():
    assert smallest_uint_type(256) == "uint8"
    assert smallest_uint_type(257) == "uint16"
    assert smallest_uint_type(65536) == "uint16"
    assert smallest_uint_type(65537) == "uint32"


def test_tiktoken_gives_identical_ids_on_the_sample_corpus(small_tokenizer, sample_texts):
    encoder, report = choose_encoder(small_tokenizer, sample_texts)
    assert report["engine"] == "tiktoken" and report["mismatches"] == 0
    reference = DocumentEncoder(small_tokenizer, "tokenizers")
    assert encoder.encode_batch(sample_texts) == reference.encode_batch(sample_texts)


def test_literal_special_token_text_is_encoded_as_text(small_tokenizer):
    text = f"a {EOS_TOKEN} b"
    for engine in ("tiktoken", "tokenizers"):
        ids = DocumentEncoder(small_tokenizer, engine).encode_batch([text])[0]
        assert small_tokenizer.token_to_id(EOS_TOKEN) not in ids


def test_non_convertible_tokenizer_falls_back(small_tokenizer, sample_texts):
    data = json.loads(small_tokenizer.to_str())
    data["normalizer"] = {"type": "Lowercase"}
    tok = load_tokenizer(json.dumps(data))
    encoder, report = choose_encoder(tok, sample_texts[:2])
    assert encoder.engine == "tokenizers" and "normalizer" in report["reason"]


def test_load_tokenizer_without_eos_is_refused(small_tokenizer):
    data = json.loads(small_tokenizer.to_str())
    data["added_tokens"] = []
    del data["model"]["vocab"][EOS_TOKEN]
    with pytest.raises(ValueError, match=r"tokenizer has no end-of-text token \(one of <\|endoftext\|>, </s>"):
        load_tokenizer(json.dumps(data))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_roundtrip_and_engine_identity_on_arbitrary_unicode(small_tokenizer, text):
    fast = DocumentEncoder(small_tokenizer, "tiktoken")
    reference = DocumentEncoder(small_tokenizer, "tokenizers")
    ids = reference.encode_batch([text])[0]
    assert fast.encode_batch([text])[0] == ids
    assert small_tokenizer.decode(ids, skip_special_tokens=False) == text
