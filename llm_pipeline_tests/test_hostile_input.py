"""Hostile and broken input at every boundary: refused by name, nothing executed, nothing lost."""

import json
import math
import os
import re
import subprocess
import sys

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_pipeline.assets.configs import STAGE_CONFIGS, validate_run_config
from llm_pipeline.corpus.filters import FilterConfig
from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.publish.registry import resolve_version
from llm_pipeline.publish.verify import verify
from llm_pipeline.storage.folders import Storage, StorageError
from llm_pipeline.storage.names import check_name
from llm_pipeline.tokenize.bpe import id_space, load_tokenizer, tokenizer_hash
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.shards import ShardConfig, write_shards
from llm_pipeline.train.config import LaunchConfig, TrainConfig
from llm_pipeline.train.data import ShardError, read_shard_manifest
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.weights import load_trained_model
from llm_pipeline_tests.helpers import batch_instance, load_split_tokens, make_shards, published, step_failure

ESCAPES = ["../../escaped", "a/../../../b", "/etc/passwd", "..", ".", "x\n", "", "a/b", "s3://bucket/x", "a\\b", ".hidden", "-x"]


# --- 1. names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ESCAPES)
def test_registry_names_that_escape_are_refused_by_name(tmp_path, name):
    registry = Storage(str(tmp_path / "registry"))
    with pytest.raises(ValueError, match="model name must be a plain folder name"):
        resolve_version(registry, name)
    from llm_pipeline.publish.export import publish

    with pytest.raises(ValueError, match="model_name must be a plain folder name"):
        publish(registry, name, registry, "{}", 0, {}, {}, {})
    assert not any(p for p in tmp_path.rglob("*") if p.name in ("escaped", "b", "latest"))


@pytest.mark.parametrize("stage, field", [("published_model", "model_name"), ("eval_metrics", "compare_with")])
def test_the_dagster_guard_uses_the_same_rule(stage, field):
    with pytest.raises(dg.Failure, match=f"{field} must be a plain folder name"):
        validate_run_config({"ops": {stage: {"config": {field: "x\n"}}}})


def test_storage_child_stays_inside(tmp_path):
    root = Storage(str(tmp_path / "root"))
    for bad in ("../x", "a/../../b", "/abs", "", "a//b", "s3://elsewhere"):
        with pytest.raises(ValueError, match="must be a relative path inside its folder"):
            root.child(bad)
    assert root.child("a/b").uri == f"{root.uri}/a/b"


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_any_name_is_refused_by_field_or_confined_to_its_folder(tmp_path_factory, name):
    base = tmp_path_factory.getbasetemp() / "names"
    registry = Storage(str(base / "registry"))
    try:
        checked = check_name(name, "model_name")
    except ValueError as e:
        assert "model_name must be a plain folder name" in str(e)
        return
    folder = registry.child(checked)
    real = os.path.realpath(folder.path)
    assert os.path.dirname(real) == os.path.realpath(registry.path) and os.path.basename(real) == checked


def test_a_latest_pointer_that_leaves_its_model_is_refused(tmp_path, small_tokenizer):
    registry, manifest = published(tmp_path, small_tokenizer)
    assert resolve_version(registry, "m").uri == manifest["uri"]
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "manifest.json").write_text("{}")
    (tmp_path / "registry" / "m" / "latest").write_text("../../outside\n")
    with pytest.raises(ValueError, match=r"pointer .*/m/latest names '../../outside'.*refusing to follow it"):
        resolve_version(registry, "m")
    out = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.publish.verify", str(tmp_path / "registry" / "m")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and out.stdout.startswith("FAIL") and "refusing to follow it" in out.stdout


def test_verify_reports_a_garbage_manifest_as_a_fail_line(tmp_path, small_tokenizer):
    _, manifest = published(tmp_path, small_tokenizer)
    folder = Storage(manifest["uri"])
    folder.write_bytes("manifest.json", b"\x00not json")
    assert "manifest.json is not a valid manifest" in verify(folder)[0]
    folder.write_bytes("manifest.json", b'{"files": {"../../etc/passwd": {"sha256": "x"}}}')
    assert "must be a relative path inside its folder" in verify(folder)[0]
    out = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.publish.verify", manifest["uri"]], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "FAIL" in out.stdout and "Traceback" not in out.stdout + out.stderr


