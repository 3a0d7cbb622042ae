"""Experiment trackers: where a run's curves go, chosen by one setting (TrainConfig.tracker).

    tensorboard  event files in the run folder (`<run>/tensorboard`), opened with `tensorboard --logdir`
    mlflow       any MLflow tracking server (tracker_uri), the experiment `experiment`
    wandb        Weights & Biases: online with WANDB_API_KEY, else offline files (`wandb sync` uploads them)
    none         nothing

Rank 0 opens one tracker run per training run; a resumed launch continues it (its id is kept in the
run folder, `tracker.json`), and eval_metrics logs into it afterwards (`reopen`). A tracker that
cannot be reached when a run starts fails it by name (`check_reachable`); once training is under
way, a tracker that goes away costs a warning, never the run (`Guarded`).
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict

from llm_pipeline.redact import redacted
from llm_pipeline.storage.folders import Storage, bounded

TrackerKind = Literal["tensorboard", "mlflow", "wandb", "none"]
RECORD = "tracker.json"  # in the run folder: which tracker run this training run logs to
TENSORBOARD = "tensorboard"  # the event files' folder in the run folder
_REACH_TIMEOUT_S = 10.0


class TrackerError(RuntimeError):
    """A tracker that cannot be used; the message names it and where it was looked for."""


class TrackerRun(BaseModel):
    """Which tracker run a training run logs to, and where a person finds its curves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: TrackerKind
    run_id: str  # the tracker's own id ("" for tensorboard and none)
    link: str  # a URL, or the command that shows the curves


def check_reachable(kind: TrackerKind, uri: str) -> None:
    """TrackerError naming the tracker when it cannot take a run: MLflow's server not answering its
    health check, the mlflow or wandb package missing, TensorBoard's writer missing."""
    if kind == "mlflow":
        if not uri:
            raise TrackerError("tracker mlflow needs tracker_uri, the MLflow tracking server (e.g. http://mlflow:5000)")
        _package("mlflow", "mlflow")
        if uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_REACH_TIMEOUT_S) as answer:
                    answer.read(64)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise TrackerError(f"the MLflow tracking server {redacted(bounded(uri))} cannot be reached: {bounded(str(e))}") from None
    elif kind == "wandb":
        _package("wandb", "wandb")
    elif kind == "tensorboard":
        _package("tensorboard", "tensorboard")


def _package(module: str, pip_name: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise TrackerError(f"tracker {module} needs the {pip_name} package: pip install '{pip_name}'") from None


class Tracker:
    """What the trainer and the stages call; one per tracker run. This base logs nothing."""

    run = TrackerRun(kind="none", run_id="", link="")

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class NoTracker(Tracker):
    """tracker: none."""


class TensorBoardTracker(Tracker):
    """Event files under `<run>/tensorboard`. On a remote storage root they are written to a local
    folder and copied up at every flush (a checkpoint, the end), where `tensorboard --logdir` (or
    a copy) reads them."""

    def __init__(self, run: Storage):
        from torch.utils.tensorboard import SummaryWriter

        self.remote = None if run.is_local else run.child(TENSORBOARD)
        self.local = run.child(TENSORBOARD).path if run.is_local else tempfile.mkdtemp(prefix="llm-pipeline-tensorboard-")
        if self.remote is not None and self.remote.exists(""):
            self.remote.download_dir(self.local)  # a resumed run appends to its own event files
        self.writer = SummaryWriter(self.local)
        self.run = TrackerRun(kind="tensorboard", run_id="", link=f"tensorboard --logdir {run.child(TENSORBOARD).uri}")

    def log_params(self, params: Mapping[str, object]) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(dict(params), indent=2, sort_keys=True, default=str) + "\n```")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()
        if self.remote is not None:
            for folder, _, files in os.walk(self.local):
                for name in files:
                    path = os.path.join(folder, name)
                    self.remote.put_file(path, os.path.relpath(path, self.local).replace(os.sep, "/"))

    def close(self) -> None:
        self.flush()
        self.writer.close()


