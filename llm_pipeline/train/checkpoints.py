"""Where checkpoints live, which are complete and intact, and the consolidated fp32 weights.

A checkpoint counts only once its `complete.json` marker exists, written after every rank
finished saving (and, for a remote root, after every file was uploaded). The marker lists the
sha256 of every file of the checkpoint. DeepSpeed's checkpoint files are pickles, and unpickling
runs code: nothing is loaded from a checkpoint until every file matches the marker and no file
was added. Resume takes the newest complete checkpoint that verifies, warning about (and skipping)
newer ones that do not; older ones beyond keep_last are removed.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from fsspec.implementations.local import LocalFileSystem
from safetensors.torch import save_file

from llm_pipeline.faults import crash_point
from llm_pipeline.storage.folders import Storage, sha256_file
from llm_pipeline.train.activation_checkpointing import plain_names
from llm_pipeline.train.model_config import ModelConfig

MARKER = "complete.json"
# Each node's list of the files it wrote (name -> sha256), merged into the marker by rank 0.
FILE_LIST = "files-rank{rank:05d}.json"
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

    def discard(self, tag: str) -> None:
        """Before a tag is saved (again): drop what a crashed or refused attempt left under it, so the
        marker written after this save can only list files this save wrote. Idempotent; once per node."""
        shutil.rmtree(os.path.join(self.local_dir, tag), ignore_errors=True)
        if self.mirrored:
            self.remote.remove(tag)

    def upload(self, tag: str, rank: int, after_file=None) -> None:
        """Once per node, after every rank saved: hash this node's files of `tag`, copy them to a
        remote root, and leave their list for rank 0's marker. `after_file(name)` runs after each file."""
        folder = os.path.join(self.local_dir, tag)
        hashes = {}
        for name in _files_under(folder):
            if _is_bookkeeping(name):
                continue
            hashes[name] = sha256_file(LocalFileSystem(), os.path.join(folder, *name.split("/")))
            if self.mirrored:
                self.remote.child(tag).put_file(os.path.join(folder, *name.split("/")), name)
            if after_file is not None:
                after_file(name)
        self.remote.child(tag).write_json(FILE_LIST.format(rank=rank), hashes)

    def mark_complete(self, tag: str, info: dict) -> None:
        """Rank 0 only, after every node uploaded: the marker, with every node's file hashes, goes last."""
        folder = self.remote.child(tag)
        files: dict[str, str] = {}
        for name in folder.listdir():
            if _is_file_list(name):
                files.update(folder.read_json(name))
        folder.write_json(MARKER, {**info, "files": dict(sorted(files.items()))})

    def verify(self, tag: str) -> list[str]:
        """Problems with this machine's copy of a complete checkpoint (after `fetch`): files missing,
        changed, or not listed in the marker. Empty: safe to load."""
        try:
            listed = self.remote.child(tag).read_json(MARKER)["files"]
            if not isinstance(listed, dict):
                raise TypeError("'files' is not a mapping")
        except (ValueError, KeyError, TypeError) as e:
            return [f"{MARKER} of {tag} is not a valid marker ({type(e).__name__}: {e})"]
        folder = os.path.join(self.local_dir, tag)
        present = {n for n in _files_under(folder) if not _is_bookkeeping(n)}
        problems = [f"{tag}/{name}: not listed in {MARKER}" for name in sorted(present - set(listed))]
        for name, sha in sorted(listed.items()):
            path = os.path.join(folder, *name.split("/"))
            if name not in present:
                problems.append(f"{tag}/{name}: missing")
            elif sha256_file(LocalFileSystem(), path) != sha:
                problems.append(f"{tag}/{name}: sha256 does not match {MARKER}")
        return problems

    def newest_intact(self, warn) -> str | None:
        """The newest complete checkpoint whose files all verify (fetched first from a remote root)."""
        for tag in reversed(self.complete_tags()):
            self.fetch(tag)
            problems = self.verify(tag)
            if not problems:
                return tag
            warn(f"checkpoint {tag} fails verification, not loading it: {'; '.join(problems)}")
        return None

    def prune_local(self) -> None:
        """Drop local copies (of a remote root) that the remote no longer keeps. Only tags older
        than the newest complete one: a newer folder may be a save in progress on another node."""
        if not self.mirrored:
            return
        kept, newest = set(self.complete_tags()), self.newest()
        for tag in os.listdir(self.local_dir):
            if tag.startswith("step_") and newest and tag < newest and tag not in kept:
                shutil.rmtree(os.path.join(self.local_dir, tag), ignore_errors=True)

    def prune(self, keep_last: int, keep: frozenset[str] = frozenset()) -> list[str]:
        """Every complete checkpoint but the newest `keep_last` and those in `keep` is removed."""
        removed = []
        for tag in self.complete_tags()[:-keep_last]:
            if tag in keep:
                continue
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


