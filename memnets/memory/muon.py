"""Newton–Schulz orthogonalisation of the memory's momentum (Muon; ATLAS arXiv 2505.23735 §5, Eq. 32–33,
40, 57).

``newton_schulz(X)`` approximates the semi-orthogonal polar factor U Vᵀ of X = U Σ Vᵀ (all singular
values pushed towards 1) with ``steps`` iterations of the odd polynomial

    X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X

after scaling X to unit Frobenius norm (so every singular value starts in (0, 1]). The default
(a, b, c) = (3.4445, −4.7750, 2.0315) is the quintic of Muon, tuned to raise small singular values
fast: after 5 steps they lie roughly in [0.7, 1.2] rather than converging to exactly 1. (1.5, −0.5, 0)
is the classic cubic iteration, which converges to U Vᵀ exactly (quadratically) given enough steps.

The map is odd (NS(−X) = −NS(X)); it works on the smaller Gram side (X Xᵀ for wide X, the
transpose for tall X) and on any leading batch dimensions. The Frobenius norm is computed as
√(‖X‖² + eps²), which is smooth at X = 0 (NS(0) = 0 with a zero gradient, not NaN).

Cost for X of shape m×n (m ≤ n): per step 2 m²n + m³ + … ≈ 4 m²n multiply-adds; 5 steps on a 64×256
matrix ≈ 24 MFLOP, about 100× the rest of one token's memory update (our count: key path forward and
backward, state update and dual-form read ≈ 0.3–0.5 MFLOP per token and head at that size), which is why
:mod:`memnets.memory.omega` also offers a per-chunk schedule.
"""

from __future__ import annotations

import torch
from torch import Tensor

MUON_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    x: Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
) -> Tensor:
    """Orthogonalise the last two dimensions of ``x [..., m, n]``."""
    if x.dim() < 2:
        raise ValueError(f"newton_schulz: x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    if steps < 0:
        raise ValueError(f"newton_schulz: steps must be >= 0, got {steps}")
    a, b, c = coefficients
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-1, -2)
    x = x * torch.rsqrt(x.pow(2).sum((-1, -2), keepdim=True) + eps * eps)
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.transpose(-1, -2) if tall else x


def newton_schulz_in_basis(
    gram: Tensor,
    c: Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    eps: float = 1e-7,
) -> Tensor:
    """:func:`newton_schulz` of a tall X = U c given only its coordinates ``c [..., r, n]`` in a basis
    U ``[m, r]`` (m > r ≥ n) and the basis's Gram matrix ``gram = Uᵀ U [..., r, r]``: returns c' with
    NS(X) = U c'. Every step of the iteration multiplies X on the right by a polynomial of XᵀX =
    cᵀ (Uᵀ U) c, so X stays in U's column space and only r × n coordinates are iterated: per step
    r² n + 2 r n² + n³ multiply-adds instead of 2 m n² + n³. The same iterates as
    :func:`newton_schulz`; the rounding differs where X is much smaller than U c's pieces (then its
    squared norm, read through the Gram matrix, can round below zero: clamped)."""
    a, b, k = coefficients
    sq = (c * (gram @ c)).sum((-1, -2), keepdim=True).clamp_min(0.0)
    c = c * torch.rsqrt(sq + eps * eps)
    for _ in range(steps):
        g = c.transpose(-1, -2) @ (gram @ c)
        c = a * c + c @ (b * g + k * (g @ g))
    return c
