import numpy as np
import pytest
import torch

from llm_pipeline.evaluate.metrics import rolling_windows
from llm_pipeline.train.data import TokenWindows

TOKENS = np.arange(10_000, dtype=np.uint16) % 997


def _stream(loader, steps, start=0):
    return [loader.batch(k) for k in range(start, start + steps)]


def test_windows_are_shifted_targets():
    x, y = TokenWindows(TOKENS, 16, 4, seed=1).batch(0)
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_epoch_visits_every_window_once_and_reshuffles():
    loader = TokenWindows(TOKENS, 16, 4, seed=3)
    starts = [int(x[i, 0]) for k in range(loader.batches_per_epoch) for x, _ in [loader.batch(k)] for i in range(4)]
    assert len(set(starts)) == len(starts) == loader.batches_per_epoch * 4
    first = torch.cat([loader.batch(k)[0] for k in range(3)])
    next_epoch = torch.cat([loader.batch(loader.batches_per_epoch + k)[0] for k in range(3)])
    assert not torch.equal(first, next_epoch)


def test_ranks_get_disjoint_slices():
    a, b = TokenWindows(TOKENS, 16, 4, 0, 2, seed=5), TokenWindows(TOKENS, 16, 4, 1, 2, seed=5)
    for k in range(a.batches_per_epoch):
        rows_a = {tuple(r.tolist()) for r in a.batch(k)[0]}
        rows_b = {tuple(r.tolist()) for r in b.batch(k)[0]}
        assert not rows_a & rows_b


@pytest.mark.parametrize("world", [1, 2])
def test_resume_at_any_step_sees_the_same_batches(world):
    for rank in range(world):
        uninterrupted = _stream(TokenWindows(TOKENS, 32, 3, rank, world, seed=9), 60)
        resumed = _stream(TokenWindows(TOKENS, 32, 3, rank, world, seed=9), 23, start=37)
        for (x1, y1), (x2, y2) in zip(uninterrupted[37:], resumed):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        TokenWindows(np.arange(100, dtype=np.uint16), 64, 4)


@pytest.mark.parametrize("length,window", [(1, 8), (7, 8), (8, 8), (9, 8), (30, 8), (100, 33)])
def test_rolling_windows_are_the_harness_windows(length, window):
    """Our held-out scoring reads each document exactly as lm-eval's loglikelihood_rolling does."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    doc = np.arange(100, 100 + length)
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(doc.tolist(), prefix_token=7, max_seq_len=window, context_len=1)]
    ours = list(rolling_windows(doc, 7, window))
    assert len(ours) == len(theirs)
    for (inp, tgt, scored), (context, continuation) in zip(ours, theirs):
        assert len(inp) <= window
        assert (context + continuation)[:-1] == inp.tolist()  # what the model reads
        assert tgt[len(tgt) - scored:].tolist() == continuation  # what is scored
    assert sum(s for _, _, s in ours) == length  # every token once