def save(
    engine, store: CheckpointStore, step: int, state: dict, rank: int, local_rank: int, keep_last: int, keep: frozenset[str] = frozenset()
) -> str:
    """Every rank calls this together. The protocol, barrier by barrier: clear the tag (once per node) ->
    every rank saves its shards -> each node hashes and uploads its own files -> rank 0 writes the
    marker (last) and prunes -> nodes drop local copies the root no longer keeps. A crash anywhere
    before the marker leaves a checkpoint that resume never takes."""
    tag = tag_for(step)
    if local_rank == 0:
        store.discard(tag)
    dist.barrier()
    engine.save_checkpoint(store.local_dir, tag=tag, client_state=state, save_latest=False)
    crash_point("after_save", rank, step)
    dist.barrier()
    if local_rank == 0:
        store.upload(tag, rank, after_file=lambda _name: crash_point("mid_upload", rank, step))
    dist.barrier()
    if rank == 0:
        store.mark_complete(tag, {"step": step, "tokens_seen": state["tokens_seen"], "time": time.time()})
        store.prune(keep_last, keep)
    dist.barrier()
    if local_rank == 0 and rank != 0:
        store.prune_local()
    crash_point("after_checkpoint", rank, step)  # the checkpoint complete, the next step not begun
    return tag


UNIVERSAL = "universal"  # <local checkpoint dir>/universal/<tag>: a checkpoint converted for another world size


def saved_partitions(store: CheckpointStore, tag: str) -> int:
    """Into how many ranks' files the optimizer state of `tag` is split: the world size it was saved at
    (ZeRO 1-3, and stage 0 with bf16's optimizer), or 0 for a plain data-parallel checkpoint (stage 0),
    whose one model states file holds the whole state and loads at any world size."""
    return len(glob.glob(os.path.join(store.local_dir, tag, "*_optim_states.pt")))


def universal_dir(store: CheckpointStore) -> str:
    return os.path.join(store.local_dir, UNIVERSAL)


def to_universal(store: CheckpointStore, tag: str) -> None:
    """DeepSpeed's universal checkpoint of `tag` (its ds_to_universal: every parameter's fp32 weights and
    optimizer moments whole, re-partitioned on load at any world size), into universal_dir(store).
    Once per node, from the verified checkpoint; the conversion runs in its own process."""
    out = universal_dir(store)
    shutil.rmtree(os.path.join(out, tag), ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        os.path.join(store.local_dir, tag),
        "--output_folder",
        os.path.join(out, tag),
        "--inject_missing_state",
        "--num_extract_workers",
        "2",
        "--num_merge_workers",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(
            f"checkpoint {tag} cannot resume on another world size: DeepSpeed's universal checkpoint "
            f"conversion failed (exit {done.returncode}); resume with the world size it was saved at. "
            f"Its output: {(done.stdout + done.stderr)[-3000:]}"
        )


def export_final(store: CheckpointStore, tag: str, zero_stage: int, model: ModelConfig, final: Storage) -> None:
    """Rank 0, after the last save: the checkpoint's fp32 weights as `final/model.safetensors` plus
    `final/model_config.json`. Only files the marker lists are unpickled."""
    store.fetch(tag)  # other nodes' shards, when they are not on a shared disk
    problems = store.verify(tag)
    if problems:
        raise RuntimeError(f"final checkpoint {tag} fails verification: {'; '.join(problems)}")
    local_final = os.path.join(store.local_dir, "_final")
    os.makedirs(local_final, exist_ok=True)
    save_file(
        consolidated_fp32_state_dict(store.local_dir, tag, zero_stage),
        os.path.join(local_final, "model.safetensors"),
        metadata={"format": "pt"},
    )
    final.put_file(os.path.join(local_final, "model.safetensors"), "model.safetensors")
    final.write_json("model_config.json", model.to_dict())


def consolidated_fp32_state_dict(checkpoint_dir: str, tag: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """One fp32 state dict from a DeepSpeed checkpoint, in a plain process (no distributed world).

    Stages 1-3, and stage 0 with bf16 (whose fp32 master weights live in optimizer shards), go
    through DeepSpeed's zero_to_fp32. Plain stage 0 is not a ZeRO checkpoint: rank 0 stored the
    whole module.
    """
    folder = os.path.join(checkpoint_dir, tag)
    if zero_stage == 0 and not glob.glob(os.path.join(folder, "bf16_zero_pp_rank_*_optim_states.pt")):
        state = torch.load(os.path.join(folder, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=True)["module"]
    else:
        state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag)
    return {k: v.float().contiguous() for k, v in plain_names(state).items()}


def _files_under(folder: str) -> list[str]:
    """Relative names (with /) of every file below `folder`; empty if it does not exist."""
    names = []
    for dirpath, _, files in os.walk(folder):
        for file in files:
            names.append(os.path.relpath(os.path.join(dirpath, file), folder).replace(os.sep, "/"))
    return sorted(names)


# Our own bookkeeping in a tag folder, and the temporary names their atomic writes pass through (on a
# shared disk another node may be writing its list while this one hashes). Exact names only: a looser
# match would let a planted file that DeepSpeed's globs load (`*_optim_states.pt`) escape verification.
_FILE_LIST_NAME = re.compile(r"files-rank\d{5}\.json")
_BOOKKEEPING = re.compile(r"(files-rank\d{5}\.json|complete\.json)(\.tmp-[0-9a-f]{32})?")


def _is_bookkeeping(name: str) -> bool:
    return _BOOKKEEPING.fullmatch(name) is not None


def _is_file_list(name: str) -> bool:
    return _FILE_LIST_NAME.fullmatch(name) is not None
