"""Validation while training: held-out loss and bits per byte on a fixed slice of the validation split.

The slice is the first `eval_tokens` tokens' worth of whole documents of the runs' validation split
(the shard sets in order), scored as eval_metrics scores (train/scoring.py) in batches of
`micro_batch` windows. Batch b is scored by rank b mod world size and the sums are added over the
ranks, so the figure does not depend on the world size. Under ZeRO-3 a forward gathers parameters
from every rank: a rank with no batch left scores the first one again, unrecorded, so all join.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.config import TrainConfig
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.scoring import Window, batch_nats, split_documents, window_batches
from llm_pipeline.train.token_store import TokenCache, open_split


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
    docs: list[np.ndarray] = []
    tokens = 0
    for array in stream.arrays:
        for doc in split_documents(np.asarray(array), manifest.eos_id):
            if docs and tokens + len(doc) > cfg.eval_tokens:
                break
            docs.append(doc)
            tokens += len(doc)
        else:
            continue
        break
    return ValidationSet(
        window_batches(docs, manifest.eos_id, cfg.seq_len, cfg.micro_batch), len(docs), tokens, _text_bytes(cfg.tokenizer_uri, docs)
    )


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
