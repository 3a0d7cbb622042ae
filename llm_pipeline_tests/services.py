"""The Dagster services as a newcomer starts them: `dagster-webserver` and `dagster-daemon run` in a
fresh copy of the repo, and the GraphQL queries the tests ask them."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import requests

from llm_pipeline.train.launch import free_port
from llm_pipeline_tests.conftest import wait_for_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
REPOSITORY = {"repositoryLocationName": "llm_pipeline.definitions", "repositoryName": "__repository__"}


def fresh_copy(dest) -> str:
    """The repo's tracked files, as a clone has them (no .storage/, no .dagster/)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(REPO, rel)):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), os.path.join(dest, rel))
    return str(dest)


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


class Dagster:
    """`dagster-webserver` + `dagster-daemon run` started in `home` (DAGSTER_HOME, as the Makefile sets it)."""

    def __init__(self, home: str, extra_env: dict[str, str]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")}
        env.update(DAGSTER_HOME=home, **extra_env)
        self.port, self.killed = free_port(), []
        self.log = open(os.path.join(home, "dagster-test.log"), "wb")
        # Each in a process group of its own, with every run, step and trainer process it starts: stop()
        # ends them all, so no run outlives its test and slows the next one. The webserver first: the
        # two processes creating a fresh instance's tables at once race ("table ... already exists"),
        # and the loser exits.
        start = dict(cwd=home, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs = [
            subprocess.Popen(
                [os.path.join(BIN, "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)], **start
            )
        ]
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_for_port(self.port, self.procs[0], timeout=120)
            self._check_code_location()
        except BaseException:
            self.stop()
            raise
        self._start = start
        self.start_daemon()

    def _check_code_location(self) -> None:
        """The webserver serves even when the code failed to load (the UI shows the error, and every
        query then answers with no assets): fail here, with Dagster's message, instead."""
        data = self.query(
            "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
            "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
        )
        entries = data["workspaceOrError"]["locationEntries"]
        errors = [e["locationOrLoadError"].get("message", "") for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
        assert entries and not errors, f"the code location did not load: {errors or entries}; see {self.log.name}"

    def start_daemon(self) -> None:
        self.procs.append(subprocess.Popen([os.path.join(BIN, "dagster-daemon"), "run", "-w", "workspace.yaml"], **self._start))

    def kill_daemon(self) -> None:
        """SIGKILL the daemon process alone, as a crash would: the runs it launched go on."""
        daemon = self.procs.pop()
        daemon.kill()
        daemon.wait(timeout=30)
        self.killed.append(daemon)  # its process group (code server, runs) is ended by stop()

    def stop_daemon(self) -> None:
        """The daemon and every run it launched (its process group) end; the webserver goes on."""
        _end_groups([self.procs.pop()])

    def stop(self) -> None:
        _end_groups(self.procs)
        for p in self.killed:
            _signal_group(p, signal.SIGKILL)
        self.log.close()

    def in_progress_runs(self) -> list[str]:
        data = self.query(
            "{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) { ... on Runs { results { runId } } } }"
        )
        return [r["runId"] for r in data["runsOrError"]["results"]]

    def query(self, query: str) -> dict:
        body = requests.post(f"{self.url}/graphql", json={"query": query}, timeout=60).json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def launch(self, assets: list[str], run_config: dict, tags: dict[str, str] | None = None) -> str:
        """A run of these assets, launched as the UI's Materialize does; its run id."""
        return self._launch("launchRun", assets, run_config, {"tags": _tag_list(tags or {})})

    def reexecute(self, parent_run_id: str, assets: list[str], steps: list[str], run_config: dict, tags: dict[str, str]) -> str:
        """A re-execution of some of a run's steps, launched as the UI's Re-execute -> Selected steps does; its run id."""
        metadata = {"parentRunId": parent_run_id, "rootRunId": parent_run_id, "tags": _tag_list(tags)}
        return self._launch("launchPipelineReexecution", assets, run_config, metadata, stepKeys=steps)

    def _launch(self, mutation: str, assets: list[str], run_config: dict, metadata: dict, **params) -> str:
        params |= {
            "selector": {**REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": [{"path": [a]} for a in assets]},
            "runConfigData": run_config,
            "executionMetadata": metadata,
        }
        body = requests.post(
            f"{self.url}/graphql",
            timeout=60,
            json={
                "variables": {"p": params},
                "query": f"""
            mutation($p: ExecutionParams!) {{ {mutation}(executionParams: $p) {{
              __typename ... on LaunchRunSuccess {{ run {{ runId }} }} ... on PythonError {{ message }} }} }}""",
            },
        ).json()
        assert body["data"][mutation]["__typename"] == "LaunchRunSuccess", body
        return body["data"][mutation]["run"]["runId"]

    def terminate(self, run_id: str) -> None:
        """The UI's Terminate button."""
        data = self.query(f'mutation {{ terminateRun(runId: "{run_id}") {{ __typename ... on PythonError {{ message }} }} }}')
        assert data["terminateRun"]["__typename"] == "TerminateRunSuccess", data

    def run_status(self, run_id: str) -> str:
        data = self.query(f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')
        return data["runOrError"]["status"]

    def partitions(self) -> list[str]:
        node = self.query('{ assetNodeOrError(assetKey: {path: ["raw_corpus"]}) { ... on AssetNode { partitionKeys } } }')
        return node["assetNodeOrError"]["partitionKeys"]

    def materializations(self, asset: str) -> list[dict]:
        """Newest first: run id, partition, and metadata by label (paths, JSON, numbers, text)."""
        data = self.query(f"""{{ assetOrError(assetKey: {{path: ["{asset}"]}}) {{ ... on Asset {{
            assetMaterializations(limit: 1000) {{ runId partition timestamp metadataEntries {{ label
              ... on PathMetadataEntry {{ path }} ... on JsonMetadataEntry {{ jsonString }}
              ... on IntMetadataEntry {{ intValue }} ... on TextMetadataEntry {{ text }} }} }} }} }} }}""")
        found = (data["assetOrError"] or {}).get("assetMaterializations") or []
        out = []
        for m in found:
            meta = {e["label"]: _entry_value(e) for e in m["metadataEntries"]}
            out.append({"run_id": m["runId"], "partition": m["partition"], "timestamp": float(m["timestamp"]) / 1000, "metadata": meta})
        return out

    def by_partition(self, asset: str) -> dict[str, list[dict]]:
        """The asset's materializations, newest first, per partition."""
        out: dict[str, list[dict]] = {}
        for m in self.materializations(asset):
            out.setdefault(m["partition"], []).append(m)
        return out

    def runs(self, job: str) -> list[str]:
        return [r["runId"] for r in self.run_records(job)]

    def failed_runs(self) -> list[str]:
        data = self.query("{ runsOrError(filter: {statuses: [FAILURE]}) { ... on Runs { results { runId jobName } } } }")
        return [r["runId"] for r in data["runsOrError"]["results"]]

    def run_records(self, job: str) -> list[dict]:
        data = self.query(
            f'{{ runsOrError(filter: {{pipelineName: "{job}"}}) {{ ... on Runs {{ results {{ runId status startTime endTime '
            f"tags {{ key value }} }} }} }} }}"
        )
        return data["runsOrError"]["results"]

    def wait_for(self, what: str, condition, timeout: float, failed_runs_allowed: bool = False):
        deadline = time.time() + timeout
        while time.time() < deadline:
            exited = [p.args[0] for p in self.procs if p.poll() is not None]
            assert not exited, f"{', '.join(map(os.path.basename, exited))} exited while waiting for {what}; see {self.log.name}"
            value = condition()
            if value:
                return value
            failed = [] if failed_runs_allowed else self.failed_runs()
            assert not failed, f"runs failed while waiting for {what}: {failed}; see {self.log.name}"
            time.sleep(3)
        raise TimeoutError(f"waited {timeout:.0f}s for {what}; see {self.log.name}")


def _end_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process's group, wait for the processes, then SIGKILL what outlived its parent in
    the group (run workers, trainer ranks)."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)
        _signal_group(p, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _entry_value(entry: dict):
    if "path" in entry:
        return entry["path"]
    if "jsonString" in entry:
        return json.loads(entry["jsonString"])
    return entry.get("intValue", entry.get("text"))
