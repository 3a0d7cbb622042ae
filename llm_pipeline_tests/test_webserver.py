"""A real `dagster-webserver` (and daemon) serving workspace.yaml, queried over GraphQL like the UI does."""

import pytest

from llm_pipeline_tests.services import Dagster, fresh_copy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    """The webserver, then the daemon (never both at once on a fresh instance: they would race to
    create its tables), in a copy of the repo as a clone has it, with no LLM_PIPELINE_* variable."""
    dagster = Dagster(fresh_copy(tmp_path_factory.mktemp("llm-pipeline")), {})
    try:
        yield dagster
    finally:
        dagster.stop()


def test_ui_serves_the_graph_with_lineage(webserver):
    body = webserver.query("{ assetNodes { assetKey { path } dependencyKeys { path } hasAssetChecks } }")
    nodes = {"/".join(n["assetKey"]["path"]): n for n in body["assetNodes"]}
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
    body = webserver.query("""{ repositoriesOrError { ... on RepositoryConnection { nodes {
        jobs { name } schedules { name cronSchedule } sensors { name } } } } }""")
    [repo] = body["repositoriesOrError"]["nodes"]
    assert {"llm_pipeline_job", "training_job"} <= {j["name"] for j in repo["jobs"]}
    assert [s["name"] for s in repo["schedules"]] == ["retraining_schedule"]
    assert sorted(s["name"] for s in repo["sensors"]) == ["data_automation", "new_corpus_sensor", "retraining_sensor"]
