"""The second pass over hostile and broken input: each class of input is lost nowhere, hangs nothing,
slips past no gate, and fails with one line that names it."""

import bz2
import gzip
import json
import lzma
import os
import socket
import subprocess
import sys

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_pipeline.assets.configs import validate_run_config
from llm_pipeline.automation import new_corpus_sensor, new_files
from llm_pipeline.corpus.batches import batch_key
from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.corpus.clean import record_source
from llm_pipeline.corpus.landing import LandingError, read_cursor
from llm_pipeline.corpus.sources import CorpusSourceError, list_sources
from llm_pipeline.definitions import make_resources
from llm_pipeline.evaluate.results import ContaminationReport, HarnessResult, Score, SetContamination
from llm_pipeline.publish.verify import verify
from llm_pipeline.storage.folders import NotARegularFile, Storage
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.data import DataMixture, ShardError, TokenWindows, read_shard_manifest
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.token_store import TokenCache, open_split
from llm_pipeline_tests.helpers import distinct_text, eval_report, make_shards, published

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = "a perfectly ordinary document about the weather, long enough to pass every filter. " * 3


def _records(n: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"text": distinct_text(i)}).encode() + b"\n" for i in range(start, start + n))


def _build(src, out, **cfg) -> dict:
    return build_corpus(CorpusConfig(source_uri=str(src), **cfg), Storage(str(out))).model_dump(mode="json")


def _cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


# --- lost silently: a compressed stream cut short ----------------------------------------------------


def _two_frames(checksum: bool = True) -> tuple[bytes, int]:
    compressor = zstandard.ZstdCompressor(write_checksum=checksum)
    first = compressor.compress(_records(50))
    return first + compressor.compress(_records(50, start=50)), len(first)


def test_a_zstd_file_whose_last_frame_is_cut_short_reports_corrupt_stream(tmp_path):
    data, first = _two_frames()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cut.jsonl.zst").write_bytes(data[: first + (len(data) - first) // 2])
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    (tmp_path / "src" / "whole.jsonl.zst").write_bytes(compressor.compress(_records(50, 100)) + compressor.compress(_records(50, 150)))
    manifest = _build(tmp_path / "src", tmp_path / "out")
    cut = next(f for f in manifest["files"] if f["uri"].endswith("cut.jsonl.zst"))
    assert cut["dropped"].get("corrupt_stream") == 1 and cut["records"] == 51  # the first frame's 50, then the break
    whole = next(f for f in manifest["files"] if f["uri"].endswith("whole.jsonl.zst"))
    assert whole["records"] == 100 and whole["dropped"] == {}
    assert "zstd frame" in manifest["dropped_examples"]["corrupt_stream"]


def test_a_zstd_frame_missing_its_announced_checksum_is_corrupt(tmp_path):
    data, _ = _two_frames(checksum=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl.zst").write_bytes(data[:-4])  # the last frame's 4-byte checksum gone
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest["dropped"].get("corrupt_stream") == 1


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["zst", "gz", "bz2", "xz"]), st.floats(0.05, 0.95))
def test_any_compressed_file_cut_inside_its_stream_is_reported(tmp_path_factory, codec, where):
    """Every codec, cut anywhere inside the last frame: what came before is kept and the break is counted."""
    first, second = _records(40), _records(40, start=40)
    pack = {
        "zst": lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b),
        "gz": gzip.compress,
        "bz2": bz2.compress,
        "xz": lzma.compress,
    }[codec]
    head, tail = pack(first), pack(second)
    tmp = tmp_path_factory.mktemp("cut")
    (tmp / "src").mkdir()
    (tmp / "src" / f"a.jsonl.{codec}").write_bytes(head + tail[: max(1, int(len(tail) * where))])
    manifest = _build(tmp / "src", tmp / "out")
    assert manifest["dropped"].get("corrupt_stream") == 1, manifest["dropped"]
    assert 40 <= manifest["documents"] < 80


# --- stops the pipeline: names that are not UTF-8, listings that fail, a broken cursor ---------------


def _landing(tmp_path):
    resources = make_resources(str(tmp_path / "root"))
    landing = tmp_path / "root" / "landing"
    landing.mkdir(parents=True)
    return resources, landing


def _tick(resources, cursor):
    context = dg.build_sensor_context(cursor=cursor, resources={k: resources[k] for k in ("storage", "automation")})
    return new_corpus_sensor.evaluate_tick(context)


