import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.evaluate.contamination import contamination
from llm_pipeline.evaluate.harness import check_tasks_available
from llm_pipeline.evaluate.local_tasks import CONTINUATION_TASK, PERPLEXITY_TASK, continuation_items
from llm_pipeline.evaluate.metrics import evaluate, evaluate_published, held_out_documents
from llm_pipeline.evaluate.suite import HELD_OUT, run_suite
from llm_pipeline.publish.export import publish
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.tokenize.bpe import train_bpe
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.scoring import document_nats, rolling_windows, split_documents
from llm_pipeline.train.token_store import TokenCache, open_split
from llm_pipeline.train.weights import load_trained_model
from llm_pipeline_tests.helpers import cache_arc_easy, datasets_cache, eval_report, load_tokens, make_shards


def _stream(tokenizer, texts):
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids = DocumentEncoder(tokenizer, "tiktoken").encode_batch(texts)
    return np.concatenate([np.array(i + [eos], dtype=np.uint16) for i in ids]), eos


def _held_out(tokenizer, texts):
    tokens, eos = _stream(tokenizer, texts)
    return held_out_documents(tokens, eos, tokenizer), eos


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
    held_out, eos = _held_out(small_tokenizer, sample_texts[:3])
    cfg = EvalConfig(seq_len=64, max_new_tokens=6)
    a, samples = evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg)
    assert (a, samples) == evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg)
    assert held_out.texts == sample_texts[:3]  # the documents' own text
    assert a.tokens_evaluated == sum(len(d) for d in held_out.ids)  # every token once, EOS never a target
    assert a.perplexity == pytest.approx(np.exp(a.loss))
    assert a.bytes_evaluated == sum(len(t.encode()) for t in sample_texts[:3])
    assert a.bits_per_byte == pytest.approx(a.loss * a.tokens_evaluated / np.log(2) / a.bytes_evaluated)
    assert [s.prompt for s in samples] == list(cfg.prompts)
    # The batch size only changes the padding: the numbers stay.
    assert evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg.replaced(batch_size=3))[0].loss == pytest.approx(a.loss, rel=1e-6)


def _reference_nats(model: CausalLM, docs, prefix_id: int, window: int) -> float:
    """The scoring before the fast path: one window at a time, full logits, torch's cross entropy."""
    total = 0.0
    with torch.inference_mode():
        for doc in docs:
            for inp, tgt, scored in rolling_windows(doc, prefix_id, window):
                logits = model(torch.from_numpy(inp)[None])[0, len(tgt) - scored :].float()
                total += F.cross_entropy(logits, torch.from_numpy(tgt[len(tgt) - scored :]), reduction="sum").item()
    return total


def test_the_fast_scoring_path_leaves_the_numbers_unchanged(final, small_tokenizer, sample_texts):
    """Batched windows, hidden states gathered at the scored positions, the log-softmax in chunks: in fp32
    the same nats as scoring each window alone with torch's cross entropy, to 1e-5."""
    held_out, eos = _held_out(small_tokenizer, sample_texts[:5])
    model = load_trained_model(final)
    reference = _reference_nats(model, held_out.ids, eos, 64)
    for batch_size in (1, 16):
        nats, count = document_nats(model, held_out.ids, eos, 64, batch_size)
        assert nats == pytest.approx(reference, rel=1e-5) and count == sum(len(d) for d in held_out.ids)


def test_bf16_evaluation_is_recorded_and_close_to_fp32(final, small_tokenizer, sample_texts):
    held_out, eos = _held_out(small_tokenizer, sample_texts[:3])
    cfg = EvalConfig(seq_len=64, max_new_tokens=4)
    fp32, _ = evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg.replaced(dtype="fp32"))
    bf16, _ = evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg.replaced(dtype="bf16"))
    assert (fp32.dtype, bf16.dtype) == ("fp32", "bf16")
    assert bf16.loss == pytest.approx(fp32.loss, rel=1e-2)


def test_held_out_documents_from_the_memory_mapped_split_are_the_parquet_ones(tmp_path, storage, final, small_tokenizer, sample_texts):
    """eval_metrics reads the val split from the token store (views into the map, never widened whole):
    the documents, their text and every metric are those of the Parquet shards."""
    _, shards, _ = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    eos = small_tokenizer.token_to_id("<|endoftext|>")
    mapped, _ = open_split([shards], "val", TokenCache(str(tmp_path / "cache"), 100 << 30))
    parquet, _ = load_tokens([shards], "val")
    a, b = held_out_documents(mapped, eos, small_tokenizer), held_out_documents(parquet, eos, small_tokenizer)
    assert a.texts == b.texts and all(np.array_equal(x, y) for x, y in zip(a.ids, b.ids))
    assert a.ids[0].dtype == np.uint16
    cfg = EvalConfig(seq_len=64, max_new_tokens=0, dtype="fp32")
    assert evaluate(final, a, small_tokenizer.to_str(), eos, cfg) == evaluate(final, b, small_tokenizer.to_str(), eos, cfg)