# --- 3. token ids ---------------------------------------------------------------------------------


def test_ids_above_65535_are_stored_as_uint32_and_kept(tmp_path, small_tokenizer, sample_texts):
    data = json.loads(small_tokenizer.to_str())
    data["model"]["vocab"]["Z"] = 70000  # a tokenizer whose ids have a gap: get_vocab_size() says 512
    tok = load_tokenizer(json.dumps(data))
    assert id_space(tok) == 70001
    texts = [t + "\nZebra Zone\n" for t in sample_texts]
    _, shards, manifest = make_shards(
        tmp_path,
        Storage(str(tmp_path / "root")),
        tok,
        texts,
        engine="tokenizers",
        vocab_size=id_space(tok),
        shard_cfg=ShardConfig(val_fraction=0.3),
    )
    assert manifest["dtype"] == "uint32" and max(s["max_id"] for s in manifest["shards"]) == 70000
    tokens, _ = load_split_tokens(shards, "train")
    assert 70000 in tokens
    with pytest.raises(ShardError, match=r"holds token id 70000, outside the vocabulary of 512"):
        load_split_tokens(shards, "train", vocab_size=512)
    with pytest.raises(ValueError, match="token id 70000 is >= vocab_size 512"):
        write_shards(
            Storage(str(tmp_path / "root" / "corpus")),
            Storage(str(tmp_path / "x")),
            DocumentEncoder(tok, "tokenizers"),
            512,
            tokenizer_hash(tok.to_str()),
            ShardConfig(val_fraction=0.3),
        )


# --- 4. errors that name the thing ----------------------------------------------------------------


def test_garbage_and_truncated_tokenizer_json_name_the_source(small_tokenizer):
    with pytest.raises(ValueError, match="s3://b/tok.json is not a valid tokenizer.json"):
        load_tokenizer("garbage", "s3://b/tok.json")
    with pytest.raises(ValueError, match="tok.json is not a valid tokenizer.json"):
        load_tokenizer(small_tokenizer.to_str()[:500], "tok.json")


def test_a_given_garbage_tokenizer_fails_the_asset_by_name(tmp_path):
    from llm_pipeline.assets.corpus import raw_corpus
    from llm_pipeline.assets.tokenizer import tokenizer
    from llm_pipeline.definitions import make_resources

    (tmp_path / "tok.json").write_bytes(b"\xff\xfe garbage")
    result = dg.materialize(
        [raw_corpus, tokenizer],
        resources=make_resources(str(tmp_path / "root")),
        raise_on_error=False,
        instance=batch_instance(),
        partition_key="builtin",
        run_config={
            "ops": {
                "raw_corpus": {"config": {"max_bytes": 300_000}},
                "tokenizer": {"config": {"tokenizer_json_uri": str(tmp_path / "tok.json")}},
            }
        },
    )
    assert not result.success
    assert f"cannot use tokenizer_json_uri '{tmp_path / 'tok.json'}'" in step_failure(result)[1]


def test_broken_shard_manifests_name_the_file(tmp_path, small_tokenizer, sample_texts):
    _, shards, _ = make_shards(tmp_path, Storage(str(tmp_path / "root")), small_tokenizer, sample_texts)
    shards.write_bytes("manifest.json", b"{not json")
    with pytest.raises(ShardError, match=r"/shards/manifest.json is not valid JSON"):
        read_shard_manifest(shards)
    shards.write_bytes("manifest.json", b'{"shards": []}')
    with pytest.raises(ShardError, match=r"/shards/manifest.json lacks tokenizer_sha256, vocab_size, dtype, splits"):
        read_shard_manifest(shards)


def test_broken_final_weights_and_config_name_the_path(tmp_path):
    final = Storage(str(tmp_path / "final"))
    final.write_bytes("model_config.json", b'{"vocab_size": 300, "n_layerz": 2}')
    with pytest.raises(ValueError, match=r"final/model_config.json is not a valid model config"):
        load_trained_model(final)
    final.write_json("model_config.json", ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, ffn_hidden=32).to_dict())
    final.write_bytes("model.safetensors", b"\x00" * 100)
    with pytest.raises(ValueError, match=r"final/model.safetensors cannot be loaded into the model"):
        load_trained_model(final)


