"""The training run's experiment tracker run, for the stages after training to log into."""

from __future__ import annotations

import dagster as dg

from llm_pipeline.contracts import CheckpointRef
from llm_pipeline.resources import StorageResource
from llm_pipeline.train.tracking import Guarded, Tracker, TrackerError, reopen


def training_tracker(context: dg.AssetExecutionContext, storage: StorageResource, checkpoint: CheckpointRef) -> Guarded:
    """The tracker run `checkpoint`'s training logged to; its failures are warnings (a stage never
    fails because a tracker did)."""
    cfg = checkpoint.train_config
    try:
        tracker = reopen(cfg.tracker, cfg.tracker_uri, cfg.experiment, storage.at(checkpoint.run_uri))
    except (TrackerError, OSError, ValueError) as e:
        context.log.warning(f"the training's {cfg.tracker} tracker run cannot be reopened, nothing is logged to it: {e}")
        return Guarded(Tracker(), context.log.warning)
    return Guarded(tracker, context.log.warning)
