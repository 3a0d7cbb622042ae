import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import train_bpe
from llm_pipeline.train.launch import free_port

# Under pytest-xdist (`make test` runs two workers), each worker gets a temporary folder of its own, for
# itself and every process it starts: a path derived from a test's inputs alone (a remote root's
# checkpoint staging) then never meets the same test shape running in the other worker.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _TMP = os.path.join(tempfile.gettempdir(), f"llm-pipeline-tests-{_WORKER}")
    os.makedirs(_TMP, exist_ok=True)
    os.chmod(_TMP, 0o755)  # the PostgreSQL server (user `postgres`) keeps its folder in here
    os.environ["TMPDIR"] = _TMP
    tempfile.tempdir = None

# The modules that mostly wait on real services (deliveries spaced in time, sensor ticks, a daemon)
# start first, longest first, so the other worker runs the rest beside them instead of after them.
WAITING_MODULES = ("test_load_postgres.py", "test_continuous_daemon.py", "test_continuous_daemon_on_s3.py")


# A test that uses one of these starts a server (the S3 API, the GCS API, PostgreSQL, MLflow): marked
# `service`, so `make check` can leave it out without each test saying so.
SERVICE_FIXTURES = {"s3_endpoint", "gcs_bucket", "postgres", "mlflow_server"}


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return WAITING_MODULES.index(name) if name in WAITING_MODULES else len(WAITING_MODULES)

    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)
    items.sort(key=rank)  # stable: the rest keep their order


def pytest_terminal_summary(terminalreporter):
    """What tests measured (`record_property("figures", ...)`), after the run: a worker's own output never shows."""
    lines = [value for report in terminalreporter.stats.get("passed", []) for name, value in report.user_properties if name == "figures"]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.line(line)


# Small, real Python source documents (from this repo's interpreter) for fast tests.
_STDLIB = os.path.dirname(os.__file__)
SAMPLE_FILES = [
    "argparse.py",
    "json/decoder.py",
    "json/encoder.py",
    "textwrap.py",
    "string.py",
    "fnmatch.py",
    "shlex.py",
    "heapq.py",
    "bisect.py",
    "glob.py",
    "keyword.py",
    "colorsys.py",
]


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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


class MlflowServer:
    """A real `mlflow server` on loopback: a SQLite backend store and a local artifact folder."""

    def __init__(self, folder: str):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
        self.proc = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db", "--artifacts-destination",
             f"{self.folder}/artifacts", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, f"mlflow server exited with {self.proc.returncode}"
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server at {self.uri} did not answer /health in 120 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its gunicorn or uvicorn workers too
            self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(str(tmp_path / "mlflow"))
    os.makedirs(server.folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_bucket():
    """A real GCS JSON API server (gcp-storage-emulator) on loopback, with a bucket, for gcsfs.

    gcsfs finds it through STORAGE_EMULATOR_HOST (anonymous credentials), in this process and in the
    processes it starts (the trainer). GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: gcsfs would otherwise
    first ask a gRPC control API, which the emulator does not serve, about each bucket (read at import)."""
    port = free_port()
    env = {**os.environ, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
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


PG_BIN = "/usr/lib/postgresql/15/bin"


class Postgres:
    """A real PostgreSQL server (Debian's `postgresql` package) in a temporary folder, on loopback.

    The server refuses to run as root: as root (CI) it runs as the `postgres` user the package made."""

    def __init__(self):
        # Not under pytest's tmp_path: its folders are root's alone, and the server runs as `postgres`.
        self.folder, self.port = tempfile.mkdtemp(prefix="llm-pipeline-pg-"), free_port()
        self.data, self.log = os.path.join(self.folder, "data"), os.path.join(self.folder, "postgres.log")
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres", self.folder], check=True)
        self._run(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "dagster")
        self.start()
        self._run(f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "dagster", "dagster")

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        proc = subprocess.run(prefix + list(cmd), capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr or proc.stdout}"

    def start(self) -> None:
        self._run(
            f"{PG_BIN}/pg_ctl",
            "-D",
            self.data,
            "-l",
            self.log,
            "-w",
            "start",
            "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1",
        )

    def stop(self) -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def env(self) -> dict[str, str]:
        """What deploy/postgres/dagster.yaml reads."""
        return {
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": "dagster",
            "DAGSTER_PG_PORT": str(self.port),
        }


@pytest.fixture
def postgres():
    if not os.path.exists(f"{PG_BIN}/initdb"):
        pytest.fail("PostgreSQL is not installed: `make test` installs it (Debian package `postgresql`)")
    server = Postgres()
    try:
        yield server
    finally:
        server.close()
