"""Held-out loss, perplexity, bits per byte and sample generations, deterministic for a checkpoint.

Each held-out document is scored on its own, from the document boundary, the way lm-evaluation-
harness scores `loglikelihood_rolling` tasks (train/scoring.py). So the numbers do not depend on how
documents were packed into the split, and the harness's held-out task (evaluate/harness.py)
reproduces them.

Bits per byte divides the total loss in bits by the UTF-8 bytes of the documents' text, so models
with different tokenizers can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from llm_pipeline.evaluate.config import EvalConfig
from llm_pipeline.evaluate.results import Baseline, HeldOutMetrics, Sample
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import eos_id, tokenizer_hash
from llm_pipeline.train.hf_config import model_config_from_hf
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.scoring import document_nats, split_documents
from llm_pipeline.train.weights import load_model, load_trained_model


@dataclass(frozen=True)
class HeldOut:
    """The held-out documents evaluated: their token ids and their text (the same documents for
    our metrics, the harness's tasks and the contamination check)."""

    ids: list[np.ndarray]
    texts: list[str]

    @property
    def bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.texts)

    def first(self, max_tokens: int) -> HeldOut:
        """The first documents up to `max_tokens` tokens (whole documents, at least one); 0: all."""
        if not max_tokens:
            return self
        count, total = 0, 0
        for doc in self.ids:
            if count and total + len(doc) > max_tokens:
                break
            count, total = count + 1, total + len(doc)
        return HeldOut(self.ids[:count], self.texts[:count])


def held_out_documents(val_tokens, eos_id: int, tokenizer: Tokenizer) -> HeldOut:
    """The val split's documents, in order, with their text. `val_tokens`: an array, or a TokenStream of
    memory-mapped splits (documents are views into it, in its own dtype: nothing is widened up front)."""
    arrays = getattr(val_tokens, "arrays", [val_tokens])
    ids = [doc for array in arrays for doc in split_documents(array, eos_id)]
    if not ids:
        raise ValueError("the held-out split holds no document")
    return HeldOut(ids, [tokenizer.decode(d.tolist(), skip_special_tokens=True) for d in ids])


def held_out_loss(model: CausalLM, held_out: HeldOut, prefix_id: int, cfg: EvalConfig) -> HeldOutMetrics:
    window = min(cfg.seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    total_nats, count = document_nats(model, held_out.ids, prefix_id, window, cfg.batch_size)
    text_bytes = held_out.bytes  # encodes every document: once
    loss = total_nats / count
    return HeldOutMetrics(
        loss=loss,
        perplexity=math.exp(loss) if loss < 700 else float("inf"),
        bits_per_byte=total_nats / math.log(2) / max(text_bytes, 1),
        tokens_evaluated=count,
        bytes_evaluated=text_bytes,
        documents_evaluated=len(held_out.ids),
        window=window,
        dtype="bf16" if next(model.parameters()).dtype == torch.bfloat16 else "fp32",
    )


@torch.no_grad()
def sample_generations(model: CausalLM, tokenizer: Tokenizer, cfg: EvalConfig, eos_id: int) -> tuple[Sample, ...]:
    samples: list[Sample] = []
    for i, prompt in enumerate(cfg.prompts):
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(cfg.seed + i)
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [eos_id]
        out = model.generate(
            torch.tensor([ids], device=device), cfg.max_new_tokens, cfg.temperature, cfg.top_k or None, generator, stop_id=eos_id
        )
        samples.append(Sample(prompt=prompt, completion=tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)))
    return tuple(samples)


def evaluate(
    final: Storage, held_out: HeldOut, tokenizer_json: str, eos_id: int, cfg: EvalConfig
) -> tuple[HeldOutMetrics, tuple[Sample, ...]]:
    """The trained model's numbers on `held_out`, and its completions of the configured prompts."""
    model = load_trained_model(final, cfg.resolved_dtype())
    return held_out_loss(model, held_out, eos_id, cfg), sample_generations(model, Tokenizer.from_str(tokenizer_json), cfg, eos_id)


def evaluate_published(folder: Storage, held_out: HeldOut, tokenizer_json: str, cfg: EvalConfig) -> Baseline:
    """The published model's numbers on the same held-out documents.

    With the same tokenizer it sees the very same tokens; with another, the documents' text is
    encoded with its tokenizer, so bits per byte stay comparable.
    """
    theirs_json = folder.read_bytes("tokenizer.json").decode("utf-8")
    model = load_model(folder, model_config_from_hf(folder.read_json("config.json")), cfg.resolved_dtype())
    same_tokenizer = tokenizer_hash(theirs_json) == tokenizer_hash(tokenizer_json)
    theirs = Tokenizer.from_str(theirs_json)
    if not same_tokenizer:
        theirs.encode_special_tokens = True
        ids = [np.array(e.ids, dtype=np.int64) for e in theirs.encode_batch(held_out.texts, add_special_tokens=False)]
        held_out = HeldOut(ids, held_out.texts)
    metrics = held_out_loss(model, held_out, eos_id(theirs), cfg)
    return Baseline(**metrics.model_dump(), version=folder.name, same_tokenizer=same_tokenizer)
