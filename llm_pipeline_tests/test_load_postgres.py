"""Continuous training under load, on the production instance: the real webserver and daemon on
PostgreSQL (deploy/postgres/dagster.yaml), fifty deliveries over about five minutes, and the faults
a long-lived deployment meets: the daemon SIGKILLed and restarted, PostgreSQL restarted, a run
killed while it writes a corpus batch. Nothing may be lost or taken twice."""

import os
import shutil
import statistics
import threading
import time

import pytest
import yaml

from llm_pipeline.faults import CRASH_ENV
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.conftest import _STDLIB
from llm_pipeline_tests.helpers import TINY_TRAINING
from llm_pipeline_tests.services import REPO, Dagster, fresh_copy

pytestmark = pytest.mark.e2e
DELIVERIES = 50
SPACING_S = 6.0  # fifty deliveries over five minutes
TINY = {
    "ops": {
        "trained_checkpoint": {"config": TINY_TRAINING},
        "eval_metrics": {"config": {"max_loss": 100.0, "max_new_tokens": 4, "max_tokens": 2000}},
    }
}


def _sources() -> list[str]:
    """Distinct real documents: the standard library's modules, its packages' included, with distinct names."""
    found = {}
    for folder, dirs, names in sorted(os.walk(_STDLIB)):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "test", "tests", "idlelib", "__pycache__"))
        for name in sorted(names):
            path = os.path.join(folder, name)
            if name.endswith(".py") and name not in found and 2_000 < os.path.getsize(path) < 40_000:
                found[name] = path
    assert len(found) >= 3 * DELIVERIES
    return list(found.values())


