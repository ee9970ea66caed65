"""Polynomial feature maps of keys and queries, and a memory MLP that reads them (ATLAS arXiv 2505.23735
§3.1, §4.2).

A degree-p map φ raises the capacity of a matrix memory from O(d) to O(d^p) pairs (ATLAS Prop. 2):
the memory is written with φ(k_t) and read with φ(q_t). Features, per head, for ``x [..., d]``::

    φ(x) = [ x, c_0, c_2 · sym_2(x), …, c_p · sym_p(x) ]            (c_i = √a_i)
    sym_i(x)_β = √(i! / Π_j β_j!) · Π_j x_j^{β_j}     over multisets β of size i (unique monomials)

The multinomial weights make ``sym_i(q) · sym_i(k) = (qᵀk)^i`` exactly while storing only the
C(d + i − 1, i) unique monomials instead of the d^i entries of x^{⊗i}, so

    φ(q) · φ(k) = a_0 + qᵀk + a_2 (qᵀk)² + … + a_p (qᵀk)^p       (ATLAS Eq. 4–5)

``kernel="exp"`` is the exponential-kernel approximation: the constant term is included and the
a_i start at the Taylor coefficients 1/i! (ATLAS Eq. 22–23, φ*(x) = (1, x, x^{⊗2}/√2!, …)).
``kernel="poly"``: no constant, a_i start at 1. In both the a_i (i ≠ 1) are learnable outer
parameters ("input feature gating": a_i → 0 drops degree i). Choices where the paper is silent:

* a_1 is fixed at 1 and x comes first, unscaled: the overall scale is absorbed by the memory's
  weights anyway, degree 1 is then exactly the identity (Titans/OmegaNet without features), and the
  memory's residual connection can add the raw x (see :class:`FeatureMemoryMLP`).
* Explicit features, no sketch (the paper reports neither the degree nor a sketch); the feature width
  grows as C(d + p, p), so keep ``degree * head_dim`` small (d = 32, p = 2: 560 features; d = 64,
  p = 2: 2,144).
* Inputs are l2-normalised before φ (as ATLAS normalises q and k), so every degree block has norm
  c_i and ‖φ(x)‖² = Σ a_i: the "normalisation" is the 1/i! weighting of the blocks.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import Tensor, nn

from .architecture import Activation, MemoryMLP

FeatureKernel = Literal["poly", "exp"]
FEATURE_KERNELS: tuple[str, ...] = ("poly", "exp")


def feature_dim(dim: int, degree: int, kernel: FeatureKernel = "poly") -> int:
    """Width of φ(x) for ``x`` of width ``dim``."""
    return (kernel == "exp") + sum(math.comb(dim + i - 1, i) for i in range(1, degree + 1))


class PolynomialFeatures(nn.Module):
    """φ(x) for ``x [..., dim]`` (module docstring). ``degree = 1`` is the identity."""

    def __init__(self, dim: int, degree: int = 2, kernel: FeatureKernel = "poly") -> None:
        super().__init__()
        if degree < 1:
            raise ValueError(f"PolynomialFeatures: degree must be >= 1, got {degree}")
        if kernel not in FEATURE_KERNELS:
            raise ValueError(f"PolynomialFeatures: kernel={kernel!r} is not one of {list(FEATURE_KERNELS)}")
        self.dim, self.degree, self.kernel = dim, degree, kernel
        self.out_dim = feature_dim(dim, degree, kernel)
        # learnable √a_i for the constant (exp only) and degrees 2..p; a_1 = 1 is fixed
        degrees = ([0] if kernel == "exp" else []) + list(range(2, degree + 1))
        self.degrees = degrees
        init = [math.sqrt(1.0 / math.factorial(i)) if kernel == "exp" else 1.0 for i in degrees]
        self.coef = nn.Parameter(torch.tensor(init, dtype=torch.get_default_dtype())) if degrees else None
        for i in range(2, degree + 1):
            combos = list(itertools.combinations_with_replacement(range(dim), i))
            index = torch.tensor(combos, dtype=torch.long)  # [M_i, i]
            counts = [math.prod(math.factorial(c.count(j)) for j in set(c)) for c in combos]
            weight = torch.tensor([math.sqrt(math.factorial(i) / n) for n in counts], dtype=torch.float64)
            self.register_buffer(f"index{i}", index, persistent=False)
            self.register_buffer(f"weight{i}", weight, persistent=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, degree={self.degree}, kernel={self.kernel}, out_dim={self.out_dim}"

    def coefficients(self) -> dict[int, Tensor]:
        """{degree i: a_i} for the learnable degrees (for inspection and tests)."""
        if self.coef is None:
            return {}
        return {i: c * c for i, c in zip(self.degrees, self.coef)}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"PolynomialFeatures: expected last dim {self.dim}, got {tuple(x.shape)}")
        parts = [x]
        if self.coef is None:
            return x
        coef = self.coef.to(x.dtype)
        pos = 0
        if self.kernel == "exp":
            parts.append(coef[0].expand(*x.shape[:-1], 1))
            pos = 1
        for i in range(2, self.degree + 1):
            index, weight = getattr(self, f"index{i}"), getattr(self, f"weight{i}")
            mono = x[..., index].prod(-1)  # [..., M_i]: Π over the multiset's entries
            parts.append(coef[pos] * weight.to(x.dtype) * mono)
            pos += 1
        return torch.cat(parts, -1)


class FeatureMemoryMLP(MemoryMLP):
    """:class:`~memnets.memory.MemoryMLP` whose first layer reads ``in_dim`` features (φ(x)) and whose
    output has width ``dim`` (the values' width). The residual adds the raw input, which
    :class:`PolynomialFeatures` places first: ``M(φ(x)) = x + [LN](…)`` (ATLAS Eq. 42 with φ).

    Everything else (depth, activation, LayerNorm, learnable initial weights, hand-written
    derivatives) is the engine's; the engine's chunk functions work with it unchanged."""

    def __init__(
        self,
        num_heads: int,
        dim: int,
        in_dim: int,
        depth: int = 2,
        expansion: float = 4.0,
        activation: Activation = "gelu",
        residual: bool = True,
        layer_norm: bool = True,
        init_std: float = 1.0,
        norm_scale: float = 1.0,
    ) -> None:
        arch = (depth, expansion, activation, residual, layer_norm, init_std)
        super().__init__(num_heads, dim, *arch, norm_scale=norm_scale)
        if in_dim < dim:
            raise ValueError(f"FeatureMemoryMLP: in_dim={in_dim} must be >= dim={dim} (φ(x) starts with x)")
        self.in_dim = in_dim
        d_out = self.shapes[0][1]
        self.shapes[0] = (in_dim, d_out)
        self.init_weights[0] = nn.Parameter(
            torch.randn(num_heads, in_dim, d_out) * (init_std / math.sqrt(in_dim))
        )

    def output(self, z: Tensor, x: Tensor) -> Tensor:
        return super().output(z, x[..., : self.dim])
