"""Attentional bias: the memory's inner loss ℓ(M(k); v) (Miras §3 Definition 3.1; Titans Eq. 12).

An attentional bias gives the per-token loss (used by the token-by-token reference, which
differentiates it with autograd) and its derivative with respect to the memory output (used by the
chunked engine, which never calls autograd). Because the per-token weight gradient of any such loss is
the memory's backward of that output derivative, a new bias (l_p, Huber, ...) only has to supply these
two functions: the engine, its dual form and the reference work unchanged.

``params`` is an optional per-token tensor ``[B, H, L, ...]`` (e.g. a data-dependent Huber threshold),
sliced along time by the engine together with the keys and values; ``None`` when unused.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class AttentionalBias(Protocol):
    def loss(self, pred: Tensor, target: Tensor, params: Tensor | None) -> Tensor:
        """Per-token loss ``[B, H, L]`` from ``pred``, ``target`` ``[B, H, L, d]``."""
        ...

    def grad(self, pred: Tensor, target: Tensor, params: Tensor | None) -> Tensor:
        """d loss / d pred, shape of ``pred``."""
        ...


class L2Bias:
    """ℓ(M(k); v) = ‖M(k) − v‖²₂ exactly as Titans Eq. 12 (no ½: the gradient is 2(M(k) − v); the factor
    is absorbed by the learned step size). With a linear memory, no momentum and no decay this is the
    delta rule with β_t = 2·lr_t."""

    def loss(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        return (pred - target).pow(2).sum(-1)

    def grad(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        return 2.0 * (pred - target)

    def __repr__(self) -> str:
        return "L2Bias()"
