import pyarrow.parquet as pq
import pytest

from llm_pipeline.corpus.build import CorpusConfig, CorpusSourceError, build_corpus, iter_documents
from llm_pipeline.corpus.filters import FilterConfig, NearDuplicateIndex, document_id


def _write(folder, name, data: bytes):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


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
    _write(src, "site-packages/pkg.py", sample_texts[2].encode())  # excluded by default
    manifest = build_corpus(CorpusConfig(source_uri=str(src)), storage)
    assert manifest["documents"] == 2
    assert manifest["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1, "too_short": 1, "invalid_utf8": 1, "low_quality": 1}
    docs = [r for b in iter_documents(storage, columns=("id", "text", "source")) for r in b.to_pylist()]
    assert [d["id"] for d in docs] == [document_id(sample_texts[0]), document_id(sample_texts[1])]
    assert all(d["source"].startswith("file://") for d in docs)
    # nothing is lost: every dropped file is kept with its reason and original bytes
    quarantine = pq.read_table(storage.full(manifest["quarantine"][0]["name"])).to_pylist()
    assert sorted(q["reason"] for q in quarantine) == sorted(manifest["dropped"])
    assert next(q for q in quarantine if q["reason"] == "invalid_utf8")["content"] == "caf\xe9 = 1\n".encode("latin-1") * 20


def test_byte_budget_caps_reading(tmp_path, storage, sample_texts):
    src = tmp_path / "src"
    for i, text in enumerate(sample_texts):
        _write(src, f"{i:02d}.py", text.encode())
    manifest = build_corpus(CorpusConfig(source_uri=str(src), max_bytes=len(sample_texts[0].encode()) + 1), storage)
    assert manifest["files_read"] == 2


def test_missing_source_names_the_uri(tmp_path, storage):
    with pytest.raises(CorpusSourceError, match="does not exist"):
        build_corpus(CorpusConfig(source_uri=str(tmp_path / "nope")), storage)


def test_empty_source_names_the_glob(tmp_path, storage):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusSourceError, match=r"no files matching glob '\*\*/\*.py'"):
        build_corpus(CorpusConfig(source_uri=str(tmp_path / "empty")), storage)


def test_all_dropped_is_an_error_that_points_at_quarantine(tmp_path, storage):
    _write(tmp_path / "src", "a.py", b"tiny\n")
    with pytest.raises(CorpusSourceError, match="all 1 files were dropped"):
        build_corpus(CorpusConfig(source_uri=str(tmp_path / "src")), storage)
    assert storage.exists("quarantine-00000.parquet")
    assert not storage.exists("manifest.json")


def test_filter_config_validation():
    with pytest.raises(ValueError, match="max_chars"):
        FilterConfig(min_chars=10, max_chars=5)
    with pytest.raises(ValueError, match="min_printable_fraction"):
        FilterConfig(min_printable_fraction=1.5)


def test_near_duplicate_index_separates_different_texts(sample_texts):
    index = NearDuplicateIndex(0.85)
    assert not any(index.is_near_duplicate(t) for t in sample_texts)
    assert index.is_near_duplicate(sample_texts[3] + "\n# trailing comment\n")