def test_max_tokens_takes_whole_documents(small_tokenizer, sample_texts):
    held_out, _ = _held_out(small_tokenizer, sample_texts[:4])
    first_two = len(held_out.ids[0]) + len(held_out.ids[1])
    assert held_out.first(first_two).texts == sample_texts[:2]
    assert held_out.first(first_two - 1).texts == sample_texts[:1]
    assert held_out.first(1).texts == sample_texts[:1]  # at least one
    assert held_out.first(0) is held_out


def test_published_baseline_with_the_same_tokenizer_gives_the_same_numbers(storage, final, small_tokenizer, sample_texts):
    held_out, eos = _held_out(small_tokenizer, sample_texts[:3])
    cfg = EvalConfig(seq_len=64, max_new_tokens=0)
    publish(storage.child("registry"), "m", final, small_tokenizer.to_str(), eos, {}, {}, {})
    baseline = evaluate_published(resolve_version(storage.child("registry"), "m"), held_out, small_tokenizer.to_str(), cfg)
    ours, _ = evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg)
    assert baseline.same_tokenizer and baseline.loss == pytest.approx(ours.loss, rel=1e-6)
    assert baseline.version == resolve_version(storage.child("registry"), "m").name


def test_published_baseline_with_another_tokenizer_is_scored_on_the_same_text(storage, final, small_tokenizer, sample_texts):
    other = train_bpe(iter(sample_texts[3:]), 512)
    held_out, eos = _held_out(small_tokenizer, sample_texts[:3])
    publish(storage.child("registry"), "m", final, other.to_str(), eos, {}, {}, {})
    cfg = EvalConfig(seq_len=64, max_new_tokens=0)
    baseline = evaluate_published(resolve_version(storage.child("registry"), "m"), held_out, small_tokenizer.to_str(), cfg)
    ours, _ = evaluate(final, held_out, small_tokenizer.to_str(), eos, cfg)
    assert not baseline.same_tokenizer
    assert baseline.tokens_evaluated != ours.tokens_evaluated
    assert baseline.bytes_evaluated == ours.bytes_evaluated  # the same text


def test_split_documents():
    docs = split_documents(np.array([5, 6, 0, 7, 0]), 0)
    assert [d.tolist() for d in docs] == [[5, 6], [7]]


def test_the_harness_on_a_model_agrees_with_our_bits_per_byte(tmp_path, storage, final, small_tokenizer, sample_texts):
    """lm-evaluation-harness, offline, on the model in published format: its held-out bits per byte
    are ours, and the multiple-choice task reports acc with a stderr."""
    val, eos = _stream(small_tokenizer, sample_texts[:6])
    train, _ = _stream(small_tokenizer, sample_texts[6:])
    cfg = EvalConfig(max_new_tokens=0, continuation_items=40)
    suite = run_suite(final, val, lambda: iter([train]), small_tokenizer.to_str(), eos, cfg, str(tmp_path / "work"))
    harness = suite.harness.results
    assert harness[PERPLEXITY_TASK]["bits_per_byte"].value == pytest.approx(suite.held_out_metrics.bits_per_byte, abs=1e-3)
    choice = harness[CONTINUATION_TASK]
    for name in ("acc", "acc_norm"):
        assert 0 <= choice[name].value <= 1 and 0 < choice[name].stderr < 1
    assert suite.harness.n_samples[CONTINUATION_TASK] == 40
    assert all(np.isfinite(score.value) for _, _, score in suite.harness.scores())
    assert set(suite.contamination.sets) == {HELD_OUT, CONTINUATION_TASK}
    assert json.loads(suite.task_data[f"{CONTINUATION_TASK}.jsonl"].splitlines()[0])["context"]


def test_the_multiple_choice_task_is_deterministic_and_built_from_held_out_documents(small_tokenizer, sample_texts):
    held_out, _ = _held_out(small_tokenizer, sample_texts[:6])
    items = continuation_items(held_out.texts, 60, seed=3)
    assert items == continuation_items(held_out.texts, 60, seed=3)
    assert items != continuation_items(held_out.texts, 60, seed=4)
    assert len(items) == 60
    starts = {item["document"] for item in items if held_out.texts[item["document"]].startswith(item["context"])}
    assert len(starts) == 6  # every document's start is asked about
    for item in items:
        text = held_out.texts[item["document"]]
        true = item["choices"][item["label"]]
        assert text[item["offset"] - len(item["context"]) : item["offset"] + len(true)] == item["context"] + true
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        for choice in item["choices"]:  # every candidate is held-out text, none from elsewhere
            assert any(choice in t for i, t in enumerate(held_out.texts))
            if choice != true:
                assert choice not in text or choice.strip() != true.strip()
    assert {item["label"] for item in items} == {0, 1, 2, 3}


