"""The corpus stage: formats, quarantine with locations, accounting, safety, determinism."""

import bz2
import gzip
import json
import lzma
import os
import tempfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_pipeline.corpus.build import CorpusConfig, CorpusSourceError, build_corpus, iter_documents
from llm_pipeline.corpus.dedup import DedupIndex, memory_budget
from llm_pipeline.corpus.filters import FilterConfig, document_id
from llm_pipeline.corpus.near_dedup import document_signatures
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.conftest import SAMPLE_FILES

COMPRESS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


def _write(folder, name, data: bytes):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _jsonl(records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _docs(storage):
    return [r for b in iter_documents(storage, columns=("id", "text", "source")) for r in b.to_pylist()]


def _quarantine(storage, manifest):
    return [r for q in manifest["quarantine"] for r in pq.read_table(storage.full(q["name"])).to_pylist()]


def _texts(sample_texts, n, tag=""):
    """n distinct documents, long enough to pass the filters and not near duplicates of each other."""
    return [f"# {tag} document {i}\n" + sample_texts[i % len(sample_texts)] + f"\n# end {tag} {i}\n" * (i + 1) for i in range(n)]


def _assert_accounted(manifest, storage):
    """Every matched file is read or skipped, and every record is kept or quarantined."""
    files = manifest["files"]
    assert manifest["files_matched"] == manifest["files_read"] + manifest["files_skipped"] == len(files)
    assert sum(f["outcome"] == "read" for f in files) == manifest["files_read"]
    assert manifest["skipped"] == _count(f["reason"] for f in files if f["outcome"] == "skipped")
    read = [f for f in files if f["outcome"] == "read"]
    assert sum(f["documents"] for f in read) == manifest["documents"] == sum(s["rows"] for s in manifest["shards"])
    dropped = sum(manifest["dropped"].values())
    assert sum(sum(f["dropped"].values()) for f in read) == dropped
    assert manifest["records"] == manifest["documents"] + dropped
    assert len(_quarantine(storage, manifest)) == dropped


def _count(items):
    return dict(sorted(Counter(items).items()))


def test_build_filters_dedups_and_quarantines(tmp_path, storage, sample_texts):
    src = tmp_path / "src"
    _write(src, "a.py", sample_texts[0].encode())
    _write(src, "b.py", sample_texts[1].encode())
    _write(src, "copy_of_a.py", sample_texts[0].encode())  # exact duplicate
    near = sample_texts[1].replace("def ", "def  ", 1) + "\n# one extra line\n"
    _write(src, "near_b.py", near.encode())
    _write(src, "short.py", b"x = 1\n")
    _write(src, "latin1.py", "caf\xe9 = 1\n".encode("latin-1") * 20)
    _write(src, "binary.py", bytes(range(1, 32)) * 10)
    _write(src, "site-packages/pkg.py", sample_texts[2].encode())  # excluded
    manifest = build_corpus(CorpusConfig(source_uri=str(src), exclude=("site-packages/*",)), storage).model_dump(mode="json")
    assert manifest["documents"] == 2
    assert manifest["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1, "too_short": 1, "invalid_utf8": 1, "low_quality": 1}
    docs = _docs(storage)
    assert [d["id"] for d in docs] == [document_id(sample_texts[0]), document_id(sample_texts[1])]
    assert all(d["source"].startswith("file://") for d in docs)
    # nothing is lost: every dropped file is kept with its reason, original bytes and why
    quarantine = _quarantine(storage, manifest)
    assert sorted(q["reason"] for q in quarantine) == sorted(manifest["dropped"])
    bad = next(q for q in quarantine if q["reason"] == "invalid_utf8")
    assert bad["content"] == "caf\xe9 = 1\n".encode("latin-1") * 20 and bad["source"].endswith("latin1.py")
    assert "at byte 3" in bad["detail"]
    dup = next(q for q in quarantine if q["reason"] == "exact_duplicate")
    assert dup["source"].endswith("copy_of_a.py") and document_id(sample_texts[0]) in dup["detail"]
    _assert_accounted(manifest, storage)


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_every_format_in_every_compression(tmp_path, storage, sample_texts, suffix):
    texts = _texts(sample_texts, 5)
    src = tmp_path / "src"
    _write(src, f"plain.txt{suffix}", COMPRESS[suffix](texts[0].encode()))
    _write(src, f"records.jsonl{suffix}", COMPRESS[suffix](_jsonl([{"text": t, "id": i} for i, t in enumerate(texts[1:3])])))
    _write(src, f"dolma-style.json{suffix}", COMPRESS[suffix](_jsonl([{"text": texts[3]}])))
    pq.write_table(pa.table({"url": ["u"], "text": [texts[4]]}), src / "table.parquet")
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="**/*"), storage).model_dump(mode="json")
    docs = {d["text"]: d["source"] for d in _docs(storage)}
    assert set(docs) == set(texts)
    assert docs[texts[0]].endswith(f"plain.txt{suffix}")
    assert docs[texts[1]].endswith(f"records.jsonl{suffix}#line=1") and docs[texts[2]].endswith("#line=2")
    assert docs[texts[4]].endswith("table.parquet#row=0")
    formats = {os.path.basename(f["uri"]): f["format"] for f in manifest["files"]}
    assert formats == {
        f"plain.txt{suffix}": "text",
        f"records.jsonl{suffix}": "jsonl",
        f"dolma-style.json{suffix}": "jsonl",
        "table.parquet": "parquet",
    }
    _assert_accounted(manifest, storage)


