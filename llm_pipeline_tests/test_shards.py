import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_pipeline.corpus.filters import document_id
from llm_pipeline.evaluate.contamination import contamination
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import tokenizer_hash
from llm_pipeline.tokenize.decontaminate import HeldOutNgrams, decontaminated
from llm_pipeline.tokenize.shards import ShardConfig, split_of
from llm_pipeline.train.data import ShardError
from llm_pipeline.train.scoring import split_documents
from llm_pipeline_tests.helpers import load_split_tokens, make_shards


def test_manifest_matches_shard_files(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    assert len(manifest["shards"]) >= 3  # tokens_per_shard forces several train shards
    eos = small_tokenizer.token_to_id("<|endoftext|>")
    for entry in manifest["shards"]:
        data = shards.read_bytes(entry["name"])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        table = pq.read_table(shards.full(entry["name"]))
        assert str(table.schema.field("tokens").type.value_type) == "uint16"  # smallest type for vocab 512
        rows = table.column("tokens").to_pylist()
        assert len(rows) == entry["documents"] and sum(map(len, rows)) == entry["tokens"]
        assert all(r[-1] == eos for r in rows)  # each document ends with EOS
    total = sum(s["tokens"] for s in manifest["shards"])
    assert total == manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]
    assert manifest["tokenizer_sha256"] == tokenizer_hash(small_tokenizer.to_str())


def test_same_inputs_give_byte_identical_shards(tmp_path, small_tokenizer, sample_texts):
    a, b = Storage(str(tmp_path / "a")), Storage(str(tmp_path / "b"))
    make_shards(tmp_path / "x", a, small_tokenizer, sample_texts)
    make_shards(tmp_path / "y", b, small_tokenizer, sample_texts)
    names = a.child("shards").listdir()
    assert names == b.child("shards").listdir()
    for name in names:
        assert a.child("shards").read_bytes(name) == b.child("shards").read_bytes(name)


def test_both_engines_write_identical_shards(tmp_path, small_tokenizer, sample_texts):
    a, b = Storage(str(tmp_path / "a")), Storage(str(tmp_path / "b"))
    make_shards(tmp_path / "x", a, small_tokenizer, sample_texts, engine="tiktoken")
    make_shards(tmp_path / "y", b, small_tokenizer, sample_texts, engine="tokenizers")
    for name in a.child("shards").listdir():
        if name != "manifest.json":  # the manifest records which engine ran
            assert a.child("shards").read_bytes(name) == b.child("shards").read_bytes(name)


def test_split_depends_only_on_document_id():
    ids = [f"{i:032x}" for i in range(2000)]
    splits = [split_of(i, 0.1) for i in ids]
    assert splits == [split_of(i, 0.1) for i in ids]
    assert 0.07 < splits.count("val") / len(ids) < 0.13


