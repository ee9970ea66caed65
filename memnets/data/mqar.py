"""Multi-query associative recall (MQAR), generated on the fly (zoology-style).

An example of length ``T`` starts with ``n`` key-value pairs ``k1 v1 k2 v2 ...`` (keys distinct, from
``[1, vocab/2)``; values distinct, from ``[vocab/2, vocab)``). The rest is split into two-token slots;
each key is queried once, in a slot drawn without replacement from a power law ``p(i) ∝ a·i^(a-1)``
(small ``a`` puts most queries close to the context), and the slot's second token is the answer. The
model sees the whole sequence and is scored only where it must predict an answer from its query.
Unused slots hold random tokens other than the example's keys (``random_non_queries``) or 0.

Training batches are a deterministic function of ``(seed, step)``, drawn from seeds in ``[0, 2^31)``;
the test set uses seeds in ``[2^31, 2^32)``, so train and test never share a generator stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100
TEST_SEED_OFFSET = 2**31


@dataclass
class MQARBatch:
    input_ids: Tensor  # [B, T]
    labels: Tensor  # [B, T]; IGNORE except at query positions, where it is the value
    num_kv_pairs: Tensor  # [B]


def _distinct(gen: torch.Generator, rows: int, low: int, high: int, n: int) -> Tensor:
    """``rows`` draws of ``n`` distinct integers from ``[low, high)``."""
    return torch.rand(rows, high - low, generator=gen).argsort(dim=1)[:, :n] + low


def generate_mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> MQARBatch:
    if seq_len % 2 or 4 * num_kv_pairs > seq_len:
        raise ValueError(f"MQAR needs an even seq_len >= 4 * num_kv_pairs, got {seq_len=} {num_kv_pairs=}")
    if num_kv_pairs >= vocab_size // 2:
        raise ValueError(f"MQAR needs num_kv_pairs < vocab_size / 2, got {num_kv_pairs=} {vocab_size=}")
    gen = torch.Generator().manual_seed(seed)
    B, n, half = num_examples, num_kv_pairs, vocab_size // 2
    keys = _distinct(gen, B, 1, half, n)
    values = _distinct(gen, B, half, vocab_size, n)

    context = 2 * n
    slots = (seq_len - context) // 2
    i = torch.arange(1, slots + 1, dtype=torch.float64)
    logp = torch.log(power_a * i ** (power_a - 1))
    gumbel = -torch.log(-torch.log(torch.rand(B, slots, generator=gen, dtype=torch.float64)))
    slot_of_query = (logp + gumbel).topk(n, dim=1).indices  # power-law draw without replacement

    if random_non_queries:
        ids = torch.randint(1, vocab_size, (B, seq_len), generator=gen)
        # a filler equal to one of this example's keys would pose a second, wrong answer to recall
        ids[(ids[:, :, None] == keys[:, None, :]).any(-1)] = 0
    else:
        ids = torch.zeros(B, seq_len, dtype=torch.long)
    ids[:, 0:context:2] = keys
    ids[:, 1:context:2] = values
    qpos = context + 2 * slot_of_query
    ids.scatter_(1, qpos, keys)
    ids.scatter_(1, qpos + 1, values)
    labels = torch.full_like(ids, IGNORE)
    labels.scatter_(1, qpos, values)
    return MQARBatch(ids, labels, torch.full((B,), n))


def accuracy_by_pairs(preds: Tensor, labels: Tensor, num_kv_pairs: Tensor) -> dict[str, float]:
    """Accuracy over labelled positions, overall (``accuracy``) and per number of pairs
    (``accuracy_kv{n}``)."""
    mask = labels != IGNORE
    correct = (preds == labels) & mask
    out = {"accuracy": correct.sum().item() / max(mask.sum().item(), 1)}
    for n in num_kv_pairs.unique().tolist():
        rows = num_kv_pairs == n
        out[f"accuracy_kv{n}"] = correct[rows].sum().item() / max(mask[rows].sum().item(), 1)
    return out


class MQARTask:
    """Training stream and fixed test set for one MQAR setting (see :class:`memnets.config.MQARConfig`).
    Batch ``step`` uses ``num_kv_pairs[step % len]`` pairs; the test set holds ``num_test`` examples
    per number of pairs."""

    def __init__(self, cfg, seq_len: int, seed: int) -> None:
        self.cfg, self.seq_len, self.seed = cfg, seq_len, seed
        self.vocab_size = cfg.vocab_size

    def _make(self, rows: int, n: int, seed: int) -> MQARBatch:
        c = self.cfg
        return generate_mqar(rows, self.seq_len, n, c.vocab_size, seed, c.power_a, c.random_non_queries)

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        pairs = self.cfg.num_kv_pairs
        seed = (self.seed * 1_000_003 + step) % TEST_SEED_OFFSET
        b = self._make(batch_size, pairs[step % len(pairs)], seed)
        return b.input_ids, b.labels

    def test_set(self) -> MQARBatch:
        parts = [
            self._make(self.cfg.num_test, n, TEST_SEED_OFFSET + (self.seed * 7919 + n) % TEST_SEED_OFFSET)
            for n in self.cfg.num_kv_pairs
        ]
        return MQARBatch(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("input_ids", "labels", "num_kv_pairs"))
        )