def test_one_held_out_document_is_too_few_for_the_multiple_choice_task(sample_texts):
    with pytest.raises(ValueError, match=f"{CONTINUATION_TASK} task needs passages from at least 2 held-out documents"):
        continuation_items(sample_texts[:1], 10, seed=0)


def test_copied_training_documents_are_contaminated_and_idioms_are_not(small_tokenizer, sample_texts):
    train, _ = _stream(small_tokenizer, sample_texts[:6])
    clean, _ = _held_out(small_tokenizer, sample_texts[6:])
    copied, _ = _held_out(small_tokenizer, sample_texts[1:3])
    report = contamination(iter([train[:5000], train[5000:]]), {"clean": clean.ids, "copied": copied.ids + clean.ids})
    assert report["clean"].fraction == 0
    assert report["clean"].sharing >= 1  # Python idioms: shared 13-grams, not copies
    assert report["copied"].contaminated == 2 and report["copied"].fraction == pytest.approx(2 / 8)


def test_a_standard_task_that_cannot_load_offline_is_named(tmp_path, monkeypatch):
    datasets_cache(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(ValueError, match="harness task 'arc_easy' cannot be loaded offline"):
        check_tasks_available((PERPLEXITY_TASK, "arc_easy"))
    with pytest.raises(ValueError, match="harness task 'no_such_task' is not a task"):
        check_tasks_available(("no_such_task",))
    check_tasks_available((PERPLEXITY_TASK, CONTINUATION_TASK))  # written at evaluation time: always loadable


def test_an_eval_set_with_training_documents_copied_in_fails_the_gate(tmp_path, final, small_tokenizer, sample_texts):
    """The whole path: the suite's report (held-out documents and the multiple-choice items) read by
    the blocking check, for a clean held-out split and for one with training documents copied in."""
    from llm_pipeline.assets.evaluation import no_eval_contamination

    train, eos = _stream(small_tokenizer, sample_texts[:6])
    cfg = EvalConfig(max_new_tokens=0, continuation_items=30)

    def gate(val_texts):
        val, _ = _stream(small_tokenizer, val_texts)
        suite = run_suite(final, val, lambda: iter([train]), small_tokenizer.to_str(), eos, cfg, str(tmp_path / str(len(val_texts))))
        return no_eval_contamination(eval_report(suite, max_contamination=0.2)), suite.contamination

    clean, report = gate(sample_texts[6:])
    assert clean.passed and report.sets[HELD_OUT].contaminated == 0
    dirty, report = gate(sample_texts[6:] + sample_texts[:3])  # three training files copied into the eval set
    assert not dirty.passed
    assert report.sets[HELD_OUT].contaminated == 3 and report.sets[HELD_OUT].fraction == pytest.approx(3 / 9)
    assert "> max_contamination 20.0%" in dirty.description


def test_a_held_out_split_too_small_for_the_multiple_choice_task_leaves_it_out_and_its_gate_fails(
    tmp_path, final, small_tokenizer, sample_texts
):
    from llm_pipeline.assets.evaluation import harness_scores_meet_minimums

    train, eos = _stream(small_tokenizer, sample_texts[:6])
    val, _ = _stream(small_tokenizer, sample_texts[6:7])  # one held-out document
    suite = run_suite(final, val, lambda: iter([train]), small_tokenizer.to_str(), eos, EvalConfig(max_new_tokens=0), str(tmp_path))
    assert set(suite.harness.results) == {PERPLEXITY_TASK}
    assert "needs passages from at least 2 held-out documents" in suite.harness_skipped[CONTINUATION_TASK]
    assert set(suite.task_data) == {f"{PERPLEXITY_TASK}.jsonl"}  # no empty task is written
    gate = harness_scores_meet_minimums(eval_report(suite, min_scores={f"{CONTINUATION_TASK}/acc": 0.3}))
    assert not gate.passed and "no result (the llm_pipeline_heldout_continuation task needs passages" in gate.description


def test_a_standard_task_runs_offline_from_the_datasets_cache(tmp_path, monkeypatch, final, small_tokenizer, sample_texts):
    """A standard harness task (arc_easy) next to the local ones, its dataset read from the cache."""
    cache_arc_easy(datasets_cache(monkeypatch, tmp_path / "hf-cache"), questions=12)
    check_tasks_available(("arc_easy",))
    val, eos = _stream(small_tokenizer, sample_texts[:4])
    train, _ = _stream(small_tokenizer, sample_texts[4:])
    cfg = EvalConfig(max_new_tokens=0, continuation_items=10, harness_tasks=(PERPLEXITY_TASK, CONTINUATION_TASK, "arc_easy"))
    suite = run_suite(final, val, lambda: iter([train]), small_tokenizer.to_str(), eos, cfg, str(tmp_path / "work"))
    arc = suite.harness.results["arc_easy"]
    assert suite.harness.n_samples["arc_easy"] == 12
    assert 0 <= arc["acc"].value <= 1 and 0 < arc["acc"].stderr < 1
    assert suite.contamination.sets["arc_easy"].documents == 12  # its items checked too