def test_a_file_name_that_is_not_utf8_is_skipped_named_and_the_rest_lands(tmp_path):
    resources, landing = _landing(tmp_path)
    (landing / "good.txt").write_text(DOC)
    with open(os.path.join(os.fsencode(landing), b"\xff\xfe.txt"), "w") as f:
        f.write(DOC)
    cursor = _tick(resources, None).cursor
    result = _tick(resources, cursor)
    [request] = result.dynamic_partitions_requests
    [key] = request.partition_keys
    record = json.loads((tmp_path / "root" / "batches" / f"{key}.json").read_text())
    assert list(record["files"]) == ["good.txt"]
    storage = resources["storage"]
    refused = new_files(storage, resources["automation"], str(landing), result.cursor).refused
    assert refused == ["\\xff\\xfe.txt (undecodable_name)"]
    assert "\\xff\\xfe.txt (undecodable_name)" in _tick(resources, result.cursor).skip_message
    # The corpus command line on the same folder: the file is counted and named, the rest is read.
    proc = _cli("llm_pipeline.corpus", str(landing), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["files_read"] == 1 and summary["skipped"] == {"undecodable_name": 1}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert any(f["uri"].endswith("/\\xff\\xfe.txt") and f["reason"] == "undecodable_name" for f in manifest["files"])


def _deeper_than_path_max(root) -> str:  # the path of the deepest folder
    """A real folder the OS cannot list by path: nested past PATH_MAX (made through directory fds)."""
    fd = os.open(root, os.O_RDONLY)
    name, depth = "d" * 200, 0
    try:
        while depth * 201 < 4200:
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, depth = inner, depth + 1
        with open(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write(DOC)
    finally:
        os.close(fd)
    return "/".join([name] * depth)


def test_a_subfolder_that_cannot_be_listed_is_named_and_the_rest_lands(tmp_path):
    resources, landing = _landing(tmp_path)
    (landing / "good.txt").write_text(DOC)
    deep = _deeper_than_path_max(landing)
    listing = list_sources(str(landing), "**/*")
    assert [f.rel for f in listing.files] == ["good.txt"]
    [skipped] = listing.skipped
    assert skipped.reason == "unreadable_folder" and (deep + "/").startswith(skipped.rel + "/")
    deep = skipped.rel
    result = _tick(resources, _tick(resources, None).cursor)
    assert len(result.dynamic_partitions_requests[0].partition_keys) == 1
    refused = new_files(resources["storage"], resources["automation"], str(landing), result.cursor).refused
    assert refused == [f"{deep} (unreadable_folder)"]


def test_a_landing_folder_that_cannot_be_listed_fails_the_tick_by_name(tmp_path):
    resources, landing = _landing(tmp_path)
    landing.rmdir()
    os.mkfifo(landing)  # exists, and is no folder to list
    with pytest.raises(Exception, match=r"new_corpus_sensor cannot list the landing folder: .*landing.*NotADirectoryError"):
        _tick(resources, None)


def test_a_missing_or_empty_landing_folder_is_a_quiet_skip(tmp_path):
    resources, landing = _landing(tmp_path)
    assert "no new complete files" in _tick(resources, None).skip_message
    landing.rmdir()
    assert "no new complete files" in _tick(resources, None).skip_message


@pytest.mark.parametrize("cursor", ["not json", "[]", '{"taken": []}', '{"taken": {}, "seen": {"a": 1}}', "[" * 5000])
def test_a_cursor_the_sensor_cannot_read_is_refused_with_the_way_out(tmp_path, cursor):
    resources, _ = _landing(tmp_path)
    with pytest.raises(LandingError, match=r"cursor is not one this release writes.*--delete"):
        read_cursor(cursor, now=0)
    with pytest.raises(Exception, match=r"dagster sensor cursor new_corpus_sensor --delete"):
        _tick(resources, cursor)


def test_batch_keys_hash_every_name_the_listing_gives():
    assert batch_key({"a.txt": "1:2", "é/b.txt": "3:4"}).count("-") == 2


# --- slips past a gate or a rule ------------------------------------------------------------------


def _failure(run_config: dict) -> str:
    with pytest.raises(dg.Failure) as e:
        validate_run_config(run_config)
    return e.value.description


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_min_scores_must_be_finite(value):
    message = _failure({"ops": {"eval_metrics": {"config": {"min_scores": {"llm_pipeline_heldout_continuation/acc": value}}}}})
    assert "min_scores['llm_pipeline_heldout_continuation/acc'] must be a finite number" in message


def test_min_scores_must_name_a_metric_the_task_reports():
    message = _failure({"ops": {"eval_metrics": {"config": {"min_scores": {"llm_pipeline_heldout_continuation/accuracy": 0.3}}}}})
    assert "task 'llm_pipeline_heldout_continuation' does not report 'accuracy' (it reports acc, acc_norm)" in message
    validate_run_config({"ops": {"eval_metrics": {"config": {"min_scores": {"llm_pipeline_heldout_continuation/acc_norm": 0.3}}}}})


def test_huge_mixture_weights_are_equal_shares_and_tiny_ones_are_refused():
    model = ModelConfig(vocab_size=300)
    cfg = TrainConfig(shards_uris=("a", "b"), run_uri="r", model=model, mixture={"a": 1e308, "b": 1e308}, shard_sources=("a", "b"))
    windows = [TokenWindows(np.arange(1000) % 300, 16, source=i, name=n) for i, n in enumerate("ab")]
    mixture = DataMixture(windows, list(cfg.mixture.values()))
    assert mixture.block_counts.tolist() == [5000, 5000]
    assert mixture.windows(np.arange(64)).shape == (64, 17)
    with pytest.raises(ValueError, match=r"mixture weight of 'b' is below 1/10000 of the total"):
        TrainConfig(shards_uris=("a", "b"), run_uri="r", model=model, mixture={"a": 1e308, "b": 1.0}, shard_sources=("a", "b"))


@pytest.mark.parametrize(
    "stage, values, words",
    [
        ("trained_checkpoint", {"d_model": 65536, "n_layers": 1000, "n_heads": 64}, ["this run cannot fit", "parameters", "AdamW state"]),
        ("trained_checkpoint", {"max_seq_len": 10**12}, ["max_seq_len must be <= 2097152, got 1000000000000"]),
        ("trained_checkpoint", {"micro_batch": 10**12}, ["this run cannot fit", "micro_batch 1000000000000"]),
        ("trained_checkpoint", {"nproc": 10**6}, ["nproc 1000000 exceeds this node's"]),
        ("eval_metrics", {"contamination_ngram": 10**9}, ["contamination_ngram must be <= 64"]),
        ("eval_metrics", {"batch_size": 10**12}, ["batch_size must be <= 4096"]),
        ("trained_checkpoint", {"steps": 10**18}, ["steps must be <= 1000000000"]),
        ("trained_checkpoint", {"warmup_steps": 10**9}, ["warmup_steps (1,000,000,000) exceeds steps (180)"]),
        ("eval_metrics", {"temperature": 1e308}, ["temperature must be <= 100"]),
        ("eval_metrics", {"max_loss": -1.0}, ["max_loss must be > 0"]),
        ("eval_metrics", {"max_perplexity": 0.5}, ["max_perplexity must be >= 1"]),
        ("eval_metrics", {"harness_tasks": ["../../etc/passwd"]}, ["harness task '../../etc/passwd' is not a task name"]),
    ],
)
def test_sizes_that_cannot_fit_or_mean_nothing_are_refused_before_any_work(stage, values, words):
    message = _failure({"ops": {stage: {"config": values}}})
    for word in words:
        assert word in message


def test_the_demo_and_test_sizes_fit():
    validate_run_config({})
    validate_run_config({"ops": {"trained_checkpoint": {"config": {"steps": 5}}}})  # a short trial keeps the default warmup
    validate_run_config({"ops": {"trained_checkpoint": {"config": {"preset": "125m", "seq_len": 256, "micro_batch": 4}}}})


def test_a_nan_minimum_is_never_met():
    from llm_pipeline.assets.evaluation import harness_scores_meet_minimums

    harness = HarnessResult(results={"task": {"acc": Score(value=0.01, stderr=None)}}, n_samples={"task": 1}, lm_eval_version="0.4")
    result = harness_scores_meet_minimums(eval_metrics=eval_report({"harness": harness}, min_scores={"task/acc": float("nan")}))
    assert not result.passed and "task/acc 0.0100 is not >= nan" in result.description


def test_the_contamination_gate_does_not_pass_when_nothing_was_measured():
    from llm_pipeline.assets.evaluation import no_eval_contamination

    nothing = SetContamination(documents=5, too_short=5, sharing=0, sharing_fraction=0.0, contaminated=0, fraction=0.0, mean_overlap=0.0)
    report = ContaminationReport(n=64, min_overlap=0.5, fraction=0.0, sets={"heldout": nothing})
    result = no_eval_contamination(eval_metrics=eval_report({"contamination": report}, max_contamination=0.2))
    assert not result.passed and "cannot be measured" in result.description


def test_a_batch_rebuilt_from_changed_or_missing_files_names_them(tmp_path):
    src = tmp_path / "landing"
    src.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (src / name).write_text(f"{DOC} {name}")
    listing = list_sources(str(src), "**/*")
    identities = {f.rel: f"{f.size}:{f.version}" for f in listing.files}
    (src / "b.txt").write_text(f"{DOC} b, edited after it landed")
    (src / "c.txt").unlink()
    manifest = _build(src, tmp_path / "out", files=identities)
    outcomes = {os.path.basename(f["uri"]): f.get("reason", f["outcome"]) for f in manifest["files"]}
    assert outcomes == {"a.txt": "read", "b.txt": "changed_since_landing", "c.txt": "missing"}
    assert manifest["documents"] == 1


# --- manifests: every name obeys one rule, every field is checked -------------------------------------


@pytest.fixture()
def shard_set(tmp_path, small_tokenizer, sample_texts):
    _, shards, manifest = make_shards(tmp_path, Storage(str(tmp_path / "root")), small_tokenizer, sample_texts)
    return shards, manifest


def _edit(shards: Storage, manifest: dict, change) -> None:
    edited = json.loads(json.dumps(manifest))
    change(edited)
    shards.write_json("manifest.json", edited)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # restored each time
@given(st.sampled_from(["../../outside.tokens", "/etc/passwd", "a/../../b", "..", "s3://x/y", "a\\b", "x\n"]) | st.text(max_size=30))
def test_a_shard_manifest_name_is_confined_to_its_folder(shard_set, tmp_path_factory, name):
    shards, manifest = shard_set
    outside = tmp_path_factory.getbasetemp() / "outside.tokens"
    outside.write_bytes(b"\x00" * 64)

    def rename(m):
        m["flat"]["train"]["tokens"]["name"] = name

    _edit(shards, manifest, rename)
    try:
        open_split([shards], "train", TokenCache(str(tmp_path_factory.mktemp("cache")), 100 << 30))
    except (ShardError, ValueError) as e:
        assert name in str(e) or "relative path" in str(e) or "flat.train.tokens is invalid" in str(e), str(e)
    else:
        raise AssertionError(f"manifest name {name!r} was read")
    finally:
        shards.write_json("manifest.json", manifest)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m["flat"]["train"]["tokens"].pop("sha256"), "flat.train.tokens is invalid"),
        (lambda m: m["flat"]["train"].update(dtype="float64"), "flat.train.dtype is invalid"),
        (lambda m: m["flat"]["train"]["tokens"].update(count=m["flat"]["train"]["tokens"]["count"] + 1), "flat.train.tokens is invalid"),
        (lambda m: m["shards"][0].update(tokens=-1), "shards[0] is invalid"),
        (lambda m: m.update(dtype="int8"), "dtype is invalid"),
    ],
)
def test_a_shard_manifest_field_out_of_shape_is_named(shard_set, change, words):
    shards, manifest = shard_set
    _edit(shards, manifest, change)
    with pytest.raises(ShardError, match=words.replace("[", r"\[").replace("]", r"\]")):
        read_shard_manifest(shards)