def test_s3_credential_errors_name_the_uri(s3_endpoint, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    store = Storage("s3://llm-pipeline-test/creds", client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    with pytest.raises(StorageError, match=r"s3://llm-pipeline-test/creds/x.json: NoCredentialsError"):
        store.write_bytes("x.json", b"{}")
    with pytest.raises(StorageError, match=r"s3://llm-pipeline-test/creds/x.json"):
        store.read_bytes("x.json")


# --- 5. non-finite floats -------------------------------------------------------------------------

BAD_FLOATS = [math.inf, -math.inf, math.nan]
FLOAT_FIELDS = [
    (lambda v: TrainConfig(shards_uris=("s",), run_uri="r", model=ModelConfig(vocab_size=300), lr=v), "lr"),
    (lambda v: TrainConfig(shards_uris=("s",), run_uri="r", model=ModelConfig(vocab_size=300), grad_clip=v), "grad_clip"),
    (lambda v: TrainConfig(shards_uris=("s",), run_uri="r", model=ModelConfig(vocab_size=300), weight_decay=v), "weight_decay"),
    (lambda v: ModelConfig(vocab_size=300, rope_theta=v), "rope_theta"),
    (lambda v: FilterConfig(near_dedup_threshold=v), "near_dedup_threshold"),
    (lambda v: ShardConfig(val_fraction=v), "val_fraction"),
    (lambda v: EvalConfig(temperature=v), "temperature"),
]


@pytest.mark.parametrize("value", BAD_FLOATS)
@pytest.mark.parametrize("build, field", FLOAT_FIELDS)
def test_every_float_setting_refuses_non_finite_values(build, field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number, got {value}"):
        build(value)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(
        [
            (stage, name)
            for stage, cls in STAGE_CONFIGS.items()
            for name, f in cls.model_fields.items()
            if f.annotation in (float, "float") or "float" in str(f.annotation)
        ]
    ),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10)),
)
def test_any_float_value_is_refused_by_field_or_accepted(field, value):
    stage, name = field
    try:
        validate_run_config({"ops": {stage: {"config": {name: value}}}})
    except dg.Failure as e:
        assert stage in e.description and "Invalid run configuration, nothing was run" in e.description
        if isinstance(value, float) and not math.isfinite(value):
            assert f"{name} must be a finite number" in e.description
    else:
        assert math.isfinite(value)


# --- 6. the remote shell --------------------------------------------------------------------------


@pytest.mark.parametrize("addr", ["10.0.0.1; rm -rf /", "$(reboot)", "host name", "a`b`", "x\n", "-oProxyCommand=sh"])
def test_master_addr_is_a_host_name_or_an_ip(addr):
    with pytest.raises(ValueError, match="master_addr must be a host name or an IP address"):
        LaunchConfig(nnodes=2, master_addr=addr, master_port=29500, hostfile="/h", ssh=True)


@pytest.mark.parametrize("addr", ["10.0.0.1", "node-3.cluster.local", "fe80::1", "localhost"])
def test_master_addr_accepts_hosts(addr):
    assert LaunchConfig(nnodes=2, master_addr=addr, master_port=29500, hostfile="/h", ssh=True).master_addr == addr


