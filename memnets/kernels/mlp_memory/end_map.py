"""Moneta's ℓ_q map of the weights at every complete chunk's end, inside the whole-state kernels: the
parallel form of Miras arXiv 2504.13173 §5.3 ("Parallelizable Training": the normalisation is applied
at the end of each chunk; :class:`memnets.memory.miras.ChunkEnd` of
:class:`~memnets.memory.miras.LqNormalize`). Each weight matrix W (per head) becomes s(W)·W with

    P = Σ |W|^q,   s = max(P, c)^(−e),   "paper" (Eq. 24): e = (q − 2)/q, c = max(floor^q, 1e-30)
                                          "unit":          e = 1/q,       c = 1e-30

(``clamp`` = c, computed on the host). Its backward from the cotangent C of s·W:
dW = s C − [P > c] (e q s / P) ⟨C, W⟩ · W |W|^(q−2).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ends_chunk(g, Tn, L: tl.constexpr, KE: tl.constexpr):
    """Whether tile g (of L tokens, KE per chunk) ends a complete chunk of a sequence of Tn tokens."""
    return ((g + 1) % KE == 0) & ((g + 1) * L <= Tn)


@triton.jit
def _abs_pow(x2, e):
    """(x²)^e, 0 where x = 0."""
    pos = x2 > 0
    return tl.where(pos, tl.exp(e * tl.log(tl.where(pos, x2, 1.0))), 0.0)


@triton.jit
def _exponent(q, MAP: tl.constexpr):
    return (q - 2.0) / q if MAP == 1 else 1.0 / q


@triton.jit
def lq_scale(W, q, clamp, MAP: tl.constexpr):
    """s(W) of a ``[R, C]`` tile (zero padding adds nothing)."""
    power = tl.sum(tl.sum(_abs_pow(W * W, 0.5 * q), 1), 0)
    return tl.exp(-_exponent(q, MAP) * tl.log(tl.maximum(power, clamp)))


@triton.jit
def lq_map_backward(W, C, q, clamp, MAP: tl.constexpr):
    """The cotangent of W from the cotangent C of s(W)·W."""
    W2 = W * W
    power = tl.sum(tl.sum(_abs_pow(W2, 0.5 * q), 1), 0)
    e = _exponent(q, MAP)
    s = tl.exp(-e * tl.log(tl.maximum(power, clamp)))
    coef = tl.where(power > clamp, e * q * s / power, 0.0) * tl.sum(tl.sum(C * W, 1), 0)
    return s * C - coef * W * _abs_pow(W2, 0.5 * q - 1.0)
