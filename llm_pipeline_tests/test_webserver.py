"""A real `dagster-webserver` (and daemon) serving workspace.yaml, queried over GraphQL like the UI does."""

import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from llm_pipeline_tests.conftest import free_port, wait_for_port

pytestmark = pytest.mark.e2e
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
WORKSPACE = os.path.join(REPO, "workspace.yaml")


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(os.path.join(REPO, "dagster.yaml"), home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "LLM_PIPELINE_STORAGE_ROOT": str(home / "storage")}
    port = free_port()
    # Started directly (not through a shell), so SIGTERM reaches them. The working directory is
    # the test's DAGSTER_HOME, where dagster.yaml's relative folders then land.
    procs = [
        subprocess.Popen([os.path.join(BIN, "dagster-webserver"), "-w", WORKSPACE, "-h", "127.0.0.1", "-p", str(port)],
                         cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([os.path.join(BIN, "dagster-daemon"), "run", "-w", WORKSPACE],
                         cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        wait_for_port(port, procs[0], timeout=120)
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _query(url, query):
    deadline = time.time() + 60
    while True:
        body = requests.post(url, json={"query": query}, timeout=30).json()
        if "errors" not in body or time.time() > deadline:
            return body
        time.sleep(1)


def test_ui_serves_the_graph_with_lineage(webserver):
    body = _query(webserver, "{ assetNodes { assetKey { path } dependencyKeys { path } hasAssetChecks } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in body["data"]["assetNodes"]}
    assert set(nodes) == {"raw_corpus", "tokenizer", "tokenized_shards", "trained_checkpoint", "eval_metrics", "published_model"}
    deps = {k: sorted("/".join(d["path"]) for d in v["dependencyKeys"]) for k, v in nodes.items()}
    assert deps["tokenizer"] == ["raw_corpus"]
    assert deps["trained_checkpoint"] == ["tokenized_shards", "tokenizer"]
    assert deps["tokenized_shards"] == ["raw_corpus", "tokenizer"]
    # Each stage names what it reads: the evaluated checkpoint and its tokenizer are inputs, not nested values.
    assert deps["eval_metrics"] == ["tokenizer", "trained_checkpoint"]
    assert deps["published_model"] == ["eval_metrics", "tokenizer", "trained_checkpoint"]
    assert nodes["eval_metrics"]["hasAssetChecks"]


def test_ui_shows_job_schedule_and_sensor(webserver):
    body = _query(webserver, """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        jobs { name } schedules { name cronSchedule } sensors { name } } } } }""")
    [repo] = body["data"]["repositoriesOrError"]["nodes"]
    assert {"llm_pipeline_job", "training_job"} <= {j["name"] for j in repo["jobs"]}
    assert [s["name"] for s in repo["schedules"]] == ["retraining_schedule"]
    assert sorted(s["name"] for s in repo["sensors"]) == ["data_automation", "new_corpus_sensor", "retraining_sensor"]