def test_bad_records_are_quarantined_with_their_line_and_the_rest_kept(tmp_path, storage, sample_texts):
    good = _texts(sample_texts, 3)
    lines = [
        {"text": good[0]},
        b'{"text": "broken',
        {"body": "no text field"},
        {"text": None},
        {"text": 42},
        b"[1, 2]",
        b"",
        {"text": good[1]},
        b'{"text": "\xff\xfe not utf-8"}',
        {"text": good[2]},
    ]
    src = tmp_path / "src"
    _write(src, "part.jsonl.gz", gzip.compress(_jsonl(lines)))
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="*.jsonl.gz"), storage).model_dump(mode="json")
    assert [d["text"] for d in _docs(storage)] == good
    where = {q["reason"]: (q["location"], q["detail"]) for q in _quarantine(storage, manifest)}
    assert where["invalid_json"][0] in ("line=2", "line=6")
    assert where["missing_text_field"] == ("line=3", "no field 'text'; fields: body")
    assert where["null_text"][0] == "line=4"
    assert where["non_string_text"] == ("line=5", "'text' is a int")
    assert where["invalid_utf8"][0] == "line=9"
    assert manifest["dropped"] == {"invalid_json": 2, "missing_text_field": 1, "null_text": 1, "non_string_text": 1, "invalid_utf8": 1}
    _assert_accounted(manifest, storage)


def test_parquet_nulls_and_a_missing_column_are_named(tmp_path, storage, sample_texts):
    texts = _texts(sample_texts, 2)
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({"text": [texts[0], None, texts[1]]}), src / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"content": [texts[0]]}), src / "b.parquet")
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="*.parquet"), storage).model_dump(mode="json")
    assert [d["source"].rsplit("#", 1)[1] for d in _docs(storage)] == ["row=0", "row=2"]
    quarantine = {q["reason"]: q for q in _quarantine(storage, manifest)}
    assert quarantine["null_text"]["location"] == "row=1"
    assert quarantine["missing_text_field"]["source"].endswith("b.parquet")
    assert "columns: content" in quarantine["missing_text_field"]["detail"]


