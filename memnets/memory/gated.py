"""Gated-MLP memory of Atlas++ (ATLAS, arXiv 2505.23735 §5.1, Eq. 43):

    M(x) = x + [LN]( (σ(x W_2) ⊙ (x W_3)) W_1 )          row form, per head, weights (W_2, W_3, W_1)

W_2, W_3: ``[d_in, hidden]`` (both read the input x, or its features φ(x)), W_1: ``[hidden, dim]``.
The rank-one gradient factors of the three matrices (:func:`gated_key_path`) are
u(W_2) = xᵀ δ_2, u(W_3) = xᵀ δ_3, u(W_1) = aᵀ δ_1 with a = σ(z_2) ⊙ z_3, so the engine's
:func:`~memnets.memory.segment_end_state` applies unchanged; reads go through
:meth:`GatedMemoryMLP.forward_layers`, which takes the per-matrix linear map to use (fixed weights,
the dual form, or per-token weights). This memory is driven by :mod:`memnets.memory.omega`; the
engine's chain-MLP functions (``memory_chunked``, ``key_path``, ``dual_read``) do not apply to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .architecture import Activation
from .bias import AttentionalBias
from .engine import KeyPath
from .features import FeatureMemoryMLP

Linear = Callable[[int, Tensor], Tensor]  # (matrix index, input rows) -> rows times that matrix


class GatedMemoryMLP(FeatureMemoryMLP):
    """Atlas++ memory with learnable initial weights (W_2, W_3, W_1) per head; ``in_dim`` as in
    :class:`~memnets.memory.features.FeatureMemoryMLP` (features of width ``in_dim``, output ``dim``)."""

    def __init__(
        self,
        num_heads: int,
        dim: int,
        in_dim: int,
        expansion: float = 4.0,
        activation: Activation = "gelu",
        residual: bool = True,
        layer_norm: bool = True,
        init_std: float = 1.0,
        norm_scale: float = 1.0,
    ) -> None:
        super().__init__(
            num_heads, dim, in_dim, 2, expansion, activation, residual, layer_norm, init_std, norm_scale=norm_scale
        )  # fmt: skip
        hidden = self.shapes[0][1]
        w3 = nn.Parameter(torch.randn(num_heads, in_dim, hidden) * (init_std / math.sqrt(in_dim)))
        w2, w1 = self.init_weights
        self.init_weights = nn.ParameterList([w2, w3, w1])
        self.shapes = [(in_dim, hidden), (in_dim, hidden), (hidden, dim)]

    def forward_layers(self, x: Tensor, linear: Linear) -> Tensor:
        a = self.act(linear(0, x)) * linear(1, x)
        return self.output(linear(2, a), x)

    def read(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return self.forward_layers(x, lambda i, h: h @ weights[i])


def gated_key_path(
    arch: GatedMemoryMLP, weights: tuple[Tensor, ...], k: Tensor, v: Tensor, bias: AttentionalBias
) -> KeyPath:
    """Keys through the gated memory at ``weights`` and the bias derivative backpropagated by hand."""
    w2, w3, w1 = weights
    z2, z3 = k @ w2, k @ w3
    s = arch.act(z2)
    a = s * z3
    z1 = a @ w1
    d1 = arch.output_grad(z1, bias.grad(arch.output(z1, k), v, None))
    da = d1 @ w1.transpose(-1, -2)
    return KeyPath(xs=[k, k, a], deltas=[arch.act_backward(z2, da * z3), da * s, d1])
