"""Held-out loss, perplexity, bits per byte and sample generations, deterministic for a checkpoint.

Bits per byte divides the total loss in bits by the UTF-8 bytes of the evaluated text, so
models with different tokenizers can be compared.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from pydantic import Field
from tokenizers import Tokenizer

from llm_pipeline.settings import Settings
from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.bpe import EOS_TOKEN, tokenizer_hash
from llm_pipeline.train.hf_config import model_config_from_hf
from llm_pipeline.train.model import CausalLM, ModelConfig


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None):
    """Non-overlapping (input, target) windows covering the split in order, for evaluation."""
    n = len(tokens) - 1
    if max_tokens:
        n = min(n, max_tokens)
    t = torch.from_numpy(tokens.astype(np.int64))
    for start in range(0, n, seq_len):
        end = min(start + seq_len, n)
        yield t[start:end][None], t[start + 1 : end + 1][None]


class EvalConfig(Settings):
    seq_len: int = Field(default=128, gt=0, description="tokens per evaluation window")
    max_tokens: int = Field(default=0, ge=0, description="evaluate at most this many val tokens; 0: all")
    prompts: tuple[str, ...] = Field(default=("import os\n", "def main(", "class "), description="sample completions of these")
    max_new_tokens: int = Field(default=48, ge=0, description="tokens generated per sample")
    temperature: float = Field(default=0.8, ge=0, description="sampling temperature; 0: greedy")
    top_k: int = Field(default=50, ge=0, description="sample among the k likeliest tokens; 0: all")
    seed: int = Field(default=0, description="sampling seed")


def load_model(folder: Storage, cfg: ModelConfig) -> CausalLM:
    """Weights from `<folder>/model.safetensors` (local or remote) into our model class."""
    model = CausalLM(cfg)
    load_weights(model, folder)
    return model.eval()


def load_weights(model: CausalLM, folder: Storage) -> None:
    """`<folder>/model.safetensors` (a final checkpoint or a published model) into `model`, strictly."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        folder.get_file("model.safetensors", path)
        try:
            model.load_state_dict(load_file(path), strict=True)
        except Exception as e:  # noqa: BLE001 - safetensors' and torch's errors say nothing of where
            raise ValueError(f"{folder.uri}/model.safetensors cannot be loaded into the model: {type(e).__name__}: {e}") from None


def load_trained_model(final: Storage) -> CausalLM:
    return load_model(final, ModelConfig.from_dict(final.read_json("model_config.json"), f"{final.uri}/model_config.json"))


@torch.no_grad()
def held_out_loss(model: CausalLM, tokens: np.ndarray, eos_id: int, tokenizer: Tokenizer, seq_len: int, max_tokens: int = 0) -> dict:
    seq_len = min(seq_len, model.cfg.max_seq_len)
    total_nats, count = 0.0, 0
    for x, y in eval_windows(tokens, seq_len, max_tokens or None):
        logits = model(x).float()
        total_nats += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        count += y.numel()
    evaluated = tokens[1 : count + 1]
    text_bytes = _utf8_bytes(tokenizer, evaluated, eos_id)
    loss = total_nats / count
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "bits_per_byte": total_nats / math.log(2) / max(text_bytes, 1),
        "tokens_evaluated": count,
        "bytes_evaluated": text_bytes,
    }


def _utf8_bytes(tokenizer: Tokenizer, ids: np.ndarray, eos_id: int) -> int:
    """UTF-8 size of the text the targets encode, decoded document by document."""
    return sum(len(tokenizer.decode(doc.tolist(), skip_special_tokens=True).encode("utf-8"))
               for doc in split_documents(ids.astype(np.int64), eos_id) if len(doc))


@torch.no_grad()
def sample_generations(model: CausalLM, tokenizer: Tokenizer, cfg: EvalConfig, eos_id: int) -> list[dict]:
    samples = []
    for i, prompt in enumerate(cfg.prompts):
        generator = torch.Generator().manual_seed(cfg.seed + i)
        ids = tokenizer.encode(prompt, add_special_tokens=False).ids or [eos_id]
        out = model.generate(torch.tensor([ids]), cfg.max_new_tokens, cfg.temperature, cfg.top_k or None, generator, stop_id=eos_id)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)})
    return samples


def evaluate(final: Storage, val_tokens: np.ndarray, tokenizer_json: str, eos_id: int, cfg: EvalConfig) -> dict:
    model = load_trained_model(final)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    metrics = held_out_loss(model, val_tokens, eos_id, tokenizer, cfg.seq_len, cfg.max_tokens)
    metrics["samples"] = sample_generations(model, tokenizer, cfg, eos_id)
    return metrics


def split_documents(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """The documents of an EOS-separated stream (EOS dropped); a trailing unfinished one included."""
    ends = np.flatnonzero(tokens == eos_id)
    starts = np.concatenate([[0], ends + 1])
    return [tokens[a:b] for a, b in zip(starts, np.concatenate([ends, [len(tokens)]])) if b > a]


def evaluate_published(folder: Storage, val_tokens: np.ndarray, tokenizer_json: str, eos_id: int, cfg: EvalConfig) -> dict:
    """The published model's numbers on the same held-out text.

    With the same tokenizer it sees the very same tokens; with another, the held-out documents are
    decoded and re-encoded with its tokenizer, so bits per byte stay comparable.
    """
    theirs_json = folder.read_bytes("tokenizer.json").decode("utf-8")
    model = load_model(folder, model_config_from_hf(folder.read_json("config.json")))
    theirs = Tokenizer.from_str(theirs_json)
    same_tokenizer = tokenizer_hash(theirs_json) == tokenizer_hash(tokenizer_json)
    their_eos = theirs.token_to_id(EOS_TOKEN)
    tokens = val_tokens
    if not same_tokenizer:
        ours = Tokenizer.from_str(tokenizer_json)
        texts = [ours.decode(d.tolist(), skip_special_tokens=True) for d in split_documents(val_tokens, eos_id)]
        theirs.encode_special_tokens = True
        encoded = theirs.encode_batch(texts, add_special_tokens=False)
        tokens = np.concatenate([np.array(e.ids + [their_eos], dtype=np.int64) for e in encoded])
    max_tokens = cfg.max_tokens
    if max_tokens and not same_tokenizer:
        # Keep the same text: scale the token budget by the ratio of token counts.
        max_tokens = max(1, round(max_tokens * len(tokens) / len(val_tokens)))
    metrics = held_out_loss(model, tokens, their_eos, theirs, cfg.seq_len, max_tokens)
    metrics["same_tokenizer"] = same_tokenizer
    return metrics