def test_corrupt_gzip_keeps_what_decoded_and_quarantines_the_rest(tmp_path, storage, sample_texts):
    texts = _texts(sample_texts, 40)
    whole = gzip.compress(_jsonl([{"text": t} for t in texts]), compresslevel=1)
    src = tmp_path / "src"
    _write(src, "cut.jsonl.gz", whole[: len(whole) * 2 // 3])  # truncated mid-stream
    middle = bytearray(whole)
    middle[len(whole) // 2 : len(whole) // 2 + 64] = b"\x00" * 64  # garbage in the middle
    _write(src, "garbled.jsonl.gz", bytes(middle))
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="*.gz"), storage).model_dump(mode="json")
    by_file = {os.path.basename(f["uri"]): f for f in manifest["files"]}
    for name in ("cut.jsonl.gz", "garbled.jsonl.gz"):
        assert by_file[name]["dropped"].get("corrupt_stream") == 1
    assert 0 < by_file["cut.jsonl.gz"]["documents"] < len(texts)
    broken = [q for q in _quarantine(storage, manifest) if q["reason"] == "corrupt_stream"]
    assert all(q["location"].startswith("line=") and "broke off after line" in q["detail"] for q in broken)
    kept = [d["text"] for d in _docs(storage)]
    assert kept[: by_file["cut.jsonl.gz"]["documents"]] == texts[: by_file["cut.jsonl.gz"]["documents"]]


def test_byte_order_marks_are_stripped_and_utf16_decoded(tmp_path, storage, sample_texts):
    texts = _texts(sample_texts, 3)
    src = tmp_path / "src"
    _write(src, "bom8.txt", b"\xef\xbb\xbf" + texts[0].encode())
    _write(src, "bom16.txt", texts[1].encode("utf-16"))
    _write(src, "bom8.jsonl", b"\xef\xbb\xbf" + _jsonl([{"text": texts[2]}]))
    build_corpus(CorpusConfig(source_uri=str(src), glob="*"), storage)
    assert sorted(d["text"] for d in _docs(storage)) == sorted(texts)


def test_byte_budget_skips_and_lists_what_does_not_fit(tmp_path, storage, sample_texts):
    src = tmp_path / "src"
    texts = _texts(sample_texts, 3)
    _write(src, "0-small.txt", texts[0].encode())
    _write(src, "1-large.txt", (texts[1] * 20).encode())
    _write(src, "2-small.txt", texts[2].encode())
    budget = len(texts[0].encode()) + len(texts[2].encode()) + 10
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="*.txt", max_bytes=budget), storage).model_dump(mode="json")
    assert manifest["documents"] == 2  # the file after the large one is still read
    skipped = [f for f in manifest["files"] if f["outcome"] == "skipped"]
    assert [(os.path.basename(f["uri"]), f["reason"]) for f in skipped] == [("1-large.txt", "over_max_bytes")]
    _assert_accounted(manifest, storage)


def test_hidden_and_in_flight_files_are_skipped_and_counted(tmp_path, storage, sample_texts):
    texts = _texts(sample_texts, 8)
    src = tmp_path / "src"
    names = [
        "ok.txt",
        ".hidden.txt",
        ".git/objects/x.txt",
        "upload.txt.part",
        "big.txt.tmp",
        "x.txt.crdownload",
        "y.txt._COPYING_",
        ".~lock.txt",
    ]
    for name, text in zip(names, texts):
        _write(src, name, text.encode())
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="**/*"), storage).model_dump(mode="json")
    assert manifest["files_read"] == 1 and manifest["skipped"] == {"hidden_or_in_flight": 7}
    _assert_accounted(manifest, Storage(storage.uri))
    everything = build_corpus(CorpusConfig(source_uri=str(src), glob="**/*", include_hidden=True), storage.child("all")).model_dump(
        mode="json"
    )
    assert everything["documents"] == 8


def test_symlinks_do_not_lead_out_of_the_source_nor_around_loops(tmp_path, storage, sample_texts):
    texts = _texts(sample_texts, 3)
    outside = tmp_path / "outside"
    _write(outside, "secret.txt", texts[0].encode())
    src = tmp_path / "src"
    _write(src, "real/doc.txt", texts[1].encode())
    _write(src, "other.txt", texts[2].encode())
    os.symlink(outside / "secret.txt", src / "leak.txt")
    os.symlink(outside, src / "leaked_dir")
    os.symlink(src, src / "real" / "loop")  # a folder that contains itself
    os.symlink(src / "other.txt", src / "inside_link.txt")  # stays inside: followed
    os.symlink(tmp_path / "nowhere.txt", src / "dangling.txt")
    manifest = build_corpus(CorpusConfig(source_uri=str(src), glob="**/*.txt"), storage).model_dump(mode="json")
    assert texts[0] not in {d["text"] for d in _docs(storage)}
    reasons = {os.path.relpath(f["uri"].removeprefix("file://"), src): f.get("reason") for f in manifest["files"]}
    assert reasons["leak.txt"] == reasons["leaked_dir"] == "symlink_outside_source"
    assert reasons["real/loop"] == "symlink_loop"
    assert reasons["dangling.txt"] == "broken_symlink"
    assert manifest["dropped"] == {"exact_duplicate": 1}  # inside_link.txt is other.txt again
    _assert_accounted(manifest, storage)


def test_source_uri_is_literal_not_a_pattern(tmp_path, storage, sample_texts):
    texts = _texts(sample_texts, 2)
    _write(tmp_path / "data[1]", "a.txt", texts[0].encode())
    _write(tmp_path / "data1", "b.txt", texts[1].encode())
    build_corpus(CorpusConfig(source_uri=str(tmp_path / "data[1]"), glob="*.txt"), storage)
    assert [d["text"] for d in _docs(storage)] == [texts[0]]


