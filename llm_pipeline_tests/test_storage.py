import hashlib
import os

import pytest

from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.helpers import upload_dir


def test_child_uris_and_local_roundtrip(tmp_path):
    root = Storage(str(tmp_path))
    sub = root.child("a", "b")
    assert sub.uri == f"{tmp_path}/a/b"
    sub.write_json("x.json", {"k": 1})
    assert sub.read_json("x.json") == {"k": 1}
    assert root.child("a").listdir() == ["b"]
    # no temporary file is left behind by the atomic write
    assert os.listdir(tmp_path / "a" / "b") == ["x.json"]


def test_relative_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Storage("rel").uri == str(tmp_path / "rel")


def test_empty_uri_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        Storage("")


def test_memory_filesystem():
    root = Storage("memory://llm-pipeline-test-root")
    root.child("x").write_bytes("f.bin", b"abc")
    assert root.child("x").read_bytes("f.bin") == b"abc"
    assert root.child("x").uri == "memory://llm-pipeline-test-root/x"


def test_download_dir_gives_back_a_folder_tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "d" / "b.txt").write_text("b")
    dest = Storage(str(tmp_path / "dest"))
    assert upload_dir(dest, str(src)) == ["a.txt", "d/b.txt"]
    back = tmp_path / "back"
    dest.download_dir(str(back))
    assert (back / "d" / "b.txt").read_text() == "b"


def test_s3_roundtrip_against_a_real_s3_api_server(s3_endpoint, tmp_path):
    root = Storage("s3://llm-pipeline-test/root", client_kwargs={"endpoint_url": s3_endpoint})
    assert not root.is_local
    root.child("m").write_json("manifest.json", {"n": 3})
    assert root.child("m").read_json("manifest.json") == {"n": 3}
    expected = hashlib.sha256(root.child("m").read_bytes("manifest.json")).hexdigest()
    assert root.child("m").sha256("manifest.json") == expected
    local = tmp_path / "w.bin"
    local.write_bytes(b"\x00" * 1000)
    root.child("m").put_file(str(local), "w.bin")
    assert root.child("m").size("w.bin") == 1000
    assert root.child("m").listdir() == ["manifest.json", "w.bin"]
