"""Which training window each sample of each step reads: every window at most once per epoch, whatever
the number of processes.

The token streams (one per shard) are cut into non-overlapping windows of ``seq_len + 1`` tokens
(window ``k`` of a shard starts at token ``k * seq_len``; the last token of a window is the first of the
next, as a target). With ``W`` windows in all, the ``g``-th sample of the run (``g = step * batch_size +
row``, counted over the global batch) is window ``perm_e(g mod W)`` of epoch ``e = g // W``, where
``perm_e`` is a pseudo-random permutation of ``[0, W)`` keyed by ``(seed, e)``: a keyed Feistel network
over the next power of four with cycle walking (Black & Rogaway, "Ciphers with Arbitrary Finite
Domains", CT-RSA 2002, section 3), so no table of ``W`` entries is ever built.

The global batch of a step depends only on ``(seed, step, batch_size)``; each process takes its rows of
it. A run resumed on another number of processes therefore reads the same windows at the same steps,
and no window twice in an epoch. Changing ``train.batch_size`` on resume moves the sample count and
breaks that promise.
"""

from __future__ import annotations

import numpy as np

_MUL1 = np.uint64(0x9E3779B97F4A7C15)
_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
ROUNDS = 4


def _round(x: np.ndarray, key: np.uint64, mask: np.uint64) -> np.ndarray:
    # splitmix64-style mixing of one half with the round key
    x = (x ^ key) * _MUL1
    x ^= x >> np.uint64(31)
    x *= _MUL2
    x ^= x >> np.uint64(29)
    return x & mask


def permute(idx: np.ndarray, n: int, seed: tuple[int, ...]) -> np.ndarray:
    """``perm(idx)`` for a bijection ``perm`` of ``[0, n)`` determined by ``seed``."""
    if n <= 1:
        return np.zeros_like(idx, dtype=np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.SeedSequence(list(seed)).generate_state(ROUNDS, np.uint64)
    x = np.asarray(idx, dtype=np.uint64).copy()
    todo = np.ones(x.shape, dtype=bool)
    while todo.any():  # cycle walking: re-encrypt the values that land outside [0, n)
        y = x[todo]
        left, right = y >> np.uint64(half), y & mask
        for k in keys:
            left, right = right, left ^ _round(right, k, mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


class WindowSampler:
    """Maps sample numbers to ``(shard, start)`` per the module docstring."""

    def __init__(self, lengths: list[int], seq_len: int, seed: int) -> None:
        counts = np.array([max(0, (n - 1) // seq_len) for n in lengths], dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(counts)])
        self.total = int(self.first[-1])
        self.seq_len, self.seed = seq_len, seed

    def locate(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        samples = np.asarray(samples, dtype=np.int64)
        epochs, pos = samples // self.total, samples % self.total
        windows = np.empty_like(pos)
        for e in np.unique(epochs):  # a batch may straddle two epochs
            sel = epochs == e
            windows[sel] = permute(pos[sel], self.total, (self.seed, int(e)))
        shard = np.searchsorted(self.first, windows, side="right") - 1
        return shard, (windows - self.first[shard]) * self.seq_len