def _all_files(folder: str) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes."""
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def test_output_is_byte_identical_with_one_or_two_workers(tmp_path, sample_texts):
    texts = _texts(sample_texts, 12)
    src = tmp_path / "src"
    for i in range(4):  # duplicates across files, so dedup order matters
        part = texts[3 * i : 3 * i + 3] + [texts[(3 * i + 5) % 12]]
        _write(src, f"part-{i}.jsonl.gz", gzip.compress(_jsonl([{"text": t} for t in part] + [{"text": None}])))
    _write(src, "near.txt", (texts[0] + "\n# a small edit\n").encode())
    outputs = []
    for workers in (1, 2):
        out = Storage(str(tmp_path / f"out{workers}"))
        build_corpus(CorpusConfig(source_uri=str(src), glob="*", workers=workers, row_group_rows=4, shard_bytes=20_000), out)
        outputs.append(_all_files(out.path))
    assert len(outputs[0]) > 3 and "dedup/bands.npy" in outputs[0] and outputs[0] == outputs[1]
    manifest = json.loads(outputs[0]["manifest.json"])
    assert manifest["dropped"] == {"exact_duplicate": 4, "near_duplicate": 1, "null_text": 4}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", ".h", "c/d", ".git"]),
            st.sampled_from(["x.txt", "y.jsonl", "z.jsonl.gz", ".hid.txt", "up.part", "w.bin", "q.tmp"]),
            st.lists(st.sampled_from(["good", "short", "dup", "broken", "null", "missing"]), min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=8,
    ),
    st.sampled_from([None, 3000, 30000]),
)
def test_every_matched_file_and_record_is_accounted_for(layout, max_bytes):
    sample_texts = [open(os.path.join(os.path.dirname(os.__file__), name), encoding="utf-8").read() for name in SAMPLE_FILES]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        serial = 0
        for folder, name, kinds in layout:
            serial += 1
            records = []
            for kind in kinds:
                serial += 1
                records.append(
                    {
                        "good": {"text": f"doc {serial} " + sample_texts[serial % 12][: 400 + serial]},
                        "short": {"text": "tiny"},
                        "dup": {"text": sample_texts[0][:500]},
                        "broken": b'{"text": ',
                        "null": {"text": None},
                        "missing": {"t": 1},
                    }[kind]
                )
            data = (
                _jsonl(records)
                if "jsonl" in name
                else b"\n".join(r["text"].encode() if isinstance(r, dict) and isinstance(r.get("text"), str) else b"?" for r in records)
            )
            path = os.path.join(src, folder, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(gzip.compress(data) if name.endswith(".gz") else data)
        out = Storage(os.path.join(tmp, "out"))
        try:
            manifest = build_corpus(CorpusConfig(source_uri=src, glob="**/*", exclude=("*.bin",), max_bytes=max_bytes), out).model_dump(
                mode="json"
            )
        except CorpusSourceError as e:
            assert any(m in str(e) for m in ("no document kept", "no file to read", "no files matching glob"))
            return
        matched = {os.path.relpath(os.path.join(dp, f), src) for dp, _, fs in os.walk(src) for f in fs if not f.endswith(".bin")}
        listed = {os.path.relpath(f["uri"].removeprefix("file://"), src) for f in manifest["files"]}
        assert listed == matched
        _assert_accounted(manifest, out)


def test_a_200mb_single_line_file_is_quarantined_in_bounded_memory(tmp_path, sample_texts):
    """Peak RSS of the build in a fresh process stays far below the file sizes, and the good file is read."""
    src = tmp_path / "src"
    src.mkdir()
    line = b"x" * (200 * 1024 * 1024)
    (src / "huge.jsonl").write_bytes(b'{"text": "' + line + b'"}\n' + _jsonl([{"text": _texts(sample_texts, 1)[0]}]))
    (src / "huge.txt").write_bytes(line)
    (src / "zz-good.txt").write_text(_texts(sample_texts, 2)[1])
    script = (
        "import json, sys\n"
        "from llm_pipeline.corpus.build import CorpusConfig, build_corpus\n"
        "from llm_pipeline.storage.folders import Storage\n"
        f"m = build_corpus(CorpusConfig(source_uri={str(src)!r}, glob='*', workers=1), Storage({str(tmp_path / 'out')!r}))\n"
        "rss = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(json.dumps({'documents': m.documents, 'dropped': m.dropped, 'peak_kb': int(rss)}))\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["documents"] == 2 and result["dropped"] == {"too_long": 2}
    assert result["peak_kb"] < 1024 * 1024, f"peak RSS {result['peak_kb']} kB"
    out = Storage(str(tmp_path / "out"))
    quarantine = _quarantine(out, out.read_json("manifest.json"))
    assert all(len(q["content"]) <= 4096 for q in quarantine)
    assert {q["location"] for q in quarantine} == {"line=1", ""}


def test_bad_input_is_named(tmp_path, storage, sample_texts):
    src = tmp_path / "src"
    _write(src, "a.jsonl", _jsonl([{"body": t} for t in _texts(sample_texts, 3)]))
    with pytest.raises(CorpusSourceError, match=r"missing_text_field.*a\.jsonl#line=1: no field 'text'; fields: body"):
        build_corpus(CorpusConfig(source_uri=str(src), glob="*.jsonl"), storage)
    # a wrong format override: each file is quarantined as unreadable, naming it
    _write(src, "b.txt", _texts(sample_texts, 1)[0].encode())
    with pytest.raises(CorpusSourceError, match=r"unreadable: file://.*a\.jsonl: not a readable Parquet file"):
        build_corpus(CorpusConfig(source_uri=str(src), glob="*", format="parquet"), storage.child("p"))
    with pytest.raises(ValueError, match="format must be one of"):
        CorpusConfig(source_uri=str(src), format="csv")


def test_missing_source_names_the_uri(tmp_path, storage):
    with pytest.raises(CorpusSourceError, match="does not exist"):
        build_corpus(CorpusConfig(source_uri=str(tmp_path / "nope")), storage)


def test_empty_source_names_the_glob(tmp_path, storage):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusSourceError, match=r"no files matching glob '\*\*/\*'"):
        build_corpus(CorpusConfig(source_uri=str(tmp_path / "empty")), storage)


def test_all_dropped_is_an_error_that_points_at_quarantine(tmp_path, storage):
    _write(tmp_path / "src", "a.py", b"tiny\n")
    with pytest.raises(CorpusSourceError, match="all 1 records from 1 files were dropped"):
        build_corpus(CorpusConfig(source_uri=str(tmp_path / "src")), storage)
    assert storage.exists("quarantine-00000.parquet")
    assert not storage.exists("manifest.json")


def test_filter_config_validation():
    with pytest.raises(ValueError, match="max_chars"):
        FilterConfig(min_chars=10, max_chars=5)
    with pytest.raises(ValueError, match="min_printable_fraction"):
        FilterConfig(min_printable_fraction=1.5)


def test_near_duplicate_detection_separates_different_texts(tmp_path, sample_texts):
    index = DedupIndex(0.85, (), str(tmp_path), memory_budget(64))

    def is_near_duplicate(text):
        keep, drops = index.decide([document_id(text)], document_signatures([text]))
        return not keep[0] and drops[0][1] == "near_duplicate"

    assert not any(is_near_duplicate(t) for t in sample_texts)
    assert is_near_duplicate(sample_texts[3] + "\n# trailing comment\n")


def test_signatures_do_not_depend_on_batching(sample_texts):
    """A document's signature is the same alone or in a batch: k-grams never straddle documents."""
    docs = sample_texts[:5] + ["two words", "", "   ", "one two three four five six", "x" * 70]
    together = document_signatures(docs)
    alone = [document_signatures([d])[0] for d in docs]
    assert all((together[i] == alone[i]).all() for i in range(len(docs)))
    # the word split ignores how much whitespace there is, as str.split() does
    assert (document_signatures(["a  b\tc\n\nd e f"])[0] == document_signatures(["a b c d e f"])[0]).all()
    assert not (together[0] == together[1]).all()


def test_a_hash_sign_in_a_file_name_stays_in_the_quarantined_source(tmp_path, storage, sample_texts):
    text = _texts(sample_texts, 1)[0]
    _write(tmp_path / "src", "a.txt", text.encode())
    _write(tmp_path / "src", "copy#1.jsonl", _jsonl([{"text": text}]))
    manifest = build_corpus(CorpusConfig(source_uri=str(tmp_path / "src"), glob="*"), storage).model_dump(mode="json")
    dup = next(q for q in _quarantine(storage, manifest) if q["reason"] == "exact_duplicate")
    assert dup["source"].endswith("/copy#1.jsonl") and dup["location"] == "line=1"
