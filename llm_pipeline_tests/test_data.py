import numpy as np
import pytest
import torch

from llm_pipeline.train.data import MIX_BLOCK, DataMixture, MicroBatches, TokenWindows
from llm_pipeline.train.scoring import rolling_windows
from llm_pipeline_tests.helpers import single_source

TOKENS = np.arange(10_000, dtype=np.uint16) % 997


def _stream(loader, steps, start=0):
    per_step = loader.samples_per_micro_step
    return [loader.at(k * per_step) for k in range(start, start + steps)]


def test_windows_are_shifted_targets():
    x, y = single_source(TOKENS, 16, 4, seed=1).at(0)
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_epoch_visits_every_window_once_and_reshuffles():
    windows = TokenWindows(TOKENS, 16, seed=3)
    n = windows.num_windows
    starts = windows.windows(np.arange(n))[:, 0]
    assert len(set((windows.windows(np.arange(n))[:, :2] @ [1, 1 << 20]).tolist())) == n  # each window once
    assert not np.array_equal(starts, windows.windows(np.arange(n, 2 * n))[:, 0])  # epoch 2: another order


def test_ranks_get_disjoint_slices():
    a, b = single_source(TOKENS, 16, 4, 0, 2, seed=5), single_source(TOKENS, 16, 4, 1, 2, seed=5)
    for x_a, x_b in zip(_stream(a, 50), _stream(b, 50)):
        assert not {tuple(r.tolist()) for r in x_a[0]} & {tuple(r.tolist()) for r in x_b[0]}


@pytest.mark.parametrize("world", [1, 2])
def test_resume_at_any_step_sees_the_same_batches(world):
    for rank in range(world):
        uninterrupted = _stream(single_source(TOKENS, 32, 3, rank, world, seed=9), 60)
        resumed = _stream(single_source(TOKENS, 32, 3, rank, world, seed=9), 23, start=37)
        for (x1, y1), (x2, y2) in zip(uninterrupted[37:], resumed):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_another_world_size_continues_the_same_global_samples():
    """The loader's state is a count of global samples: 2 ranks x 4 and 1 rank x 8 read the same windows."""
    two = [single_source(TOKENS, 16, 4, rank, 2, seed=2) for rank in range(2)]
    one = single_source(TOKENS, 16, 8, 0, 1, seed=2)
    for first in (0, 8, 4000):  # 4000: past the first epoch
        assert torch.equal(torch.cat([r.at(first)[0] for r in two]), one.at(first)[0])


def _sources():
    # Source i's ids are all i * 1000 + something: a window's first id names its source.
    return [
        TokenWindows(np.full(n, i * 1000, dtype=np.uint16) + np.arange(n, dtype=np.uint16) % 500, 16, seed=4, source=i, name=name)
        for i, (name, n) in enumerate([("web", 5000), ("code", 700), ("books", 3000)])
    ]


def test_mixture_proportions_hold_over_many_steps_and_resume():
    mixture = DataMixture(_sources(), [0.6, 0.3, 0.1], seed=4)
    loader = MicroBatches(mixture, 8, 0, 1)
    drawn = np.concatenate([loader.at(k * 8)[0][:, 0].numpy() // 1000 for k in range(3000)])  # 24,000 samples
    assert np.bincount(drawn).tolist() == mixture.drawn(24_000).tolist()
    assert mixture.drawn(2 * MIX_BLOCK).tolist() == [12_000, 6_000, 2_000]  # exact over whole blocks
    assert np.allclose(np.bincount(drawn) / len(drawn), [0.6, 0.3, 0.1], atol=0.01)  # 4,000 of a block: close
    realized = mixture.realized(24_000)
    assert realized["code"].epochs > realized["web"].epochs  # a small source is repeated to keep its share
    assert realized["code"].tokens == realized["code"].samples * 16
    resumed = MicroBatches(DataMixture(_sources(), [0.6, 0.3, 0.1], seed=4), 8, 0, 1)
    assert torch.equal(resumed.at(17_000)[0], loader.at(17_000)[0])  # stateless: resume is exact


def test_every_window_of_a_source_is_used_before_any_repeats():
    mixture = DataMixture(_sources(), [0.5, 0.25, 0.25], seed=1)
    source, index = mixture.assign(np.arange(30_000))
    for s, _windows in enumerate(mixture.sources):
        mine = np.sort(index[source == s])
        assert np.array_equal(mine, np.arange(len(mine)))  # each source's samples in order, none skipped


def test_mixture_weights_are_checked():
    with pytest.raises(ValueError, match="books is below 1/10000"):
        DataMixture(_sources(), [1.0, 1.0, 1e-6])


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        single_source(np.arange(100, dtype=np.uint16), 64, 4)


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
        assert tgt[len(tgt) - scored :].tolist() == continuation  # what is scored
    assert sum(s for _, _, s in ours) == length  # every token once


def test_the_validation_slice_is_whole_documents_from_the_start_read_a_chunk_at_a_time(monkeypatch):
    from llm_pipeline.train import validation

    monkeypatch.setattr(validation, "_CHUNK", 3)  # document ends found across chunk borders
    split = [np.array([5, 6, 0, 7, 0, 8, 9, 9, 0], dtype=np.uint16), np.array([4, 4, 0], dtype=np.uint16)]
    docs = lambda limit: [d.tolist() for d in validation.first_documents(split, 0, limit)]  # noqa: E731
    assert docs(3) == [[5, 6], [7]]
    assert docs(100) == [[5, 6], [7], [8, 9, 9], [4, 4]]  # across the shard sets, in order
    assert docs(1) == [[5, 6]]  # at least one, whole