def test_a_manifest_nested_a_thousand_levels_deep_is_not_json_we_read(shard_set):
    shards, _ = shard_set
    shards.write_bytes("manifest.json", b'{"shards": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(ShardError, match="nested too deeply"):
        read_shard_manifest(shards)


def test_a_token_file_changed_in_place_with_size_and_mtime_kept_is_verified_again(shard_set, tmp_path):
    shards, manifest = shard_set
    cache = str(tmp_path / "cache")
    open_split([shards], "train", TokenCache(cache, 100 << 30))
    path = os.path.join(shards.path, "train.tokens")
    stat = os.stat(path)
    data = bytearray(open(path, "rb").read())
    data[0:2] = bytes([data[1], data[0]]) if data[0] != data[1] else bytes([(data[0] + 1) % 256, data[1]])
    with open(path, "r+b") as f:
        f.write(bytes(data[:2]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(ShardError, match="does not match its sha256"):
        open_split([shards], "train", TokenCache(cache, 100 << 30))


def test_a_document_index_that_lies_is_refused(shard_set, tmp_path):
    shards, manifest = shard_set
    ends = np.frombuffer(open(os.path.join(shards.path, "train.docs"), "rb").read(), dtype="<u8").copy()
    ends[-1] += 1  # the last document ends past the tokens

    def lie(m):
        m["flat"]["train"]["docs"]["sha256"] = __import__("hashlib").sha256(ends.tobytes()).hexdigest()

    shards.write_bytes("train.docs", ends.tobytes())
    _edit(shards, manifest, lie)
    with pytest.raises(ShardError, match="end offsets must never decrease and must end at"):
        open_split([shards], "train", TokenCache(str(tmp_path / "cache"), 100 << 30))


def test_a_token_file_of_odd_size_or_a_folder_is_named(shard_set, tmp_path):
    shards, manifest = shard_set
    path = os.path.join(shards.path, "train.tokens")
    with open(path, "ab") as f:
        f.write(b"\x01")
    with pytest.raises(ShardError, match=r"train.tokens is \d[\d,]* bytes; the manifest says"):
        open_split([shards], "train", TokenCache(str(tmp_path / "cache"), 100 << 30))
    os.remove(path)
    os.mkdir(path)
    with pytest.raises(ShardError, match="train.tokens.*a folder, not a regular file"):
        open_split([shards], "train", TokenCache(str(tmp_path / "cache"), 100 << 30))


# --- hangs or follows what it should not -------------------------------------------------------------


@pytest.mark.timeout(60)
def test_published_files_that_are_not_regular_files_inside_the_folder_are_refused(tmp_path, small_tokenizer):
    registry, manifest = published(tmp_path, small_tokenizer)
    folder = tmp_path / "registry" / "m" / manifest["version"]
    weights = folder / "model.safetensors"
    (tmp_path / "elsewhere.safetensors").write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(tmp_path / "elsewhere.safetensors")  # same bytes, outside the folder
    assert any("not a regular file: model.safetensors" in p and "symbolic link" in p for p in verify(Storage(str(folder))))
    weights.unlink()
    os.mkfifo(weights)
    assert any("not a regular file: model.safetensors" in p and "FIFO" in p for p in verify(Storage(str(folder))))
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to("/dev/zero")
    assert any("not a regular file: tokenizer.json" in p for p in verify(Storage(str(folder))))
    latest = tmp_path / "registry" / "m" / "latest"
    latest.unlink()
    os.mkfifo(latest)
    proc = _cli("llm_pipeline.publish.verify", str(tmp_path / "registry" / "m"), timeout=60)
    assert proc.returncode == 1 and "FIFO, not a regular file" in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.timeout(120)
def test_a_source_holding_fifos_sockets_and_links_accounts_for_every_entry(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.txt").write_text(DOC)
    os.mkfifo(src / "pipe.txt")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sock.txt"))
        (src / "to_pipe.txt").symlink_to(src / "pipe.txt")
        (src / "null.txt").symlink_to("/dev/null")
        manifest = _build(src, tmp_path / "out")
    reasons = {os.path.basename(f["uri"]): f.get("reason", f["outcome"]) for f in manifest["files"]}
    assert reasons == {
        "good.txt": "read",
        "pipe.txt": "not_a_regular_file",
        "sock.txt": "not_a_regular_file",
        "to_pipe.txt": "not_a_regular_file",
        "null.txt": "symlink_outside_source",
    }
    assert manifest["files_matched"] == manifest["files_read"] + manifest["files_skipped"] == len(manifest["files"])


def test_a_file_opened_for_reading_is_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(NotARegularFile, match="a FIFO"):
        Storage(str(tmp_path)).read_bytes("pipe")


# --- raw tracebacks: one line that names the problem -------------------------------------------------


def test_corpus_command_line_errors_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text(DOC)
    (tmp_path / "file").write_text("x")
    _one_line_error(_cli("llm_pipeline.corpus", str(src), "--out", str(tmp_path / "file")), "is an existing file")
    _one_line_error(
        _cli("llm_pipeline.corpus", str(src), "--out", str(tmp_path / "o"), "--glob", "***"), "glob '***' is not a valid pattern"
    )
    assert _cli("llm_pipeline.corpus", str(src), "--out", str(tmp_path / "used")).returncode == 0
    _one_line_error(_cli("llm_pipeline.corpus", str(src), "--out", str(tmp_path / "used")), "is not empty")
    _one_line_error(_cli("llm_pipeline.corpus", str(src), "--out", str(src / "out")), "is inside the source")
    assert not (src / "out").exists()


def test_the_launchpad_refuses_an_invalid_glob_by_field():
    assert "glob '***' is not a valid pattern" in _failure({"ops": {"raw_corpus": {"config": {"glob": "***"}}}})


def test_generate_on_a_missing_model_is_one_line(tmp_path):
    _one_line_error(_cli("llm_pipeline.publish.generate", str(tmp_path / "registry" / "nope")), "no published model")


# --- classes: string types, line endings, locations, bounded messages ------------------------------------


@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())])
def test_every_arrow_string_type_is_read_asdistinct_text(tmp_path, arrow_type):
    (tmp_path / "src").mkdir()
    texts = [distinct_text(i) for i in range(5)]
    column = (
        pa.array(texts, pa.string()).cast(arrow_type) if not pa.types.is_dictionary(arrow_type) else pa.array(texts).dictionary_encode()
    )
    pq.write_table(pa.table({"text": column, "id": list(range(5))}), tmp_path / "src" / "a.parquet")
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest["documents"] == 5, manifest["dropped_examples"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_gives_the_same_records(tmp_path, newline):
    (tmp_path / "src").mkdir()
    lines = [json.dumps({"text": f"{distinct_text(i)}\nline two"}).encode() for i in range(4)]
    (tmp_path / "src" / "a.jsonl").write_bytes(newline.join(lines) + newline)
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest["records"] == 4 and manifest["documents"] == 4 and manifest["dropped"] == {}


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), st.integers(1, 10**6), st.integers(1, 10**6))
def test_a_record_location_cannot_be_mistaken_for_another_file_s(a, b, line_a, line_b):
    """source strings are injective: (file, location) pairs that differ give different strings."""
    for loc_a in ("", f"line={line_a}"):
        for loc_b in ("", f"row={line_b}", f"line={line_b}"):
            if (a, loc_a) != (b, loc_b):
                assert record_source(a, loc_a) != record_source(b, loc_b)


