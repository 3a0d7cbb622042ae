import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from llm_pipeline.evaluate.metrics import EvalConfig, evaluate, evaluate_published, split_documents
from llm_pipeline.publish.export import publish
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.tokenize.bpe import train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.train.model import CausalLM, ModelConfig


def _val_tokens(tokenizer, texts):
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids = DocumentEncoder(tokenizer, "tiktoken").encode_batch(texts)
    return np.concatenate([np.array(i + [eos], dtype=np.uint16) for i in ids]), eos


@pytest.fixture()
def final(storage):
    torch.manual_seed(1)
    folder = storage.child("final")
    folder.makedirs()
    cfg = ModelConfig(vocab_size=512, d_model=32, n_layers=1, n_heads=4, ffn_hidden=64, max_seq_len=64)
    save_file(CausalLM(cfg).state_dict(), f"{folder.path}/model.safetensors")
    folder.write_json("model_config.json", cfg.to_dict())
    return folder


def test_evaluation_is_deterministic_and_consistent(final, small_tokenizer, sample_texts):
    tokens, eos = _val_tokens(small_tokenizer, sample_texts[:3])
    cfg = EvalConfig(seq_len=64, max_new_tokens=6)
    a = evaluate(final, tokens, small_tokenizer.to_str(), eos, cfg)
    b = evaluate(final, tokens, small_tokenizer.to_str(), eos, cfg)
    assert a == b
    assert a["tokens_evaluated"] == len(tokens) - 1
    assert a["perplexity"] == pytest.approx(np.exp(a["loss"]))
    # every evaluated target maps back to the documents' text: bytes = the UTF-8 size of the texts
    assert a["bytes_evaluated"] == sum(len(t.encode()) for t in sample_texts[:3]) - len(small_tokenizer.decode([int(tokens[0])]).encode())
    assert a["bits_per_byte"] == pytest.approx(a["loss"] * a["tokens_evaluated"] / np.log(2) / a["bytes_evaluated"])
    assert [s["prompt"] for s in a["samples"]] == list(cfg.prompts)


def test_published_baseline_with_the_same_tokenizer_gives_the_same_numbers(storage, final, small_tokenizer, sample_texts):
    tokens, eos = _val_tokens(small_tokenizer, sample_texts[:3])
    cfg = EvalConfig(seq_len=64, max_new_tokens=0)
    publish(storage.child("registry"), "m", final, small_tokenizer.to_str(), eos, {}, {}, {})
    baseline = evaluate_published(resolve_version(storage.child("registry"), "m"), tokens, small_tokenizer.to_str(), eos, cfg)
    ours = evaluate(final, tokens, small_tokenizer.to_str(), eos, cfg)
    assert baseline["same_tokenizer"] and baseline["loss"] == pytest.approx(ours["loss"], rel=1e-6)


def test_published_baseline_with_another_tokenizer_is_scored_on_the_same_text(storage, final, small_tokenizer, sample_texts):
    other = train_bpe(iter(sample_texts[3:]), 512)
    tokens, eos = _val_tokens(small_tokenizer, sample_texts[:3])
    publish(storage.child("registry"), "m", final, other.to_str(), eos, {}, {}, {})
    cfg = EvalConfig(seq_len=64, max_new_tokens=0)
    baseline = evaluate_published(resolve_version(storage.child("registry"), "m"), tokens, small_tokenizer.to_str(), eos, cfg)
    ours = evaluate(final, tokens, small_tokenizer.to_str(), eos, cfg)
    assert not baseline["same_tokenizer"]
    assert baseline["tokens_evaluated"] != ours["tokens_evaluated"]
    assert abs(baseline["bytes_evaluated"] - ours["bytes_evaluated"]) <= 4  # the same text, up to its first token


def test_split_documents():
    docs = split_documents(np.array([5, 6, 0, 7, 0]), 0)
    assert [d.tolist() for d in docs] == [[5, 6], [7]]