def test_load_split_tokens(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    tokens, _ = load_split_tokens(shards, "train", manifest["tokenizer_sha256"])
    assert len(tokens) == manifest["splits"]["train"]["tokens"]
    assert tokens.max() < 512


def test_shards_from_another_tokenizer_are_refused(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, _ = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    with pytest.raises(ShardError, match="made with tokenizer"):
        load_split_tokens(shards, "train", "0" * 64)


def test_tampered_shard_is_refused(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    name = manifest["shards"][0]["name"]
    data = bytearray(shards.read_bytes(name))
    data[100] ^= 0xFF
    shards.write_bytes(name, bytes(data))
    with pytest.raises(ShardError, match=f"{name} does not match its sha256"):
        load_split_tokens(shards, "train")


def test_missing_shard_is_refused(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    shards.remove(manifest["shards"][1]["name"])
    with pytest.raises(ShardError, match="is missing"):
        load_split_tokens(shards, "train")


def test_truncated_parquet_is_refused(tmp_path, storage, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts)
    entry = manifest["shards"][0]
    truncated = shards.read_bytes(entry["name"])[:-200]
    shards.write_bytes(entry["name"], truncated)
    entry["sha256"] = hashlib.sha256(truncated).hexdigest()  # even with a matching hash, it must not load
    shards.write_json("manifest.json", manifest)
    with pytest.raises(ShardError, match="not a readable Parquet file"):
        load_split_tokens(shards, "train")


def test_a_batch_may_have_an_empty_split_but_reading_nothing_is_an_error(tmp_path, storage, small_tokenizer, sample_texts):
    # A small landed batch can hold no held-out document; only reading an empty split is an error.
    _, shards, manifest = make_shards(tmp_path, storage, small_tokenizer, sample_texts[:1], ShardConfig(val_fraction=0.001))
    assert manifest["splits"]["val"]["tokens"] == 0 and manifest["splits"]["train"]["tokens"] > 0
    with pytest.raises(ShardError, match="no val tokens in"):
        load_split_tokens(shards, "val")


def test_shard_sets_with_mixed_tokenizers_are_refused_by_name(tmp_path, storage, small_tokenizer, sample_texts):
    from llm_pipeline.tokenize.bpe import train_bpe
    from llm_pipeline_tests.helpers import load_tokens

    _, first, _ = make_shards(tmp_path / "a", storage.child("a"), small_tokenizer, sample_texts[:6])
    other = train_bpe(iter(sample_texts[6:]), 300)
    _, second, _ = make_shards(tmp_path / "b", storage.child("b"), other, sample_texts[6:])
    with pytest.raises(ShardError, match=f"mixed tokenizers: {second.uri} made with tokenizer"):
        load_tokens([first, second], "train")
    alone, _ = load_split_tokens(first, "train")
    both, _ = load_tokens([first, first], "train")  # several sets of one tokenizer: concatenated in order
    assert len(both) == 2 * len(alone) and (both[: len(alone)] == alone).all()


def test_shard_config_validation():
    with pytest.raises(ValueError, match="val_fraction"):
        ShardConfig(val_fraction=0)
    with pytest.raises(ValueError, match="tokens_per_shard"):
        ShardConfig(tokens_per_shard=0)


def _decided_alone(held_out: HeldOutNgrams, documents) -> list[bool]:
    """The reference: each training document's hits found on its own, decided in order."""
    return [split != "train" or held_out.admit(held_out.hits([ids])[0]) for split, ids, _ in documents]


token_arrays = st.lists(st.integers(0, 40), max_size=120).map(lambda xs: np.array(xs, dtype=np.int64))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    val=st.lists(token_arrays, max_size=12),
    train=st.lists(token_arrays, max_size=40),
    n=st.integers(1, 6),
    min_overlap=st.sampled_from([0.01, 0.3, 0.5, 1.0]),
    data=st.data(),
)
def test_decontaminated_training_data_never_puts_a_validation_document_over_the_gate(val, train, n, min_overlap, data):
    # Copy pieces of validation documents into training documents, as scraped pages quote each other.
    for i, doc in enumerate(train):
        if val and data.draw(st.booleans()):
            source = val[data.draw(st.integers(0, len(val) - 1))]
            a = data.draw(st.integers(0, len(source)))
            train[i] = np.concatenate([doc[:7], source[a:], doc[7:]])
    documents = [("train", d, len(d)) for d in train]
    documents[len(documents) // 2 : len(documents) // 2] = [("val", d, len(d)) for d in val]
    dropped = {"documents": 0, "tokens": 0, "text_bytes": 0}
    kept = list(decontaminated(documents, HeldOutNgrams(val, n, min_overlap), dropped))
    # The gate's own measure over the kept training split (EOS between documents) finds no validation document over it.
    eos = np.array([99])
    kept_train = [ids for split, ids, _ in kept if split == "train"]
    stream = [np.concatenate([x for ids in kept_train for x in (ids, eos)] or [eos])]
    assert contamination(stream, {"val": val}, n, min_overlap)["val"].contaminated == 0
    assert [ids for split, ids, _ in kept if split == "val"] == val  # validation is never touched
    assert dropped["documents"] == len(train) - len(kept_train) and dropped["tokens"] == len(np.concatenate(train or [eos[:0]])) - sum(
        map(len, kept_train)
    )
    # Grouping documents for numpy changes nothing: the same decisions as one document at a time.
    alone = _decided_alone(HeldOutNgrams(val, n, min_overlap), documents)
    assert [d for d, keep in zip(documents, alone) if keep and d[0] == "train"] == [d for d in kept if d[0] == "train"]


def test_a_training_file_holding_a_validation_file_is_dropped_and_the_gate_passes(tmp_path, small_tokenizer, sample_texts):
    """Shards written with the defaults drop the training document that embeds a validation document
    whole (too little alike for near dedup); with decontamination off the gate's measure finds it."""
    val_fraction = 0.2
    held = next(t for t in sample_texts if split_of(document_id(t), val_fraction) == "val")
    # A host twice its size: too little alike for near dedup; the built-in code rules keep both.
    hosts = [host for host in sample_texts if 2 * len(held) < len(host) < 50_000]
    copied = next(c for c in (host + "\n" + held for host in hosts) if split_of(document_id(c), val_fraction) == "train")
    eos = small_tokenizer.token_to_id("<|endoftext|>")
    found = {}
    for ngram in (13, 0):
        cfg = ShardConfig(val_fraction=val_fraction, tokens_per_shard=20_000, decontaminate_ngram=ngram)
        _, shards, manifest = make_shards(
            tmp_path / str(ngram), Storage(str(tmp_path / f"root{ngram}")), small_tokenizer, [*sample_texts, copied], shard_cfg=cfg
        )
        train, _ = load_split_tokens(shards, "train", manifest["tokenizer_sha256"])
        val, _ = load_split_tokens(shards, "val", manifest["tokenizer_sha256"])
        found[ngram] = manifest, contamination([train], {"val": split_documents(val, eos)})["val"]
    manifest, report = found[13]
    assert report.contaminated == 0 and manifest["decontamination"]["dropped_as_eval_overlap"]["documents"] >= 1
    assert (
        manifest["splits"]["train"]["documents"]
        == found[0][0]["splits"]["train"]["documents"] - manifest["decontamination"]["dropped_as_eval_overlap"]["documents"]
    )
    assert found[0][1].contaminated >= 1 and found[0][0]["decontamination"] is None