def test_error_details_are_bounded_whatever_the_input(tmp_path):
    (tmp_path / "src").mkdir()
    huge = "k" * 1_000_000
    (tmp_path / "src" / "a.jsonl").write_bytes(json.dumps({huge: 1}).encode() + b"\n" + _records(1))
    manifest = _build(tmp_path / "src", tmp_path / "out")
    assert manifest["dropped"] == {"missing_text_field": 1}
    assert len(manifest["dropped_examples"]["missing_text_field"]) < 1000
    with pytest.raises(CorpusSourceError) as e:
        _build(tmp_path / ("n" * 200) / ("n" * 200) / "missing", tmp_path / "out2")
    assert len(str(e.value)) < 2000


def test_a_landing_prefix_on_s3_without_credentials_fails_the_tick_by_name(s3_endpoint, monkeypatch, tmp_path):
    from llm_pipeline.resources import AutomationSettings, StorageResource

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    # Another spelling of the endpoint: s3fs caches filesystems by their options, and one with credentials exists.
    storage = StorageResource(root_uri="s3://llm-pipeline-test/nocreds", s3_endpoint_url=s3_endpoint.replace("127.0.0.1", "localhost"))
    resources = {"storage": storage, "automation": AutomationSettings()}
    with pytest.raises(
        Exception,
        match=r"cannot list the landing folder: 's3://llm-pipeline-test/nocreds/landing'"
        r".*NoCredentialsError",
    ):
        new_corpus_sensor.evaluate_tick(dg.build_sensor_context(resources=resources))


def test_numbers_too_large_for_a_double_outside_the_text_keep_their_record(tmp_path):
    """Valid JSON that orjson cannot hold (a 5,000-digit id, 1e999): the text is still taken."""
    (tmp_path / "src").mkdir()
    lines = [
        '{"id": ' + "9" * 5000 + ', "text": "' + "A record with a huge id. " * 20 + '"}',
        '{"score": 1e999, "text": "' + "A record with an infinite score. " * 20 + '"}',
        '{"text": ' + "5" * 5000 + "}",
        '{"score": NaN, "text": "not JSON: NaN is no JSON literal, so this line is quarantined"}',
    ]
    (tmp_path / "src" / "numbers.jsonl").write_text("\n".join(lines) + "\n")
    manifest = _build(tmp_path / "src", tmp_path / "out")
    texts = pq.read_table(tmp_path / "out" / manifest["shards"][0]["name"]).column("text").to_pylist()
    assert sorted(texts) == sorted(["A record with a huge id. " * 20, "A record with an infinite score. " * 20])
    assert manifest["dropped"] == {"non_string_text": 1, "invalid_json": 1}
