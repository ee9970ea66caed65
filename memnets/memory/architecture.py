"""Memory architecture: the small network M(x; W) whose weights W are the recurrent state.

Row form, per (batch element, head), for depth L >= 1 (Titans §3.1 "MLPs with L_M >= 1
layers", Miras §5.3, TTT §2.7)::

    Z^1 = x W^1,  Z^l = sigma(Z^{l-1}) W^l  (l = 2..L),   M(x) = [x +] [LN](Z^L)

``W^l`` has shape ``[d_in, d_out]``: ``dim -> hidden -> ... -> hidden -> dim`` with
``hidden = round(expansion * dim)``; depth 1 is the linear (matrix) memory. The fast weights carry no
bias (lucidrains and the Titans paper write none). The optional LayerNorm's scale and shift are *outer*
parameters, one per head (as in TTT: they are trained by the outer loop, not by the inner one). The
residual makes the inner target effectively ``v - k`` (TTT).

``MemoryMLP`` also owns the learnable initial weights ``W_0`` (one per head, broadcast over the batch;
TTT: a learned ``W_0`` is needed for stable training) and the hand-written derivatives the chunked
engine needs (activation derivative, LayerNorm backward), so nothing there calls autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = Literal["gelu", "silu", "tanh"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "silu", "tanh")
Init = Literal["fan_in", "unit_input"]
INITS: tuple[str, ...] = ("fan_in", "unit_input")


def activation_rms(activation: Activation) -> float:
    """rms of ``act(z)`` for ``z ~ N(0, 1)`` (midpoint rule on [-8, 8], error far below 1e-6)."""
    z = torch.linspace(-8, 8, 16001, dtype=torch.float64, device="cpu")  # also under a meta device context
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    act = {"gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}[activation]
    return math.sqrt(float((act(z).pow(2) * density).sum() * (z[1] - z[0])))


@dataclass(frozen=True)
class MemorySpec:
    """The memory network of a memory mixer, one option ``memory`` (``memory: {depth: 1}`` in a
    config, ``model.mixer_options.titans.memory.depth=1`` on the command line): ``depth`` weight
    matrices (1 = linear matrix memory, Titans §3.1 "L_M >= 1"), hidden width ``expansion`` x head
    dim, ``activation`` between layers, ``residual`` (``M(x) = x + ...``), ``norm`` (LayerNorm on the
    output), ``init`` (the initial weights' scale), ``init_std`` (its multiplier), ``norm_scale`` (the
    LayerNorm scale's initial value). See :class:`MemoryMLP`."""

    depth: int = 2
    expansion: float = 4.0
    activation: Activation = "gelu"
    residual: bool = True
    norm: bool = True
    init: Init = "fan_in"
    init_std: float = 1.0
    norm_scale: float = 1.0

    def build(self, num_heads: int, dim: int) -> MemoryMLP:
        return MemoryMLP(
            num_heads,
            dim,
            self.depth,
            self.expansion,
            self.activation,
            self.residual,
            self.norm,
            init_std=self.init_std,
            init=self.init,
            norm_scale=self.norm_scale,
        )


class MemoryMLP(nn.Module):
    """Per-head memory network with learnable initial weights.

    Args:
        num_heads: independent memories per batch element.
        dim: input and output width (the head dimension of keys, queries and values).
        depth: number of weight matrices L (1 = linear matrix memory).
        expansion: hidden width = ``round(expansion * dim)`` (unused for depth 1).
        activation: nonlinearity between layers (smooth ones only: the outer backward differentiates
            the inner gradient, which needs the activation's second derivative).
        residual: ``M(x) = x + ...``.
        layer_norm: LayerNorm on the last layer's output, with per-head outer scale and shift.
        init_std: std of the initial weights, as a multiple of ``d_in ** -0.5``.
        init: ``fan_in`` (every layer std ``init_std / sqrt(d_in)``: unit-variance outputs for inputs of
            unit-variance coordinates) or ``unit_input`` (for the mixers' l2-normalised keys and queries,
            whose coordinates are ``d ** -0.5``: the first layer std ``init_std``, later layers
            ``init_std · gain / sqrt(d_in)`` with ``gain = 1 / rms(act(N(0, 1)))``, so every layer's
            pre-activations start at unit variance). Under ``fan_in`` the memory's output before its
            LayerNorm starts at about 0.1 for unit keys, the LayerNorm's Jacobian multiplies the inner
            loss's curvature by about 100, and the inner steps diverge along keys a text repeats
            (RESULTS.md section 17); the update equations are the same under either.
        norm_scale: initial value of the LayerNorm's outer scale γ (every channel). The memory's
            output γ ⊙ LN(z) then has norm ≈ ``norm_scale · sqrt(dim)`` at initialisation, against the
            unit-norm keys and the values' scale; see RESULTS.md section 24 for what 1 (LayerNorm's
            usual start) does to the inner loop's stability and the outer gradient at length.
    """

    def __init__(
        self,
        num_heads: int,
        dim: int,
        depth: int = 2,
        expansion: float = 4.0,
        activation: Activation = "gelu",
        residual: bool = True,
        layer_norm: bool = True,
        init_std: float = 1.0,
        eps: float = 1e-5,
        init: Init = "fan_in",
        norm_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"MemoryMLP: init={init!r} is not one of {list(INITS)}")
        if norm_scale <= 0:
            raise ValueError(f"MemoryMLP: norm_scale must be > 0, got {norm_scale}")
        if init_std <= 0:
            raise ValueError(f"MemoryMLP: init_std must be > 0, got {init_std}")
        if depth < 1:
            raise ValueError(f"MemoryMLP: depth must be >= 1, got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MemoryMLP: activation={activation!r} is not one of {list(ACTIVATIONS)}")
        if depth > 1 and expansion <= 0:
            raise ValueError(f"MemoryMLP: expansion must be > 0 for depth > 1, got {expansion}")
        self.num_heads, self.dim, self.depth = num_heads, dim, depth
        self.activation, self.residual, self.layer_norm, self.eps = activation, residual, layer_norm, eps
        hidden = max(1, round(expansion * dim)) if depth > 1 else dim
        widths = [dim] + [hidden] * (depth - 1) + [dim]
        self.shapes = [(widths[i], widths[i + 1]) for i in range(depth)]
        stds = [init_std / math.sqrt(din) for din, _ in self.shapes]
        if init == "unit_input":
            gain = 1 / activation_rms(activation)
            stds = [init_std] + [s * gain for s in stds[1:]]
        self.init_weights = nn.ParameterList(
            nn.Parameter(torch.randn(num_heads, din, dout) * std)
            for (din, dout), std in zip(self.shapes, stds)
        )
        if layer_norm:
            self.norm_weight = nn.Parameter(torch.full((num_heads, dim), float(norm_scale)))
            self.norm_bias = nn.Parameter(torch.zeros(num_heads, dim))

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, shapes={self.shapes}, activation={self.activation}, "
            f"residual={self.residual}, layer_norm={self.layer_norm}"
        )

    def numel_per_head(self) -> int:
        """Numbers in one head's fast weights (the state size, without momentum)."""
        return sum(din * dout for din, dout in self.shapes)

    # ---------------------------------------------------------------------------------------------
    # pieces shared by the token-by-token reference and the chunked engine

    def act(self, z: Tensor) -> Tensor:
        if self.activation == "gelu":
            return F.gelu(z)
        if self.activation == "silu":
            return F.silu(z)
        return torch.tanh(z)

    def act_backward(self, z: Tensor, grad: Tensor) -> Tensor:
        """``grad ⊙ act'(z)``, the inner backward through the activation. GELU and tanh use ATen's
        fused backward ops, whose own backward (the outer one) keeps only ``grad`` and ``z`` (tanh: its
        output), where the derivative written out elementwise keeps every erf/exp intermediate, four
        more ``z``-sized tensors per call, which dominated the chunked engine's saved activations. ATen's
        SiLU backward has no derivative, so SiLU's is written out."""
        if self.activation == "gelu":
            return torch.ops.aten.gelu_backward(grad, z)
        if self.activation == "tanh":
            return torch.ops.aten.tanh_backward(grad, torch.tanh(z))
        s = torch.sigmoid(z)
        return grad * (s * (1.0 + z * (1.0 - s)))

    def _affine(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # [H, d] -> [1, H, 1, d] to broadcast over [B, H, L, d]
        return (
            self.norm_weight.to(dtype)[None, :, None, :],
            self.norm_bias.to(dtype)[None, :, None, :],
        )

    def output(self, z: Tensor, x: Tensor) -> Tensor:
        """Memory output from the last layer's pre-output ``z`` and the memory input ``x``
        (both ``[B, H, L, dim]``)."""
        y = z
        if self.layer_norm:
            w, b = self._affine(z.dtype)
            y = self._normalize(z)[0] * w + b
        return x + y if self.residual else y

    def _normalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂, 1/σ) of a LayerNorm without affine; written out (F.layer_norm is slow on tiny CPU
        tensors, and the backward below needs the same pieces)."""
        zc = z - z.mean(-1, keepdim=True)  # once: autograd keeps it for both uses
        rstd = torch.rsqrt(zc.pow(2).mean(-1, keepdim=True) + self.eps)
        return zc * rstd, rstd

    def output_grad(self, z: Tensor, dy: Tensor) -> Tensor:
        """Backward of :meth:`output` w.r.t. ``z`` (the residual does not depend on ``z``)."""
        if not self.layer_norm:
            return dy
        w, _ = self._affine(z.dtype)
        xhat, rstd = self._normalize(z)
        g = dy * w
        return rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))

    def read(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """``M(x; W)`` with fixed weights ``W`` (``[B, H, d_in, d_out]`` per layer), ``x [B, H, L, dim]``;
        or with every token's own weights ``[B, H, L, d_in, d_out]`` (a retention map's W_t)."""
        per_token = weights[0].dim() == x.dim() + 1
        h = x[..., None, :] if per_token else x  # a row per token: [B, H, L, 1, d_in] @ W_t
        for i, w in enumerate(weights):
            h = h @ w
            if i < self.depth - 1:
                h = self.act(h)
        return self.output(h[..., 0, :] if per_token else h, x)

    def initial_weights(self, batch: int, dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
        """``W_0`` broadcast to ``[batch, H, d_in, d_out]`` (a view: gradients reach the parameters)."""
        return tuple(
            (w if dtype is None else w.to(dtype))[None].expand(batch, *w.shape) for w in self.init_weights
        )
