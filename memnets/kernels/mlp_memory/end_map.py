"""Moneta's ℓ_q map (Miras arXiv 2504.13173 Eq. 24, :class:`memnets.memory.miras.LqNormalize`) inside the
whole-state kernels, in its two forms:

* ``TOKEN_MAP`` (the default, ``normalize_at="token"``): every token reads s(A_t)·A_t of its own
  accumulator A_t (the dual form's weights, which this kernel otherwise never forms: each tile forms
  every token's A_t once, L products per layer, for its norm: :func:`token_power_sums`), and the key path
  takes its gradients at the chunk start's s(A)·A. A scale per row of the dual form: each layer's β,
  f and G rows times s_t. The forward keeps every token's power sums P_t (``[B, H, NT, L]`` per layer,
  the custom op's outputs: the scales are s(P_t), and ∂s/∂A_t needs P_t itself, zero where it is clamped
  at the floor), so the backward reads them and forms every A_t once more only to take the scales'
  cotangents through it.
* ``END_MAP`` (``normalize_at="chunk_end"``, §5.3's parallel form, "Parallelizable Training": the
  normalisation is applied at the end of each chunk; :class:`~memnets.memory.miras.ChunkEnd`): the
  weights are the plain accumulation inside a chunk and are mapped after every complete chunk. The
  wide-state kernels run this form too (:func:`~.wide_maps.end_map_state`,
  :func:`~.wide_maps.end_map_cotangent`: a pass over the state's blocks for P, or for ⟨C, W⟩, before
  the pass that rewrites them).

Each weight matrix W (per head) maps to s(W)·W with

    P = Σ |W|^q,   s = max(P, c)^(−e),   "paper" (Eq. 24): e = (q − 2)/q, c = max(floor^q, 1e-30)
                                          "unit":          e = 1/q,       c = 1e-30

(``clamp`` = c, computed on the host). Its backward from the cotangent C of s·W:
dW = s C − [P > c] (e q s / P) ⟨C, W⟩ · W |W|^(q−2).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..dual_form import inner
from .token_state import token_accumulators


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
def lq_power(W, q):
    """P = Σ |W|^q of a tile (zero padding adds nothing)."""
    return tl.sum(tl.sum(_abs_pow(W * W, 0.5 * q), 1), 0)


@triton.jit
def lq_scale_of(power, q, clamp, MAP: tl.constexpr):
    """s = max(P, c)^(−e) from a matrix's power sum P."""
    return tl.exp(-_exponent(q, MAP) * tl.log(tl.maximum(power, clamp)))


@triton.jit
def lq_grad_coef(power, ds, q, clamp, MAP: tl.constexpr):
    """The scalar of ds · ∂s/∂W = coef · W |W|^(q−2) (:func:`lq_grad_dir`): −[P > c] ds e q s / P."""
    s = lq_scale_of(power, q, clamp, MAP)
    # the same P where the branch is taken; the floor keeps the other branch finite (a tail token's P = 0)
    return -tl.where(power > clamp, ds * _exponent(q, MAP) * q * s / tl.maximum(power, clamp), 0.0)


@triton.jit
def lq_grad_dir(W, q):
    """W |W|^(q−2), the direction of ∂s/∂W."""
    return W * _abs_pow(W * W, 0.5 * q - 1.0)


@triton.jit
def lq_scale(W, q, clamp, MAP: tl.constexpr):
    """s(W) of a ``[R, C]`` tile."""
    return lq_scale_of(lq_power(W, q), q, clamp, MAP)


@triton.jit
def lq_map_backward(W, C, q, clamp, MAP: tl.constexpr):
    """The cotangent of W from the cotangent C of s(W)·W: s C plus ⟨C, W⟩ ∂s/∂W (one power sum for both)."""
    power = lq_power(W, q)
    coef = lq_grad_coef(power, inner(C, W), q, clamp, MAP)
    return lq_scale_of(power, q, clamp, MAP) * C + coef * lq_grad_dir(W, q)


@triton.jit
def token_power_sums(li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, q, L: tl.constexpr,
                     BL: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr):  # fmt: skip
    """The power sums P1_t = Σ |A1_t|^q, P2_t = Σ |A2_t|^q ``[BL]`` of every token t's accumulators in a
    tile (Moneta's per-token map, Miras Eq. 24: its reads' scales s(P_t), and the backward's
    ∂s/∂A_t, which needs P_t itself: zero where P_t is clamped at the floor)."""
    p1 = tl.zeros([BL], dtype=tl.float32)
    p2 = tl.zeros([BL], dtype=tl.float32)
    for t in range(L):
        A1, A2, _b, _f, _g = token_accumulators(
            t, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT, HAS_MOM
        )
        p1 = tl.where(li == t, lq_power(A1, q), p1)
        p2 = tl.where(li == t, lq_power(A2, q), p2)
    return p1, p2
