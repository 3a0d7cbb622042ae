"""Where checkpoints live, which are complete, and the consolidated fp32 weights.

A checkpoint counts only once its `complete.json` marker exists, written after every rank
finished saving (and, for a remote root, after every file was uploaded). Resume picks the
newest complete one; older ones beyond keep_last are removed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile

import torch

from llm_pipeline.storage import Storage

MARKER = "complete.json"
# Where a remote root's checkpoints are written before upload: a fast local disk on each node.
STAGING_ENV = "LLM_PIPELINE_CHECKPOINT_STAGING"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


class CheckpointStore:
    """DeepSpeed writes to a local folder; for a remote root it is mirrored to `<run>/checkpoints`.

    With a local root every node must see the same folder (a shared disk). With a remote root
    each node stages its own ranks' files and uploads them; rank 0 fetches the rest to consolidate.
    """

    def __init__(self, run: Storage):
        self.remote = run.child("checkpoints")
        if run.is_local:
            self.local_dir = self.remote.path
        else:
            key = hashlib.sha256(run.uri.encode()).hexdigest()[:16]
            staging = os.environ.get(STAGING_ENV) or os.path.join(tempfile.gettempdir(), "llm_pipeline_ckpt")
            self.local_dir = os.path.join(staging, key)
        os.makedirs(self.local_dir, exist_ok=True)

    @property
    def mirrored(self) -> bool:
        return self.local_dir != self.remote.path

    def complete_tags(self) -> list[str]:
        return sorted(t for t in self.remote.listdir() if t.startswith("step_") and self.remote.exists(f"{t}/{MARKER}"))

    def newest(self) -> str | None:
        tags = self.complete_tags()
        return tags[-1] if tags else None

    def fetch(self, tag: str) -> None:
        """Make a complete checkpoint available locally: downloads, from a remote root, the files
        this machine lacks (on resume all of them; before consolidation, other nodes' shards)."""
        if self.mirrored:
            self.remote.child(tag).download_dir(os.path.join(self.local_dir, tag), skip_existing=True)

    def upload(self, tag: str) -> None:
        """Once per node, after every rank saved: copy this node's files of `tag` to a remote root."""
        if self.mirrored:
            self.remote.child(tag).upload_dir(os.path.join(self.local_dir, tag))

    def mark_complete(self, tag: str, info: dict) -> None:
        """Rank 0 only, after every node uploaded: the marker goes last."""
        self.remote.child(tag).write_json(MARKER, info)

    def prune_local(self) -> None:
        """Drop local copies (of a remote root) that the remote no longer keeps. Only tags older
        than the newest complete one: a newer folder may be a save in progress on another node."""
        if not self.mirrored:
            return
        kept, newest = set(self.complete_tags()), self.newest()
        for tag in os.listdir(self.local_dir):
            if tag.startswith("step_") and newest and tag < newest and tag not in kept:
                shutil.rmtree(os.path.join(self.local_dir, tag), ignore_errors=True)

    def prune(self, keep_last: int) -> list[str]:
        removed = []
        for tag in self.complete_tags()[:-keep_last]:
            self.remote.remove(tag)
            removed.append(tag)
        # Incomplete folders older than the newest complete one are leftovers of a crash.
        newest = self.newest()
        for tag in self.remote.listdir():
            if tag.startswith("step_") and newest and tag < newest and not self.remote.exists(f"{tag}/{MARKER}"):
                self.remote.remove(tag)
                removed.append(tag)
        self.prune_local()
        return removed


def consolidated_fp32_state_dict(checkpoint_dir: str, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """One fp32 state dict from a DeepSpeed checkpoint, in a plain process (no distributed world).

    Stages 1-3, and stage 0 with bf16 (whose fp32 master weights live in optimizer shards), go
    through DeepSpeed's zero_to_fp32. Plain stage 0 is not a ZeRO checkpoint: rank 0 stored the
    whole module.
    """
    folder = os.path.join(checkpoint_dir, tag)
    if zero_stage == 0 and not glob.glob(os.path.join(folder, "bf16_zero_pp_rank_*_optim_states.pt")):
        state = torch.load(os.path.join(folder, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag)
    return {k: v.float().contiguous() for k, v in state.items()}