class Deliverer(threading.Thread):
    """Lands the deliveries as uploaders do: most copied whole, every fifth grown in pieces over ten
    seconds, every seventh written under an in-flight name and renamed into place. Records when each
    file became complete."""

    def __init__(self, landing: str):
        super().__init__(daemon=True)
        self.landing, self.sources = landing, _sources()
        self.complete: dict[str, float] = {}  # relative path -> when it was complete
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for d in range(DELIVERIES):
                started = time.time()
                self._deliver(d)
                time.sleep(max(0.0, SPACING_S - (time.time() - started)))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _deliver(self, d: int) -> None:
        folder = os.path.join(self.landing, f"delivery-{d:02}")
        os.makedirs(folder)
        files = self.sources[3 * d : 3 * d + 3]
        for i, path in enumerate(files):
            rel = f"delivery-{d:02}/{os.path.basename(path)}"
            target = os.path.join(self.landing, rel)
            if d % 5 == 0 and i == 0:
                data = open(path, "rb").read()
                with open(target, "wb") as f:
                    for part in range(5):  # a write every 2 s: it changes between any two ticks
                        f.write(data[part * len(data) // 5 : (part + 1) * len(data) // 5])
                        f.flush()
                        time.sleep(2)
            elif d % 7 == 0 and i == 1:
                shutil.copyfile(path, target + ".part")
                time.sleep(3)
                os.rename(target + ".part", target)
            else:
                shutil.copy2(path, target)
            self.complete[rel] = time.time()


def test_fifty_deliveries_on_postgres_with_faults_lose_and_double_nothing(postgres, tmp_path, record_property):
    home = fresh_copy(tmp_path / "llm-pipeline")
    shutil.copy(os.path.join(REPO, "deploy", "postgres", "dagster.yaml"), os.path.join(home, "dagster.yaml"))
    with open(os.path.join(home, "training.yaml"), "w") as f:
        yaml.safe_dump(TINY, f)
    crash_flags = {stage: str(tmp_path / f"{stage}-crash-fired") for stage in ("corpus", "shards")}
    env = {
        **postgres.env(),
        "LLM_PIPELINE_TRAINING_RUN_CONFIG": os.path.join(home, "training.yaml"),
        # The first run to write a corpus batch, and the first to write a batch's shards, are SIGKILLed
        # once everything but the manifest is written.
        CRASH_ENV: ",".join(f"{stage}_before_manifest:0:0:{flag}" for stage, flag in crash_flags.items()),
    }
    dagster = Dagster(home, env)
    landing = os.path.join(home, ".storage", "landing")
    os.makedirs(landing)
    deliverer = Deliverer(landing)
    started = time.time()
    try:
        deliverer.start()
        # Faults while deliveries land, each once the pipeline is where it is meant to hit: the daemon
        # SIGKILLed once it has made batches of the early deliveries and restarted; PostgreSQL stopped
        # once the new daemon has made a batch of its own, and started again after a delivery landed
        # while it was down.
        dagster.wait_for("batches of the early deliveries", lambda: len(dagster.partitions()) >= 4, timeout=300, failed_runs_allowed=True)
        dagster.kill_daemon()
        dagster.start_daemon()
        made = len(dagster.partitions())
        dagster.wait_for("a batch by the restarted daemon", lambda: len(dagster.partitions()) > made, timeout=300, failed_runs_allowed=True)
        postgres.stop()
        landed = len(deliverer.complete)
        _wait_until("a delivery while PostgreSQL is down", lambda: len(deliverer.complete) > landed, timeout=60)
        postgres.start()
        # The webserver's pooled connections died with the server: its first query after the restart
        # fails ("server closed the connection unexpectedly") and the pool drops them, as a user's page
        # reload would meet it. Then it answers again.
        _wait_until("the webserver answering after the restart", lambda: _answers(dagster), timeout=60)
        deliverer.join()
        assert deliverer.error is None, deliverer.error
        delivered = sorted(deliverer.complete)

        def settled():
            """Every delivered file in a tokenized batch, nothing running, and a model published from the newest
            data: every batch with training tokens (a batch whose few documents all went to the held-out split,
            or were duplicates of earlier ones, has none, and training leaves it out)."""
            batches = _batch_files(home, dagster)
            if sorted(f for files in batches.values() for f in files) != delivered or dagster.in_progress_runs():
                return None
            trained = dagster.materializations("trained_checkpoint")
            with_tokens = [b for b, m in dagster.by_partition("tokenized_shards").items() if m[0]["metadata"]["train_tokens"] > 0]
            if not trained or sorted(trained[0]["metadata"]["batches"]) != sorted(with_tokens):
                return None
            return batches if dagster.materializations("published_model") else None

        batches = dagster.wait_for("every delivery tokenized and trained on", settled, timeout=600, failed_runs_allowed=True)
        elapsed = time.time() - started

        # Every complete file in exactly one batch (none lost, none doubled, no partial version).
        taken = [f for files in batches.values() for f in files]
        assert len(taken) == len(set(taken)) == len(delivered) == 3 * DELIVERIES
        # Every batch cleaned and tokenized exactly once (a killed run's retry is the one success).
        corpus, shards = dagster.by_partition("raw_corpus"), dagster.by_partition("tokenized_shards")
        assert {b: len(m) for b, m in corpus.items()} == dict.fromkeys(batches, 1)
        assert {b: len(m) for b, m in shards.items()} == dict.fromkeys(batches, 1)
        # The runs killed mid-write: their folders have parts and no manifest, and nothing reads them.
        assert all(os.path.exists(flag) for flag in crash_flags.values()), "a crash point never fired"
        killed = [r for r in dagster.run_records("__ASSET_JOB") if r["status"] == "FAILURE"]
        assert len(killed) >= 2, "the SIGKILLed runs were not reported failed"
        for asset, materialized in (("raw_corpus", corpus), ("tokenized_shards", shards)):
            used = {Storage(m[0]["metadata"]["uri"]).path for m in materialized.values()}
            half_written = [p for p in _stage_folders(home, asset) if not os.path.exists(os.path.join(p, "manifest.json"))]
            assert half_written and not set(half_written) & used, asset
        # Retraining did not pile up: never two training runs at once, and the last one took every batch.
        trainings = sorted(dagster.run_records("training_job"), key=lambda r: r["startTime"])
        assert all(a["endTime"] <= b["startTime"] for a, b in zip(trainings, trainings[1:])), trainings
        published = dagster.materializations("published_model")[0]
        assert published["run_id"] == dagster.materializations("trained_checkpoint")[0]["run_id"]

        latency = [shards[b][0]["timestamp"] - max(deliverer.complete[f] for f in files) for b, files in batches.items()]
        record_property(
            "figures",
            (  # printed at the end of the run (conftest.py), from any xdist worker
                f"load: {DELIVERIES} deliveries, {len(delivered)} files -> {len(batches)} batches; "
                f"data runs {len(dagster.run_records('__ASSET_JOB'))} ({len(killed)} killed and retried), "
                f"training runs {len(trainings)}; landing-to-tokenized latency median {statistics.median(latency):.0f}s, "
                f"max {max(latency):.0f}s; all settled after {elapsed:.0f}s"
            ),
        )
    finally:
        dagster.stop()


def _answers(dagster: Dagster) -> bool:
    try:
        dagster.partitions()
    except AssertionError as e:
        if "server closed the connection unexpectedly" in str(e):
            return False
        raise
    return True


def _wait_until(what: str, condition, timeout: float) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(0.5)


def _batch_files(home: str, dagster: Dagster) -> dict[str, list[str]]:
    """Tokenized batches and the files each was made of (its landing record)."""
    out = {}
    for batch in {m["partition"] for m in dagster.materializations("tokenized_shards")}:
        out[batch] = sorted(Storage(os.path.join(home, ".storage", "batches")).read_json(f"{batch}.json")["files"])
    return out


def _stage_folders(home: str, asset: str) -> list[str]:
    root = os.path.join(home, ".storage", asset)
    return [os.path.join(root, batch, run) for batch in os.listdir(root) for run in os.listdir(os.path.join(root, batch))]
