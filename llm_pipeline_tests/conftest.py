import os
import socket
import subprocess
import sys
import time

import pytest

from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import train_bpe

# Small, real Python source documents (from this repo's interpreter) for fast tests.
_STDLIB = os.path.dirname(os.__file__)
SAMPLE_FILES = ["argparse.py", "json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "fnmatch.py",
                "shlex.py", "heapq.py", "bisect.py", "glob.py", "keyword.py", "colorsys.py"]


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    texts = []
    for name in SAMPLE_FILES:
        with open(os.path.join(_STDLIB, name), encoding="utf-8") as f:
            texts.append(f.read())
    return texts


@pytest.fixture(scope="session")
def small_tokenizer(sample_texts):
    return train_bpe(iter(sample_texts), 512)


@pytest.fixture()
def storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "root"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server (moto in server mode) on loopback, with a bucket, for s3fs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="llm-pipeline-test")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gcs_bucket():
    """A real GCS JSON API server (gcp-storage-emulator) on loopback, with a bucket, for gcsfs.

    gcsfs finds it through STORAGE_EMULATOR_HOST (anonymous credentials), in this process and in the
    processes it starts (the trainer). GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs would otherwise
    first ask a gRPC control API, which the emulator does not serve, about each bucket (read at import)."""
    port = free_port()
    env = {**os.environ, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"), "start",
                             "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(port, proc)
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        import gcsfs

        gcsfs.GCSFileSystem(project="test").mkdir("llm-pipeline-test")
        yield "llm-pipeline-test"
    finally:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        proc.terminate()
        proc.wait(timeout=10)