def _special_files(tmp_path) -> dict[str, str]:
    """Paths a user could name that are not regular files: reading them would hang or never end."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    return {"a FIFO": fifo, "a character device": str(link), "a folder": str(tmp_path)}


def test_user_named_files_that_could_hang_or_never_end_are_refused_before_any_work(tmp_path):
    from llm_pipeline.assets.configs import TokenizerConfig
    from llm_pipeline.storage.folders import read_named_file

    for kind, path in _special_files(tmp_path).items():
        with pytest.raises(ValueError, match=f"tokenizer_json_uri '{path}'.* is {kind}, not a regular file"):
            TokenizerConfig(tokenizer_json_uri=path).validate_library()
        with pytest.raises(ValueError, match=f"is {kind}"):
            read_named_file(path, "tokenizer_json_uri", 1 << 20)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2001)
    with pytest.raises(ValueError, match="is larger than 2,000 bytes"):
        read_named_file(str(big), "tokenizer_json_uri", 2000)
    link = tmp_path / "link.json"
    link.symlink_to(big)  # a link to a regular file is followed: a user's path may well be one
    assert read_named_file(str(link), "x", 5000) == b" " * 2001
    with pytest.raises(ValueError, match="no such file"):
        TokenizerConfig(tokenizer_json_uri=str(tmp_path / "missing.json")).validate_library()


@pytest.mark.parametrize("module", ["llm_pipeline.train.launch", "llm_pipeline.train.trainer"])
def test_a_training_config_that_could_hang_or_is_not_an_object_is_refused_by_name(tmp_path, module):
    cases = {path: f"is {kind}" for kind, path in _special_files(tmp_path).items()}
    for name, body, message in (
        ("null.json", "null", "must hold a JSON object, got NoneType"),
        ("list.json", "[]", "must hold a JSON object, got list"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("huge.json", " " * (17 << 20), "is larger than 16,777,216 bytes"),
    ):
        (tmp_path / name).write_text(body)
        cases[str(tmp_path / name)] = message
    extra = ["--launcher", "torchrun"] if module.endswith("launch") else []
    for path, message in cases.items():
        proc = subprocess.run([sys.executable, "-m", module, "--config", path, *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr, (path, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


class _Answer:
    """A one-connection-at-a-time HTTP server on loopback that answers every request with `behaviour`."""

    def __init__(self, behaviour):
        import socket
        import threading

        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/?token=sesame"
        self.behaviour, self.stop = behaviour, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            try:
                conn.recv(65536)
                self.behaviour(conn, self.stop)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self.stop.set()
        self.server.close()


def _dribble(conn, stop):
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
        if stop.wait(0.5):
            return
        conn.sendall(bytes([byte]))


def _endless(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
    chunk = b" " * 65536
    while not stop.is_set():
        conn.sendall(chunk)


def _a_list(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]")


@pytest.mark.parametrize(
    "behaviour, message",
    [(_dribble, "no whole answer within 2 s"), (_endless, "larger than 65,536 bytes"), (_a_list, "not a Ray dashboard's")],
)
def test_the_ray_address_check_ends_on_time_reads_little_and_never_shows_credentials(behaviour, message):
    import time

    from llm_pipeline.ray_cluster import check_reachable

    server = _Answer(behaviour)
    try:
        started = time.monotonic()
        with pytest.raises(ValueError, match=message) as e:
            check_reachable(server.url, timeout_s=2)
        assert time.monotonic() - started < 6
        assert "sesame" not in str(e.value) and "token=***" in str(e.value)
    finally:
        server.close()
    with pytest.raises(ValueError) as e:
        check_reachable("http://user:hunter2@127.0.0.1:1/", timeout_s=2)
    assert "hunter2" not in str(e.value) and "http://***@127.0.0.1:1/" in str(e.value)


def _broken_tokenizers(tokenizer) -> dict[str, tuple[str, str]]:
    """name -> (tokenizer.json, what the refusal says)."""
    base = json.loads(tokenizer.to_str())
    shared = json.loads(tokenizer.to_str())
    eos = next(t["id"] for t in shared["added_tokens"] if t["content"] == "<|endoftext|>")
    some_token = next(t for t in shared["model"]["vocab"] if len(t) > 1 and t != "<|endoftext|>")
    shared["model"]["vocab"][some_token] = eos
    huge = json.loads(tokenizer.to_str())
    huge["model"]["vocab"]["zzz-far-away"] = 2**32 - 1
    deleting = {**base, "normalizer": {"type": "Replace", "pattern": {"Regex": "[a-z]"}, "content": ""}}
    word_level = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": 0,
                "content": "<|endoftext|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"<|endoftext|>": 0, "def": 1, "[UNK]": 2}, "unk_token": "[UNK]"},
    }
    return {
        "an id shared with end-of-text": (json.dumps(shared), "ids belong to more than one token"),
        "an id of 2**32-1": (json.dumps(huge), "its largest id is 4,294,967,295"),
        "a normalizer deleting lowercase letters": (json.dumps(deleting), "does not give the text back"),
        "a WordLevel tokenizer of three tokens": (json.dumps(word_level), "does not give the text back"),
    }


def test_tokenizers_that_would_corrupt_the_data_are_refused_by_name(small_tokenizer, sample_texts):
    from llm_pipeline.tokenize.bpe import check_tokenizer

    check_tokenizer(small_tokenizer, sample_texts)  # ours gives every byte back
    for _kind, (text, message) in _broken_tokenizers(small_tokenizer).items():
        with pytest.raises(ValueError, match=f"given.json: .*{re.escape(message)}"):
            check_tokenizer(load_tokenizer(text), sample_texts, "given.json")


def test_a_given_corrupting_tokenizer_fails_its_step_before_any_shard_is_written(tmp_path, small_tokenizer):
    from llm_pipeline.assets.corpus import raw_corpus
    from llm_pipeline.assets.shards import tokenized_shards
    from llm_pipeline.assets.tokenizer import tokenizer
    from llm_pipeline.definitions import make_resources

    text, message = _broken_tokenizers(small_tokenizer)["an id shared with end-of-text"]
    (tmp_path / "tok.json").write_text(text)
    root = tmp_path / "root"
    result = dg.materialize(
        [raw_corpus, tokenizer, tokenized_shards],
        resources=make_resources(str(root)),
        raise_on_error=False,
        instance=batch_instance(),
        partition_key="builtin",
        run_config={
            "ops": {
                "raw_corpus": {"config": {"max_bytes": 300_000}},
                "tokenizer": {"config": {"tokenizer_json_uri": str(tmp_path / "tok.json")}},
            }
        },
    )
    assert not result.success
    step, description = step_failure(result)
    assert step == "tokenizer" and f"{tmp_path / 'tok.json'}: 1 ids belong to more than one token" in description
    assert not (root / "tokenized_shards").exists()


@pytest.mark.parametrize(
    "stage, field, value",
    [
        ("trained_checkpoint", "master_addr", "a" * 10_000_000),
        ("published_model", "model_name", "a" * 10_000_000),
        ("eval_metrics", "compare_with", "a" * 10_000_000),
        ("eval_metrics", "min_scores", {"a" * 10_000_000: 0.5}),
        ("tokenizer", "tokenizer_json_uri", "/tmp/" + "a" * 10_000_000),
        ("trained_checkpoint", "master_addr", "http://user:hunter2@" + "a" * 10_000_000),
    ],
)
def test_a_huge_bad_setting_is_named_not_echoed(stage, field, value):
    with pytest.raises(dg.Failure) as e:
        validate_run_config({"ops": {stage: {"config": {field: value}}}})
    description = e.value.description
    assert description.startswith("Invalid run configuration, nothing was run.") and len(description) < 3000, description[:300]
    assert "hunter2" not in description


def test_careless_corpus_options_are_refused_or_bounded(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_pipeline.corpus.build import CorpusConfig, _worker_count
    from llm_pipeline.corpus.sources import list_sources

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i}.txt").write_text(f"document {i} " * 50)
    listing = list_sources(str(src), "**/*")
    assert _worker_count(CorpusConfig(source_uri=str(src), workers=32), listing) <= (os.cpu_count() or 1)
    proc = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.corpus", str(src), "--out", "memory://corpus"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "memory:// lives only as long as this command" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty / "rows.parquet")
    proc = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.corpus", str(empty), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "the 1 files read hold no records (an empty file, a zero-row Parquet file" in proc.stderr


def test_renamed_tensors_and_a_version_linked_out_of_the_registry_fail_verification(tmp_path, small_tokenizer):
    """Both passed verify with every sha256 updated, and transformers then ran a randomly initialised model."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from llm_pipeline.publish.generate import generate

    registry, manifest = published(tmp_path, small_tokenizer)
    folder = Storage(manifest["uri"])
    assert verify(folder) == []
    weights = load_file(folder.full("model.safetensors"))
    name = sorted(weights)[0]
    weights[f"../../etc/{name}"] = weights.pop(name)
    save_file(weights, folder.full("model.safetensors"))
    published_manifest = folder.read_json("manifest.json")
    published_manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(folder.read_bytes("model.safetensors")).hexdigest()
    folder.write_json("manifest.json", published_manifest)
    problems = verify(folder)
    assert f"model.safetensors lacks the parameter {name}" in problems
    assert f"model.safetensors holds '../../etc/{name}', not a parameter of the architecture" in problems
    with pytest.raises(ValueError, match="fails verification: model.safetensors lacks the parameter"):
        generate(registry.child("m").uri, "def ")

    # A version folder that is a link to a folder elsewhere, however intact what it points at.
    _, elsewhere = published(tmp_path / "elsewhere", small_tokenizer)
    linked = tmp_path / "registry" / "m" / "v-linked"
    linked.symlink_to(elsewhere["uri"])
    assert verify(Storage(str(linked)))[0].startswith(f"{linked} is a symbolic link")
    (tmp_path / "registry" / "m" / "latest").write_text("v-linked\n")
    with pytest.raises(ValueError, match="is a symbolic link"):
        generate(registry.child("m").uri, "def ")