class MlflowTracker(Tracker):
    def __init__(self, uri: str, experiment: str, run_id: str = "", tags: Mapping[str, str] | None = None, name: str = ""):
        # MLflow's client retries a failed request seven times with a growing wait and gives each two
        # minutes: a server gone mid-run would stall a training step for many minutes. Unless set.
        for variable, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")):
            os.environ.setdefault(variable, value)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if not run_id:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, tags=dict(tags or {}), run_name=name or None).info.run_id
        experiment_id = self.client.get_run(run_id).info.experiment_id
        link = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if uri.startswith("http") else f"{uri} run {run_id}"
        self.run = TrackerRun(kind="mlflow", run_id=run_id, link=redacted(link))

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run.run_id).data.params
        fresh = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]  # a resumed run logs none twice
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run.run_id, params=fresh[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def register_model(self, name: str, folder: Storage) -> str:
        """A version of registered model `name` pointing at a published folder; its version number.
        A remote folder is the version's source as it is; a local one is logged as the run's artifacts
        first (MLflow accepts a local source only inside the run's artifact folder)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise
        source = folder.uri
        if folder.is_local:
            self.client.log_artifacts(self.run.run_id, folder.path, artifact_path=f"model/{folder.name}")
            source = f"runs:/{self.run.run_id}/model/{folder.name}"
        return str(self.client.create_model_version(name, source, run_id=self.run.run_id).version)

    def close(self) -> None:
        self.client.set_terminated(self.run.run_id)


class WandbTracker(Tracker):
    """Online when WANDB_API_KEY is set, offline files under `<run>/wandb` otherwise (`wandb sync`)."""

    def __init__(self, run: Storage, experiment: str, run_id: str = "", tags: Mapping[str, str] | None = None, name: str = ""):
        import wandb

        offline = not os.environ.get("WANDB_API_KEY")
        folder = run.path if run.is_local else tempfile.mkdtemp(prefix="llm-pipeline-wandb-")
        self.wandb = wandb.init(
            project=experiment,
            id=run_id or None,
            resume="allow",
            name=name or None,
            dir=folder,
            mode="offline" if offline else "online",
            tags=[f"{k}={v}" for k, v in (tags or {}).items()][:64],
            settings=wandb.Settings(silent=True, console="off"),
        )
        link = f"wandb sync {self.wandb.dir.rsplit('/files', 1)[0]}" if offline else (self.wandb.url or "")
        self.run = TrackerRun(kind="wandb", run_id=self.wandb.id, link=link)

    def log_params(self, params: Mapping[str, object]) -> None:
        self.wandb.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.wandb.log(dict(metrics), step=step)

    def close(self) -> None:
        self.wandb.finish()


class Guarded(Tracker):
    """A tracker whose failures after the start are warnings: the first is logged, the tracker is
    left alone after it, and training goes on."""

    def __init__(self, tracker: Tracker, warn: Callable[[str], None]):
        self.tracker, self.warn, self.broken = tracker, warn, False
        self.run = tracker.run

    def _call(self, what: str, call: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001 - any failure of a tracker's client; training must not depend on it
            self.broken = True
            self.warn(
                f"tracker {self.run.kind} failed to {what} ({type(e).__name__}: {bounded(redacted(str(e)))}); training goes on without it"
            )

    def log_params(self, params: Mapping[str, object]) -> None:
        self._call("log the parameters", lambda: self.tracker.log_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._call("log metrics", lambda: self.tracker.log_metrics(metrics, step))

    def flush(self) -> None:
        self._call("flush", self.tracker.flush)

    def close(self) -> None:
        self._call("close", self.tracker.close)


def open_tracker(
    kind: TrackerKind, uri: str, experiment: str, run: Storage, tags: Mapping[str, str] | None = None, name: str = ""
) -> Tracker:
    """The tracker run of the training run in `run` (a new one, or the one `tracker.json` names)."""
    if kind == "none":
        return NoTracker()
    check_reachable(kind, uri)
    known = reopen_record(run)
    run_id = known.run_id if known and known.kind == kind else ""
    tracker: Tracker
    if kind == "tensorboard":
        tracker = TensorBoardTracker(run)
    elif kind == "mlflow":
        tracker = MlflowTracker(uri, experiment, run_id, tags, name)
    else:
        tracker = WandbTracker(run, experiment, run_id, tags, name)
    run.write_json(RECORD, tracker.run.model_dump())
    return tracker


def reopen_record(run: Storage) -> TrackerRun | None:
    """The tracker run a training run logged to, from its run folder; None when it has none."""
    if not run.exists(RECORD):
        return None
    return TrackerRun.model_validate(run.read_json(RECORD))


def reopen(kind: TrackerKind, uri: str, experiment: str, run: Storage) -> Tracker:
    """The training run's tracker run again, for a later stage to log into (eval_metrics, published_model)."""
    known = reopen_record(run)
    if kind == "none" or known is None or known.kind != kind:
        return NoTracker()
    return open_tracker(kind, uri, experiment, run)
