"""Scoring held-out documents: the negative log-likelihood of every token, forward only.

Each document is scored on its own, from the document boundary, the way lm-evaluation-harness scores
`loglikelihood_rolling` tasks: the first window reads the prefix (EOS) then the document, every later
window predicts the next `window` tokens with the `window` tokens before them as context (the last
one right-aligned). eval_metrics (evaluate/metrics.py) and the trainer's validation
(train/validation.py) both score this way, so their numbers agree on the same documents.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from llm_pipeline.train.model import CausalLM

Window = tuple[np.ndarray, np.ndarray, int]  # input ids, target ids, how many of the last targets are scored
_ROWS = 1024  # positions per vocabulary-wide logits chunk: a few MB, cache-sized, never the batch's whole logits


def rolling_windows(doc: np.ndarray, prefix_id: int, window: int) -> Iterator[Window]:
    """The windows covering `doc` once, exactly as lm-eval's get_rolling_token_windows(context_len=1)
    + make_disjoint_window."""
    stream = np.concatenate([[prefix_id], doc]).astype(np.int64)
    n = len(doc)
    for start in range(0, n, window):
        end = min(start + window, n)
        first = max(0, end - window)  # the last window reads back to a full context
        yield stream[first:end], stream[first + 1 : end + 1], end - start


def split_documents(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """The documents of an EOS-separated stream (EOS dropped); a trailing unfinished one included."""
    ends = np.flatnonzero(tokens == eos_id)
    starts = np.concatenate([[0], ends + 1])
    return [tokens[a:b] for a, b in zip(starts, np.concatenate([ends, [len(tokens)]])) if b > a]


def window_batches(docs: list[np.ndarray], prefix_id: int, window: int, batch_size: int) -> list[list[Window]]:
    """Every document's windows in batches, longest first: similar lengths share a batch, little padding."""
    windows = [w for doc in docs for w in rolling_windows(doc, prefix_id, window)]
    windows.sort(key=lambda w: -len(w[0]))
    return [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]


@torch.no_grad()  # not inference_mode: ZeRO-3 gathers parameters into tensors autograd may see later
def batch_nats(model: CausalLM, batch: list[Window]) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the scored targets of `batch`, and their count. On the
    model's device and in its dtype; the log-softmax in fp32, over the scored positions only."""
    device = next(model.parameters()).device
    width = len(batch[0][0])
    x = torch.zeros(len(batch), width, dtype=torch.long)
    scored = torch.zeros(len(batch), width, dtype=torch.bool)
    y = torch.zeros(len(batch), width, dtype=torch.long)
    count = 0
    for row, (inp, tgt, n) in enumerate(batch):
        x[row, : len(inp)] = torch.from_numpy(inp)  # right padding: causal attention never reads it
        y[row, : len(tgt)] = torch.from_numpy(tgt)
        scored[row, len(tgt) - n : len(tgt)] = True
        count += n
    hidden = model.hidden_states(x.to(device))[scored.to(device)]
    targets = y.to(device)[scored.to(device)]
    total = 0.0
    for start in range(0, len(targets), _ROWS):
        logits = model.lm_head(hidden[start : start + _ROWS]).float()
        target_logits = logits.gather(1, targets[start : start + _ROWS, None]).squeeze(1)
        total += (torch.logsumexp(logits, dim=-1) - target_logits).sum().item()
    return total, count


def document_nats(model: CausalLM, docs: list[np.ndarray], prefix_id: int, window: int, batch_size: int) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of every token of `docs`, and the token count."""
    total, count = 0.0, 0
    for batch in window_batches(docs, prefix_id, window, batch_size):
        nats, n = batch_nats(model, batch)
        total, count = total + nats, count + n
    return total, count