def _rewrite_weights(folder: Storage, data: bytes) -> None:
    """model.safetensors replaced, its sha256 updated in the manifest: only the checks of the content stand."""
    import hashlib

    folder.write_bytes("model.safetensors", data)
    published_manifest = folder.read_json("manifest.json")
    published_manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    folder.write_json("manifest.json", published_manifest)


def test_safetensors_headers_that_claim_what_the_file_does_not_hold_fail_verification(tmp_path, small_tokenizer):
    """A header claiming 2**62 bytes, a 2**31 x 2**31 tensor, shapes that are not the architecture's and
    a config with a vocabulary of 2**31 ended in tracebacks (or allocations) inside `generate`."""
    import struct

    from llm_pipeline.publish.generate import generate

    registry, manifest = published(tmp_path, small_tokenizer)
    folder = Storage(manifest["uri"])
    original = folder.read_bytes("model.safetensors")
    (length,) = struct.unpack("<Q", original[:8])
    header = json.loads(original[8 : 8 + length])
    name = sorted(k for k in header if k != "__metadata__")[0]

    def with_header(change) -> bytes:
        edited = json.loads(original[8 : 8 + length])
        change(edited)
        raw = json.dumps(edited).encode()
        return struct.pack("<Q", len(raw)) + raw + original[8 + length :]

    cases = {
        "its header claims 4,611,686,018,427,387,904 bytes": struct.pack("<Q", 2**62) + original[8:],
        "has shape [2147483648, 2147483648], the architecture's is": with_header(lambda h: h[name].update(shape=[2**31, 2**31])),
        "claims bytes": with_header(lambda h: h[name].update(data_offsets=[0, 2**40])),
        "is stored as I64": with_header(lambda h: h[name].update(dtype="I64")),
    }
    for words, data in cases.items():
        _rewrite_weights(folder, data)
        problems = verify(folder)
        assert any(words in p for p in problems), (words, problems)
        with pytest.raises(ValueError, match="fails verification"):
            generate(registry.child("m").uri, "def ")
    _rewrite_weights(folder, original)
    assert verify(folder) == []

    config = folder.read_json("config.json")
    folder.write_json("config.json", {**config, "vocab_size": 2**31})
    published_manifest = folder.read_json("manifest.json")
    published_manifest["files"]["config.json"]["sha256"] = folder.sha256("config.json")
    folder.write_json("manifest.json", published_manifest)
    [problem] = verify(folder)
    assert problem.startswith("config.json does not describe a model of this project") and "vocab_size" in problem


