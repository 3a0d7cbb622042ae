"""Packed, shuffled token windows for training: stateless, so resume is exact.

The train split is one token stream (documents separated by EOS). It is cut into
non-overlapping windows of `seq_len + 1` tokens. Epoch e visits them in the order of a
permutation seeded by (seed, e); micro-step k of rank r takes the r-th slice of the k-th
global micro-batch. The whole loader state is k, saved in every checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


class TokenWindows:
    def __init__(self, tokens: np.ndarray, seq_len: int, micro_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        # Kept in the shards' own dtype (uint16 for most vocabularies): a quarter of int64's memory.
        # Only each gathered batch is widened.
        self.tokens = tokens
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_windows = (len(tokens) - 1) // seq_len
        per_step = micro_batch * world_size
        if self.num_windows < per_step:
            raise ValueError(
                f"the train split has {len(tokens)} tokens: {self.num_windows} windows of seq_len {seq_len}, "
                f"fewer than one micro-batch across ranks ({micro_batch} x {world_size}); use more data or smaller batches"
            )
        self.batches_per_epoch = self.num_windows // per_step
        self._offsets = np.arange(seq_len + 1)
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(self.num_windows)
        return self._perm

    def batch(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(micro_step, self.batches_per_epoch)
        start = (index * self.world_size + self.rank) * self.micro_batch
        windows = self._permutation(epoch)[start : start + self.micro_batch]
        chunk = torch.from_numpy(self.tokens[(windows * self.seq_len)[:, None] + self._offsets].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]


def eval_windows(tokens: np.ndarray, seq_len: int, max_tokens: int | None = None):
    """Non-overlapping (input, target) windows covering the split in order, for evaluation."""
    n = len(tokens) - 1
    if max_tokens:
        n = min(n, max_tokens)
    t = torch.from_numpy(tokens.astype(np.int64))
    for start in range(0, n, seq_len):
        end = min(start + seq_len, n)
        yield t[start:end][None], t[start + 1 : end + 1][None]
