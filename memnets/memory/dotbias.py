"""Dot-product attentional bias ℓ(M(k); v) = −⟨M(k), v⟩ (ATLAS arXiv 2505.23735 §4, Eq. 19–20, 25).

With it the memory rule is "deep (gated) linear attention": a linear memory without forgetting
accumulates W_t = W_{t−1} + lr_t kᵀ_t v_t, i.e. unnormalised linear attention, and with the
exponential-kernel features φ* on keys and queries, unnormalised softmax attention
(DeepTransformers, Eq. 26). Windowed (Omega) it is SWLA / SWDT (Eq. 20).
"""

from __future__ import annotations

from torch import Tensor


class DotBias:
    """ℓ = −⟨pred, target⟩ per token; d ℓ / d pred = −target."""

    def loss(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        return -(pred * target).sum(-1)

    def grad(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        return -target

    def __repr__(self) -> str:
        return "DotBias()"