def _event_log_text(instance, run_id: str) -> str:
    """Everything the run put in the event log: messages, failures with their stacks, metadata."""
    return "\n".join(repr(record) for record in instance.all_logs(run_id))


def test_credentials_in_a_source_uri_stay_out_of_the_event_log(tmp_path):
    from llm_pipeline.assets.corpus import raw_corpus
    from llm_pipeline.definitions import make_resources

    instance = batch_instance()
    uri = "http://reader:hunter2@127.0.0.1:1/corpus.jsonl?token=s3cr3t"
    result = dg.materialize(
        [raw_corpus],
        resources=make_resources(str(tmp_path / "root")),
        raise_on_error=False,
        instance=instance,
        partition_key="builtin",
        run_config={"ops": {"raw_corpus": {"config": {"source_uri": uri}}}},
    )
    assert not result.success
    step, description = step_failure(result)
    assert step == "raw_corpus" and "http://***@127.0.0.1:1/corpus.jsonl?token=***" in description, description
    text = _event_log_text(instance, result.run_id)
    assert "hunter2" not in text and "s3cr3t" not in text


def test_log_lines_metadata_and_failures_of_a_step_are_redacted(tmp_path):
    """The mechanism every asset and sensor body goes through, including a Pipes process's log lines."""
    from llm_pipeline.assets.redaction import redacted_step

    secret = "https://me:hunter2@example.com/data?api_key=s3cr3t"
    script = tmp_path / "external.py"
    script.write_text(
        f"from dagster_pipes import open_dagster_pipes\nwith open_dagster_pipes() as pipes:\n    pipes.log.info({secret!r})\n"
    )

    @dg.asset
    @redacted_step
    def leaky(context: dg.AssetExecutionContext, pipes_subprocess_client: dg.PipesSubprocessClient):
        context.log.info(f"reading {secret}")
        pipes_subprocess_client.run(command=[sys.executable, str(script)], context=context).get_results()
        return dg.Output(1, metadata={"source": secret, "nested": {"uri": secret}, "path": dg.MetadataValue.path(secret)})

    @dg.asset(deps=[leaky])
    @redacted_step
    def failing(context: dg.AssetExecutionContext):
        raise OSError(f"cannot read {secret}")

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [leaky, failing], instance=instance, raise_on_error=False, resources={"pipes_subprocess_client": dg.PipesSubprocessClient()}
    )
    [materialization] = result.asset_materializations_for_node("leaky")
    assert materialization.metadata["source"] == dg.MetadataValue.text("https://***@example.com/data?api_key=***")
    assert materialization.metadata["nested"] == dg.MetadataValue.json({"uri": "https://***@example.com/data?api_key=***"})
    assert step_failure(result)[0] == "failing"
    text = _event_log_text(instance, result.run_id)
    assert "OSError: cannot read https://***@example.com/data?api_key=***" in text
    assert text.count("https://***@example.com/data?api_key=***") >= 5  # two log lines, three metadata values, the failure
    assert "hunter2" not in text and "s3cr3t" not in text


