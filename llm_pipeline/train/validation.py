"""Validation while training: held-out loss and bits per byte on a fixed slice of the validation split.

The slice is the first `eval_tokens` tokens' worth of whole documents of the runs' validation split
(the shard sets in order), scored as eval_metrics scores (train/scoring.py) in batches of
`micro_batch` windows. Batch b is scored by rank b mod world size and the sums are added over the
ranks, so the figure does not depend on the world size. Under ZeRO-3 a forward gathers parameters
from every rank: a rank with no batch left scores the first one again, unrecorded, so all join.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.scoring import Window, batch_nats, window_batches
from llm_pipeline.train.token_store import TokenCache, open_split

_CHUNK = 1 << 20  # ids scanned at a time for document ends


@dataclass(frozen=True)
class ValidationSet:
    batches: list[list[Window]]
    documents: int
    tokens: int
    text_bytes: int | None  # UTF-8 bytes of the documents' text; None without the tokenizer


@dataclass(frozen=True)
class Validation:
    step: int
    loss: float
    bits_per_byte: float | None


def validation_set(cfg: TrainConfig) -> ValidationSet | None:
    """The slice the run is validated on; None when evaluation during training is off."""
    if not cfg.eval_every:
        return None
    shard_sets = [Storage(uri) for uri in cfg.shards_uris]
    stream, manifest = open_split(shard_sets, "val", TokenCache.of(cfg), cfg.tokenizer_sha256 or None, cfg.model.vocab_size)
    docs = first_documents(stream.arrays, manifest.eos_id, cfg.eval_tokens)
    return ValidationSet(
        window_batches(docs, manifest.eos_id, cfg.seq_len, cfg.micro_batch),
        len(docs),
        sum(len(d) for d in docs),
        _text_bytes(cfg.tokenizer_uri, docs),
    )


def first_documents(arrays: Sequence[np.ndarray], eos_id: int, max_tokens: int) -> list[np.ndarray]:
    """Whole documents from the start of the split, as many as fit in `max_tokens` (at least one). Read
    a chunk at a time: the split may be far larger than memory, the slice never is."""
    docs: list[np.ndarray] = []
    tokens = 0
    for array in arrays:
        start = 0
        for chunk in range(0, len(array), _CHUNK):
            for end in (np.flatnonzero(np.asarray(array[chunk : chunk + _CHUNK]) == eos_id) + chunk).tolist():
                doc = np.asarray(array[start:end])
                start = end + 1
                if not len(doc):
                    continue
                if docs and tokens + len(doc) > max_tokens:
                    return docs
                docs.append(doc)
                tokens += len(doc)
        if start < len(array) and not docs:  # a split of one unfinished document
            docs.append(np.asarray(array[start:]))
    return docs


def _text_bytes(tokenizer_uri: str, docs: list[np.ndarray]) -> int | None:
    """The documents' text in UTF-8 bytes, decoded as eval_metrics decodes them (its bits per byte)."""
    if not tokenizer_uri:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(Storage(tokenizer_uri).read_bytes("tokenizer.json").decode("utf-8"))
    return sum(len(text.encode("utf-8")) for text in tokenizer.decode_batch([d.tolist() for d in docs], skip_special_tokens=True))


def validate(model: CausalLM, vset: ValidationSet, step: int, rank: int, world: int, zero3: bool) -> Validation:
    """Every rank calls this together; each gets the same figures."""
    mine = vset.batches[rank::world]
    rounds = -(-len(vset.batches) // world) if zero3 else len(mine)
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    for i in range(rounds):
        if i < len(mine):
            batch_sum, batch_count = batch_nats(model, mine[i])
            nats, count = nats + batch_sum, count + batch_count
        else:
            batch_nats(model, vset.batches[0])
    model.train(was_training)
    totals = torch.tensor([nats, float(count)], dtype=torch.float64, device=next(model.parameters()).device)
    if world > 1:
        dist.all_reduce(totals)
    total_nats, total_count = totals.tolist()
    bits_per_byte = total_nats / math.log(2) / vset.text_bytes if vset.text_bytes else None
    return Validation(step, total_nats / max(total_count, 1.0), bits_per_byte)