def test_gcs_without_credentials_fails_in_seconds_naming_them(monkeypatch):
    """gcsfs alone tries each way to find credentials, then retries the request: about a minute."""
    import time

    from llm_pipeline.corpus.sources import CorpusSourceError, list_sources
    from llm_pipeline.storage import folders

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent")  # no gcloud application-default credentials either
    monkeypatch.setattr(folders, "_GCS_CREDENTIALS", [])
    start = time.monotonic()
    with pytest.raises(StorageError, match="gs://bucket/root: no Google Cloud credentials here: set GOOGLE_APPLICATION_CREDENTIALS"):
        Storage("gs://bucket/root")
    with pytest.raises(CorpusSourceError, match="cannot be listed: StorageError: gs://bucket/corpus: no Google Cloud credentials"):
        list_sources("gs://bucket/corpus", "**/*")
    assert time.monotonic() - start < 30


def test_an_http_source_that_cannot_be_reached_is_not_called_missing():
    import http.server
    import threading

    from llm_pipeline.corpus.sources import CorpusSourceError, SourceMissing, list_sources

    class Server(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.send_error(404 if "missing" in self.path else 500)

        do_GET = do_HEAD

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(CorpusSourceError, match=r"'http://\*\*\*@127.0.0.1:1/c.jsonl' cannot be reached: ClientConnectorError"):
            list_sources("http://user:hunter2@127.0.0.1:1/c.jsonl", "**/*")
        with pytest.raises(CorpusSourceError, match="cannot be reached: ClientResponseError: 500"):
            list_sources(f"http://127.0.0.1:{server.server_port}/broken.jsonl", "**/*")
        with pytest.raises(SourceMissing, match="does not exist"):
            list_sources(f"http://127.0.0.1:{server.server_port}/missing.jsonl", "**/*")
    finally:
        server.shutdown()
