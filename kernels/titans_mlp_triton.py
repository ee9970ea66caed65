"""Triton kernels for the memory engine's chunked form with a DEEP memory: the two-layer MLP
``MemoryMLP(depth=2)`` (Titans' default memory, Miras' Moneta/Yaad memory), forward and backward.

Semantics are exactly those of :func:`memnets.memory.memory_chunked` for ``MemoryMLP(depth=2)``
(residual and LayerNorm on or off, activation gelu (erf form, as ``F.gelu``), silu or tanh), per-token
per-head ``lr`` (Titans θ_t, Miras η_t), optional ``mom`` (Titans η_t) and ``keep`` (Titans
1 − α_t, Miras α_t), and the attentional biases ``L2Bias`` (Titans Eq. 12), ``LpBias`` (Moneta, Miras
Eq. 10) and ``HuberBias`` (Yaad, Miras Eq. 16, both modes, data-dependent threshold δ_t as
``bias_params``). Per chunk of L tokens of one (sequence, head), with chunk-start weights
W1 ``[D, Dh]``, W2 ``[Dh, D]`` and momenta S1, S2 (row form; spec memory-models.md 1.4-1.5)::

    key path   Z1 = K W1,  A = σ(Z1),  Z2 = A W2,  R = M(K) − V = [K +] [LN](Z2) − V
               Δ = [LN backward of] ℓ'(R),  δ1 = (Δ W2ᵀ) ⊙ σ'(Z1)
               (u_j = k_jᵀ δ1_j and a_jᵀ Δ_j are token j's inner gradients of W1 and W2)
    query path Ẑ1 = β ⊙ (Q W1) + f ⊙ (Q S1) − ((Q Kᵀ) ⊙ G) δ1,   Â = σ(Ẑ1)
               Ẑ2 = β ⊙ (Â W2) + f ⊙ (Â S2) − ((Â Aᵀ) ⊙ G) Δ,   Y = [Q +] [LN](Ẑ2)
               (every token read with its own W_t)
    chunk end  W1' = β_L W1 + f_L S1 − Kᵀ (G[L, :]ᵀ ⊙ δ1),   S1' = m_end S1 − Kᵀ (s_coef ⊙ δ1)
               W2' = β_L W2 + f_L S2 − Aᵀ (G[L, :]ᵀ ⊙ Δ),    S2' = m_end S2 − Aᵀ (s_coef ⊙ Δ)

(index L = the chunk's last token). ℓ' is the bias derivative w.r.t. the memory output: 2R (L2),
p R (R² + ε)^{p/2−1} (ℓ_p), and for Huber 2R on the quadratic branch, else 2δ tanh(s R) ("norm") or
2δ Sign(R) ("coord"). The coefficients β, f, G, m_end, s_coef are those of
:func:`memnets.memory.chunk_coefficients` (spec 1.4, segment sums of log-gates, all in [0, 1]); they
are computed in PyTorch on the gates padded to whole chunks (lr = 0, keep = mom = 1: m_end and s_coef
are then those of the last real token; the kernels take β, f and G's row at the tail chunk's last
real token) and autograd takes their gradients back to lr, mom and keep. The kernels take and return
gradients w.r.t. the coefficients.

LN(z) = γ ⊙ (z − mean z)/sqrt(var z + eps) + b with the per-head *outer* scale γ and shift b of
``MemoryMLP(layer_norm=True)``; the kernels return their gradients too. The residual is formed in the
kernels on the key path (R = (K + LN(Z2)) − V in the engine's order: pre-subtracting V − K rounds
differently, which the ill-conditioned LayerNorm + Huber cases amplify) and outside on the reads.

Kernels (grid: one program per (batch, head), chunks sequential inside; all math in float32, half
inputs upcast on load; the chunk tile is padded to at least 16 rows, so any chunk size 1..64 works):

1. ``_forward_kernel``: carries (W1, W2, S1, S2), writes y, the final state and the last chunk's
   start weights (the engine's ``anchor`` when T is not a multiple of L). With ``STORE`` it instead
   writes every chunk's start state and skips the reads: the backward re-runs it to recompute those
   states instead of keeping activations from the forward.
2. ``_backward_kernel``: chunks in reverse, carrying the cotangents (dW1, dW2, dS1, dS2) of the chunk
   end state; recomputes the chunk's key and query paths from its stored start state and gives the
   gradients of q, k, v, the bias parameters, the LayerNorm's γ and b, every coefficient and the
   initial state. The second-order terms are included: Δ depends on W1, W2 through R (ℓ'' of the
   bias) and through the LayerNorm's Jacobian at Z2, δ1 on W2 and on Z1 (σ'' of the activation).

Both passes are ``torch.library`` custom ops (``memnets::titans_mlp_fwd`` / ``_bwd``) with fake
implementations; ``register_autograd`` ties them together.

Not covered (``supports`` names the reason; the mixers then fall back to the PyTorch engine): depth
other than 2, other biases (KL), retention maps and chunk-end maps (Moneta's ℓ_q normalisation,
Memora), float64 memories, D·Dh or chunk sizes beyond the shared-memory limits below.

Performance is untuned and untimed (written without a GPU; the interpreter ran it, and both kernels
were compiled ahead of time for sm_90 with ``scripts/check_kernels_compile.py``: num_warps=4,
num_stages=1, GELU, L2 bias, LayerNorm, residual, momentum). One program per (batch, head) keeps the
whole state on chip, so the footprint grows with D·Dh and the chunk tile. Shared memory of that
compile (forward / backward), and the backward's register spills per thread::

    D    Dh    L=16            L=32            L=64             L=128
    16   64    16 / 16 KB      24 / 32 KB      48 / 128 KB      96 / 304 KB
    32   128   48 / 32 KB      64 / 64 KB      112 / 272 KB
    64   256   160 / 128 KB
    backward spills: 2.6 KB (16, 64, 16) ... 11 KB (32, 128, 32) ... 21 KB (64, 256, 16)

An H100 has 228 KB of shared memory per SM, so ``MAX_STATE_FOR_TILE`` admits D·Dh <= 32·128 for
chunk tiles of 16 and 32 rows and D·Dh <= 16·64 for 64 rows (chunk sizes 33..64); 128-row tiles
never fit (``MAX_CHUNK`` = 64). Every shape spills registers (255 per thread), so expect it to be
slow. Larger states (D = 64, Dh = 256: Titans at head dim 64) run the wide-state kernels of
:mod:`memnets.kernels.titans_mlp_wide_triton` (state in global memory, hidden width tiled in blocks;
same custom-op signature plus the block size): ``titans_mlp_chunked`` picks them where
:func:`on_chip_state_too_large`, or where ``hidden_block`` is given.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from memnets.memory import (
    L2Bias,
    MemoryMLP,
    MemoryState,
    chunk_coefficients,
    finish_chunk_then,
    safe_log,
)
from memnets.memory.miras import HuberBias, LpBias

MAX_CHUNK = 64
# largest D·Dh per padded chunk tile (rows) whose kernels fit an H100's 228 KB of shared memory (sm_90
# compile, see the module docstring); 128-row tiles need 304 KB even at D·Dh = 16·64
MAX_STATE_FOR_TILE = {16: 32 * 128, 32: 32 * 128, 64: 16 * 64}
ACTIVATIONS = {"gelu": 0, "silu": 1, "tanh": 2}
# bias kinds (compile-time): 0 L2, 1 ℓ_p, 2 Huber "norm" (δ per token), 3 Huber "coord" (δ per channel)
L2, LP, HUBER_NORM, HUBER_COORD = 0, 1, 2, 3


# -------------------------------------------------------------------------------------------------
# elementwise pieces


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _act(z, ACT: tl.constexpr):
    """σ(z): 0 gelu (erf form), 1 silu, 2 tanh."""
    if ACT == 0:
        out = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == 1:
        out = z * tl.sigmoid(z)
    else:
        out = _tanh(z)
    return out


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """σ'(z)."""
    if ACT == 0:
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        out = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * pdf
    elif ACT == 1:
        s = tl.sigmoid(z)
        out = s * (1.0 + z * (1.0 - s))
    else:
        t = _tanh(z)
        out = 1.0 - t * t
    return out


@triton.jit
def _act_grad2(z, ACT: tl.constexpr):
    """σ''(z): gelu φ(z)(2 − z²), silu s(1 − s)(2 + z(1 − 2s)), tanh −2t(1 − t²)."""
    if ACT == 0:
        out = tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2.0 - z * z)
    elif ACT == 1:
        s = tl.sigmoid(z)
        out = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        t = _tanh(z)
        out = -2.0 * t * (1.0 - t * t)
    return out


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _bias_grad(r, delta, p, eps, sharp, BIAS: tl.constexpr):
    """ℓ'(R) for R ``[BL, BD]`` (0 in padded entries); ``delta``: the Huber threshold, ``[BL]`` (norm)
    or ``[BL, BD]`` (coord), unused otherwise."""
    if BIAS == 0:
        out = 2.0 * r
    elif BIAS == 1:
        out = p * r * tl.exp((0.5 * p - 1.0) * tl.log(r * r + eps))
    elif BIAS == 2:
        small = tl.sum(r * r, 1) <= delta * delta
        out = tl.where(small[:, None], 2.0 * r, 2.0 * delta[:, None] * _tanh(sharp * r))
    else:
        out = tl.where(tl.abs(r) <= delta, 2.0 * r, 2.0 * delta * _sign(r))
    return out


@triton.jit
def _ln(z, cmask, D: tl.constexpr, ln_eps):
    """(x̂, 1/σ) of a row-wise LayerNorm without affine over the first D columns (0 beyond)."""
    mu = tl.sum(z, 1) / D
    zc = tl.where(cmask[None, :], z - mu[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / D + ln_eps)
    return zc * rstd[:, None], rstd


@triton.jit
def _ln_bwd(xhat, rstd, g, cmask, D: tl.constexpr):
    """J g for the LayerNorm Jacobian J = ∂x̂/∂z (symmetric): rstd (g − mean(g) − x̂ mean(g x̂))."""
    out = rstd[:, None] * (g - (tl.sum(g, 1) / D)[:, None] - xhat * (tl.sum(g * xhat, 1) / D)[:, None])
    return tl.where(cmask[None, :], out, 0.0)


@triton.jit
def _residual(out, x, RES: tl.constexpr):
    """M(x) = x + out with the residual (the bias sees M(k) − v exactly as the engine forms it)."""
    if RES:
        out = out + x
    return out


@triton.jit
def _rows(b, t0, h, T, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    """Offsets and mask of the chunk's rows t0 .. t0+L of head h in a ``[B, T, H, D]`` tensor."""
    li = tl.arange(0, BL)
    rows = t0 + li
    cols = tl.arange(0, BD)
    valid = (li < L) & (rows < T)
    mask = valid[:, None] & (cols < D)[None, :]
    offs = ((b * T + rows.to(tl.int64))[:, None] * H + h) * D + cols[None, :]
    return offs, mask, valid, ((b * T + rows.to(tl.int64)) * H + h)


@triton.jit
def _mat(R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """Offsets and mask of an ``[R, C]`` matrix in a ``[BR, BC]`` tile."""
    r = tl.arange(0, BR)
    c = tl.arange(0, BC)
    return r[:, None] * C + c[None, :], (r < R)[:, None] & (c < C)[None, :]


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="tf32x3")


# -------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _forward_kernel(
    q,
    k,
    v,
    bp,
    beta,
    f,
    G,
    m_end,
    s_coef,
    w1_init,
    w2_init,
    s1_init,
    s2_init,
    ln_w,
    ln_b,
    y,
    w1_final,
    w2_final,
    s1_final,
    s2_final,
    w1_anchor,
    w2_anchor,
    w1_chunks,
    w2_chunks,
    s1_chunks,
    s2_chunks,
    T,
    NC,
    p,
    eps,
    sharp,
    ln_eps,
    H: tl.constexpr,
    D: tl.constexpr,
    DH: tl.constexpr,
    L: tl.constexpr,
    BL: tl.constexpr,
    BD: tl.constexpr,
    BH: tl.constexpr,
    ACT: tl.constexpr,
    BIAS: tl.constexpr,
    LN: tl.constexpr,
    RES: tl.constexpr,
    HAS_MOM: tl.constexpr,
    STORE: tl.constexpr,
):
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n = D * DH  # numbers per weight matrix
    o1, m1 = _mat(D, DH, BD, BH)  # W1 [D, Dh]
    o2, m2 = _mat(DH, D, BH, BD)  # W2 [Dh, D]
    W1 = tl.load(w1_init + bh * n + o1, mask=m1, other=0.0)
    W2 = tl.load(w2_init + bh * n + o2, mask=m2, other=0.0)
    S1 = tl.zeros([BD, BH], dtype=tl.float32)
    S2 = tl.zeros([BH, BD], dtype=tl.float32)
    if HAS_MOM:
        S1 = tl.load(s1_init + bh * n + o1, mask=m1, other=0.0)
        S2 = tl.load(s2_init + bh * n + o2, mask=m2, other=0.0)
    li = tl.arange(0, BL)
    lmask = li < L
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma = tl.zeros([BD], dtype=tl.float32)
    shift = tl.zeros([BD], dtype=tl.float32)
    if LN:
        gamma = tl.load(ln_w + h * D + cols, mask=cmask, other=0.0)
        shift = tl.load(ln_b + h * D + cols, mask=cmask, other=0.0)
    for c in range(NC):
        cc = bh * NC + c  # index of this (batch, head, chunk)
        if STORE:
            tl.store(w1_chunks + cc * n + o1, W1, mask=m1)
            tl.store(w2_chunks + cc * n + o2, W2, mask=m2)
            if HAS_MOM:
                tl.store(s1_chunks + cc * n + o1, S1, mask=m1)
                tl.store(s2_chunks + cc * n + o2, S2, mask=m2)
        if c == NC - 1:
            tl.store(w1_anchor + bh * n + o1, W1, mask=m1)
            tl.store(w2_anchor + bh * n + o2, W2, mask=m2)
        offs, mask, valid, row_idx = _rows(b, c * L, h, T, H, D, L, BL, BD)
        b_k = tl.load(k + offs, mask=mask, other=0.0).to(tl.float32)
        b_v = tl.load(v + offs, mask=mask, other=0.0).to(tl.float32)
        delta = tl.zeros([BL], dtype=tl.float32)
        if BIAS == 2:
            delta = tl.load(bp + row_idx, mask=valid, other=0.0).to(tl.float32)
        if BIAS == 3:
            delta = tl.load(bp + offs, mask=mask, other=0.0).to(tl.float32)
        # key path at the chunk-start weights
        Z1 = _dot(b_k, W1)
        A = _act(Z1, ACT)
        Z2 = _dot(A, W2)
        if LN:
            xk, rk = _ln(Z2, cmask, D, ln_eps)
            out = xk * gamma[None, :] + shift[None, :]
        else:
            out = Z2
        r = _residual(out, b_k, RES) - b_v
        dd = _bias_grad(r, delta, p, eps, sharp, BIAS)
        if LN:
            dd = _ln_bwd(xk, rk, dd * gamma[None, :], cmask, D)
        dd = tl.where(mask, dd, 0.0)  # Δ = δ2, the last layer's output gradient
        d1 = _dot(dd, tl.trans(W2)) * _act_grad(Z1, ACT)  # δ1
        if not STORE:
            b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
            b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
            b_G = tl.load(
                G + cc * L * L + li[:, None] * L + li[None, :],
                mask=lmask[:, None] & lmask[None, :],
                other=0.0,
            )
            z1 = b_beta[:, None] * _dot(b_q, W1) - _dot(_dot(b_q, tl.trans(b_k)) * b_G, d1)
            if HAS_MOM:
                b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
                z1 += b_f[:, None] * _dot(b_q, S1)
            a1 = _act(z1, ACT)
            b_y = b_beta[:, None] * _dot(a1, W2) - _dot(_dot(a1, tl.trans(A)) * b_G, dd)
            if HAS_MOM:
                b_y += b_f[:, None] * _dot(a1, S2)
            if LN:
                xq, _ = _ln(b_y, cmask, D, ln_eps)
                b_y = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=mask)
        last = tl.minimum(T - c * L, L) - 1  # the chunk's last token (the tail chunk is short)
        g_last = tl.load(G + cc * L * L + last * L + li, mask=lmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)
        W1_new = beta_last * W1 - _dot(tl.trans(b_k), g_last[:, None] * d1)
        W2_new = beta_last * W2 - _dot(tl.trans(A), g_last[:, None] * dd)
        if HAS_MOM:
            f_last = tl.load(f + cc * L + last)
            W1_new += f_last * S1
            W2_new += f_last * S2
            b_s = tl.load(s_coef + cc * L + li, mask=lmask, other=0.0)
            b_m = tl.load(m_end + cc)
            S1 = b_m * S1 - _dot(tl.trans(b_k), b_s[:, None] * d1)
            S2 = b_m * S2 - _dot(tl.trans(A), b_s[:, None] * dd)
        W1 = W1_new
        W2 = W2_new
    tl.store(w1_final + bh * n + o1, W1, mask=m1)
    tl.store(w2_final + bh * n + o2, W2, mask=m2)
    if HAS_MOM:
        tl.store(s1_final + bh * n + o1, S1, mask=m1)
        tl.store(s2_final + bh * n + o2, S2, mask=m2)


# -------------------------------------------------------------------------------------------------
# backward


@triton.jit
def _backward_kernel(
    q,
    k,
    v,
    bp,
    ln_w,
    ln_b,
    dy,
    beta,
    f,
    G,
    m_end,
    s_coef,
    w1_chunks,
    w2_chunks,
    s1_chunks,
    s2_chunks,
    dw1_final,
    dw2_final,
    ds1_final,
    ds2_final,
    dw1_anchor,
    dw2_anchor,
    dq,
    dk,
    dv,
    dbp,
    dln_w,
    dln_b,
    dbeta,
    df,
    dG,
    dm_end,
    ds_coef,
    dw1_init,
    dw2_init,
    ds1_init,
    ds2_init,
    T,
    NC,
    p,
    eps,
    sharp,
    ln_eps,
    H: tl.constexpr,
    D: tl.constexpr,
    DH: tl.constexpr,
    L: tl.constexpr,
    BL: tl.constexpr,
    BD: tl.constexpr,
    BH: tl.constexpr,
    ACT: tl.constexpr,
    BIAS: tl.constexpr,
    LN: tl.constexpr,
    RES: tl.constexpr,
    HAS_MOM: tl.constexpr,
):
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n = D * DH
    o1, m1 = _mat(D, DH, BD, BH)
    o2, m2 = _mat(DH, D, BH, BD)
    # cotangents of the state at the end of the current chunk
    cW1 = tl.load(dw1_final + bh * n + o1, mask=m1, other=0.0)
    cW2 = tl.load(dw2_final + bh * n + o2, mask=m2, other=0.0)
    cS1 = tl.zeros([BD, BH], dtype=tl.float32)
    cS2 = tl.zeros([BH, BD], dtype=tl.float32)
    if HAS_MOM:
        cS1 = tl.load(ds1_final + bh * n + o1, mask=m1, other=0.0)
        cS2 = tl.load(ds2_final + bh * n + o2, mask=m2, other=0.0)
    li = tl.arange(0, BL)
    lmask = li < L
    gmask = lmask[:, None] & lmask[None, :]
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma = tl.zeros([BD], dtype=tl.float32)
    shift = tl.zeros([BD], dtype=tl.float32)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    if LN:
        gamma = tl.load(ln_w + h * D + cols, mask=cmask, other=0.0)
        shift = tl.load(ln_b + h * D + cols, mask=cmask, other=0.0)
    for i in range(NC):
        c = NC - 1 - i
        cc = bh * NC + c
        last = tl.minimum(T - c * L, L) - 1  # the chunk's last token (the tail chunk is short)
        is_last = li == last
        W1 = tl.load(w1_chunks + cc * n + o1, mask=m1, other=0.0)
        W2 = tl.load(w2_chunks + cc * n + o2, mask=m2, other=0.0)
        offs, mask, valid, row_idx = _rows(b, c * L, h, T, H, D, L, BL, BD)
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        b_k = tl.load(k + offs, mask=mask, other=0.0).to(tl.float32)
        b_v = tl.load(v + offs, mask=mask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        delta = tl.zeros([BL], dtype=tl.float32)
        if BIAS == 2:
            delta = tl.load(bp + row_idx, mask=valid, other=0.0).to(tl.float32)
        if BIAS == 3:
            delta = tl.load(bp + offs, mask=mask, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
        b_G = tl.load(G + cc * L * L + li[:, None] * L + li[None, :], mask=gmask, other=0.0)
        g_last = tl.load(G + cc * L * L + last * L + li, mask=lmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)

        # recompute the key path
        Z1 = _dot(b_k, W1)
        A = _act(Z1, ACT)
        Z2 = _dot(A, W2)
        if LN:
            xk, rk = _ln(Z2, cmask, D, ln_eps)
            out = xk * gamma[None, :] + shift[None, :]
        else:
            out = Z2
        r = _residual(out, b_k, RES) - b_v
        dout = _bias_grad(r, delta, p, eps, sharp, BIAS)  # ℓ'(R), before the LayerNorm backward
        dd = dout
        if LN:
            dd = _ln_bwd(xk, rk, dout * gamma[None, :], cmask, D)
        dd = tl.where(mask, dd, 0.0)  # Δ = δ2
        E = _dot(dd, tl.trans(W2))
        sg = _act_grad(Z1, ACT)
        d1 = E * sg  # δ1
        # recompute the query path
        qw1 = _dot(b_q, W1)
        qk = _dot(b_q, tl.trans(b_k))
        z1 = b_beta[:, None] * qw1 - _dot(qk * b_G, d1)
        if HAS_MOM:
            S1 = tl.load(s1_chunks + cc * n + o1, mask=m1, other=0.0)
            S2 = tl.load(s2_chunks + cc * n + o2, mask=m2, other=0.0)
            b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
            qs1 = _dot(b_q, S1)
            z1 += b_f[:, None] * qs1
        a1 = _act(z1, ACT)
        aa = _dot(a1, tl.trans(A))
        a1w2 = _dot(a1, W2)
        if HAS_MOM:
            a1s2 = _dot(a1, S2)
        if LN:
            # Y = LN(Ẑ2) γ + b: recompute Ẑ2 and take the cotangent through the LayerNorm
            z2 = b_beta[:, None] * a1w2 - _dot(aa * b_G, dd)
            if HAS_MOM:
                z2 += b_f[:, None] * a1s2
            xq, rq = _ln(z2, cmask, D, ln_eps)
            d_gamma += tl.sum(b_dy * xq, 0)
            d_shift += tl.sum(b_dy, 0)
            b_dy = _ln_bwd(xq, rq, b_dy * gamma[None, :], cmask, D)

        # layer 2 of the reads: Ẑ2 = β ⊙ (Â W2) [+ f ⊙ (Â S2)] − (Â Aᵀ ⊙ G) Δ
        b_dbeta = tl.sum(b_dy * a1w2, 1)
        dP = -_dot(b_dy, tl.trans(dd))
        b_dG = dP * aa
        dP = dP * b_G
        d_dd = -_dot(tl.trans(aa * b_G), b_dy)  # dΔ
        da1 = b_beta[:, None] * _dot(b_dy, tl.trans(W2)) + _dot(dP, A)
        dA = _dot(tl.trans(dP), a1)
        gW2 = _dot(tl.trans(a1), b_beta[:, None] * b_dy)
        if HAS_MOM:
            b_df = tl.sum(b_dy * a1s2, 1)
            da1 += b_f[:, None] * _dot(b_dy, tl.trans(S2))
        # layer 1 of the reads: Ẑ1 = β ⊙ (Q W1) [+ f ⊙ (Q S1)] − (Q Kᵀ ⊙ G) δ1
        dz1 = da1 * _act_grad(z1, ACT)
        b_dbeta += tl.sum(dz1 * qw1, 1)
        dP = -_dot(dz1, tl.trans(d1))
        b_dG += dP * qk
        dP = dP * b_G
        d_d1 = -_dot(tl.trans(qk * b_G), dz1)  # dδ1
        b_dq = b_beta[:, None] * _dot(dz1, tl.trans(W1)) + _dot(dP, b_k)
        b_dk = _dot(tl.trans(dP), b_q)
        gW1 = _dot(tl.trans(b_q), b_beta[:, None] * dz1)
        if HAS_MOM:
            b_df += tl.sum(dz1 * qs1, 1)
            b_dq += b_f[:, None] * _dot(dz1, tl.trans(S1))

        # chunk end: W' = β_L W [+ f_L S] − Xᵀ (g_last ⊙ δ),  S' = m_end S − Xᵀ (s_coef ⊙ δ)
        kw = _dot(b_k, cW1)
        aw = _dot(A, cW2)
        d_d1 -= g_last[:, None] * kw
        d_dd -= g_last[:, None] * aw
        dg_last = -tl.sum(d1 * kw, 1) - tl.sum(dd * aw, 1)
        b_dk -= _dot(g_last[:, None] * d1, tl.trans(cW1))
        dA -= _dot(g_last[:, None] * dd, tl.trans(cW2))
        dbeta_last = tl.sum(tl.sum(cW1 * W1, 1), 0) + tl.sum(tl.sum(cW2 * W2, 1), 0)
        gW1 += beta_last * cW1
        gW2 += beta_last * cW2
        b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
        b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
        if HAS_MOM:
            f_last = tl.load(f + cc * L + last)
            b_m = tl.load(m_end + cc)
            b_s = tl.load(s_coef + cc * L + li, mask=lmask, other=0.0)
            b_df = tl.where(
                is_last, b_df + tl.sum(tl.sum(cW1 * S1, 1), 0) + tl.sum(tl.sum(cW2 * S2, 1), 0), b_df
            )
            ks = _dot(b_k, cS1)
            As = _dot(A, cS2)
            d_d1 -= b_s[:, None] * ks
            d_dd -= b_s[:, None] * As
            b_ds = -tl.sum(d1 * ks, 1) - tl.sum(dd * As, 1)
            b_dk -= _dot(b_s[:, None] * d1, tl.trans(cS1))
            dA -= _dot(b_s[:, None] * dd, tl.trans(cS2))
            tl.store(dm_end + cc, tl.sum(tl.sum(cS1 * S1, 1), 0) + tl.sum(tl.sum(cS2 * S2, 1), 0))
            tl.store(df + cc * L + li, b_df, mask=lmask)
            tl.store(ds_coef + cc * L + li, b_ds, mask=lmask)
            cS1 = f_last * cW1 + b_m * cS1 + _dot(tl.trans(b_q), b_f[:, None] * dz1)
            cS2 = f_last * cW2 + b_m * cS2 + _dot(tl.trans(a1), b_f[:, None] * b_dy)

        # key path backward (second order): δ1 = (Δ W2ᵀ) ⊙ σ'(Z1), Δ = ℓ'(A W2 − V), A = σ(K W1)
        dE = d_d1 * sg
        dZ1 = d_d1 * E * _act_grad2(Z1, ACT)
        d_dd += _dot(dE, W2)
        gW2 += _dot(tl.trans(dE), dd)
        d_dd = tl.where(mask, d_dd, 0.0)
        if LN:
            # Δ = J(Z2) (γ ⊙ ℓ'(R)) with J the LayerNorm Jacobian (symmetric), R = x̂ γ + b − V:
            # the cotangent w of Δ reaches ℓ'(R) as γ ⊙ J w, and Z2 directly (second order) as
            # −(rstd/D) x̂ (w·Δ) − rstd (mean(g x̂) J w + mean(w x̂) Δ), g = γ ⊙ ℓ'(R)
            Jw = _ln_bwd(xk, rk, d_dd, cmask, D)
            g_k = dout * gamma[None, :]
            dZ2 = -(rk / D)[:, None] * xk * tl.sum(d_dd * dd, 1)[:, None]
            dZ2 -= rk[:, None] * (
                (tl.sum(g_k * xk, 1) / D)[:, None] * Jw + (tl.sum(d_dd * xk, 1) / D)[:, None] * dd
            )
            d_gamma += tl.sum(dout * Jw, 0)
            d_out = gamma[None, :] * Jw
        else:
            d_out = d_dd
        if BIAS == 0:
            dr = 2.0 * d_out
        elif BIAS == 1:
            dr = p * tl.exp((0.5 * p - 2.0) * tl.log(r * r + eps)) * ((p - 1.0) * r * r + eps) * d_out
        elif BIAS == 2:
            small = tl.sum(r * r, 1) <= delta * delta
            th = _tanh(sharp * r)
            dr = tl.where(small[:, None], 2.0 * d_out, 2.0 * delta[:, None] * sharp * (1.0 - th * th) * d_out)
            b_ddelta = tl.where(small, 0.0, tl.sum(2.0 * th * d_out, 1))
            tl.store(dbp + row_idx, b_ddelta.to(dbp.dtype.element_ty), mask=valid)
        else:
            small = tl.abs(r) <= delta
            dr = tl.where(small, 2.0 * d_out, 0.0)
            b_ddelta = tl.where(small, 0.0, 2.0 * _sign(r) * d_out)
            tl.store(dbp + offs, b_ddelta.to(dbp.dtype.element_ty), mask=mask)
        dr = tl.where(mask, dr, 0.0)
        if LN:
            d_gamma += tl.sum(dr * xk, 0)
            d_shift += tl.sum(dr, 0)
            dZ2 += _ln_bwd(xk, rk, dr * gamma[None, :], cmask, D)
        else:
            dZ2 = dr
        dA += _dot(dZ2, tl.trans(W2))
        gW2 += _dot(tl.trans(A), dZ2)
        dZ1 += dA * sg
        b_dk += _dot(dZ1, tl.trans(W1))
        gW1 += _dot(tl.trans(b_k), dZ1)
        if c == NC - 1:
            gW1 += tl.load(dw1_anchor + bh * n + o1, mask=m1, other=0.0)
            gW2 += tl.load(dw2_anchor + bh * n + o2, mask=m2, other=0.0)
        tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        if RES:
            b_dk += dr  # M(k) = k + ...: the residual's direct path
        tl.store(dk + offs, b_dk.to(dk.dtype.element_ty), mask=mask)
        tl.store(dv + offs, (-dr).to(dv.dtype.element_ty), mask=mask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        tl.store(dG + cc * L * L + li[:, None] * L + li[None, :], b_dG, mask=gmask)
        cW1 = gW1
        cW2 = gW2
    tl.store(dw1_init + bh * n + o1, cW1, mask=m1)
    tl.store(dw2_init + bh * n + o2, cW2, mask=m2)
    if HAS_MOM:
        tl.store(ds1_init + bh * n + o1, cS1, mask=m1)
        tl.store(ds2_init + bh * n + o2, cS2, mask=m2)
    if LN:
        tl.store(dln_w + bh * D + cols, d_gamma, mask=cmask)
        tl.store(dln_b + bh * D + cols, d_shift, mask=cmask)


# -------------------------------------------------------------------------------------------------
# launchers and custom ops


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: tuple) -> tuple[tuple, dict]:
    """Runtime scalars and compile-time constants of both kernels."""
    chunk_size, activation, bias_kind, p, eps, sharpness, ln_eps, residual = config
    H, D = q.shape[2:]
    DH = w1.shape[-1]
    constants = dict(
        H=H,
        D=D,
        DH=DH,
        L=chunk_size,
        BL=_block(chunk_size),
        BD=_block(D),
        BH=_block(DH),
        ACT=activation,
        BIAS=bias_kind,
        LN=ln_w is not None,
        RES=residual,
        num_stages=1,  # the chunk loop is a sequential recurrence: multi-buffering only costs shared memory
    )
    return (p, eps, sharpness, ln_eps), constants


def _forward(q, k, v, bp, ln_w, ln_b, coef, w1, w2, s1, s2, config, store):
    B, T, H = q.shape[:3]
    beta, f, G, m_end, s_coef = coef
    NC = beta.shape[2]
    has_mom = s1 is not None

    def new(*shape: int) -> Tensor:
        return w1.new_empty(shape)

    y = new(*q.shape) if not store else new(0)  # float32: the read's residual is added outside
    w1_final, w2_final, w1_anchor, w2_anchor = new(*w1.shape), new(*w2.shape), new(*w1.shape), new(*w2.shape)
    s1_final, s2_final = (new(*w1.shape), new(*w2.shape)) if has_mom else (new(0), new(0))
    w1_chunks = new(B, H, NC, *w1.shape[2:]) if store else new(0)
    w2_chunks = new(B, H, NC, *w2.shape[2:]) if store else new(0)
    s1_chunks = new(B, H, NC, *w1.shape[2:]) if store and has_mom else new(0)
    s2_chunks = new(B, H, NC, *w2.shape[2:]) if store and has_mom else new(0)
    scalars, constants = _meta(q, w1, ln_w, config)
    empty = new(0)
    _forward_kernel[(B * H,)](
        q,
        k,
        v,
        empty if bp is None else bp,
        beta,
        f,
        G,
        m_end,
        s_coef,
        w1,
        w2,
        w1 if s1 is None else s1,
        w2 if s2 is None else s2,
        empty if ln_w is None else ln_w,
        empty if ln_b is None else ln_b,
        y,
        w1_final,
        w2_final,
        s1_final,
        s2_final,
        w1_anchor,
        w2_anchor,
        w1_chunks,
        w2_chunks,
        s1_chunks,
        s2_chunks,
        T,
        NC,
        *scalars,
        **constants,
        HAS_MOM=has_mom,
        STORE=store,
    )
    return (
        y,
        (w1_final, w2_final, s1_final, s2_final, w1_anchor, w2_anchor),
        (w1_chunks, w2_chunks, s1_chunks, s2_chunks),
    )


@torch.library.custom_op("memnets::titans_mlp_fwd", mutates_args=())
def titans_mlp_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias_params: Tensor | None,
    ln_w: Tensor | None,
    ln_b: Tensor | None,
    beta: Tensor,
    f: Tensor,
    G: Tensor,
    m_end: Tensor,
    s_coef: Tensor,
    w1: Tensor,
    w2: Tensor,
    s1: Tensor | None,
    s2: Tensor | None,
    chunk_size: int,
    activation: int,
    bias_kind: int,
    p: float,
    eps: float,
    sharpness: float,
    ln_eps: float,
    residual: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``q, k, v [B, T, H, D]``; ``bias_params`` the Huber threshold ``[B, T, H]`` (norm) or
    ``[B, T, H, D]`` (coord), else ``None``; ``ln_w, ln_b [H, D]`` the memory LayerNorm's scale and
    shift (``None``: no LayerNorm); coefficients ``[B, H, NC, L(, L)]`` float32 (f, m_end, s_coef
    empty without momentum); state ``w1, s1 [B, H, D, Dh]``, ``w2, s2 [B, H, Dh, D]`` float32.
    Scalars: chunk size, activation (``ACTIVATIONS``), bias kind, ℓ_p's p and ε, Huber's sharpness,
    the LayerNorm's ε, the residual (the kernels form M(k) = k + ..., the read's ``+ q`` is left to
    the caller). Returns (y float32, W1, W2, S1, S2 final (S empty without momentum), W1, W2
    at the last chunk's start)."""
    coef = (beta, f, G, m_end, s_coef)
    config = (chunk_size, activation, bias_kind, p, eps, sharpness, ln_eps, residual)
    y, state, _ = _forward(q, k, v, bias_params, ln_w, ln_b, coef, w1, w2, s1, s2, config, False)
    return (y, *state)


@titans_mlp_fwd.register_fake
def _(q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, *config):
    has_mom = s1 is not None
    return (
        w1.new_empty(q.shape),
        torch.empty_like(w1),
        torch.empty_like(w2),
        torch.empty_like(w1) if has_mom else w1.new_empty(0),
        torch.empty_like(w2) if has_mom else w1.new_empty(0),
        torch.empty_like(w1),
        torch.empty_like(w2),
    )


@torch.library.custom_op("memnets::titans_mlp_bwd", mutates_args=())
def titans_mlp_bwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias_params: Tensor | None,
    ln_w: Tensor | None,
    ln_b: Tensor | None,
    beta: Tensor,
    f: Tensor,
    G: Tensor,
    m_end: Tensor,
    s_coef: Tensor,
    w1: Tensor,
    w2: Tensor,
    s1: Tensor | None,
    s2: Tensor | None,
    dy: Tensor,
    dw1_final: Tensor,
    dw2_final: Tensor,
    ds1_final: Tensor,
    ds2_final: Tensor,
    dw1_anchor: Tensor,
    dw2_anchor: Tensor,
    chunk_size: int,
    activation: int,
    bias_kind: int,
    p: float,
    eps: float,
    sharpness: float,
    ln_eps: float,
    residual: bool,
) -> list[Tensor]:
    """Gradients (q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2) of
    :func:`titans_mlp_fwd` (empty for absent inputs)."""
    B, T, H = q.shape[:3]
    NC = beta.shape[2]
    has_mom = s1 is not None
    coef = (beta, f, G, m_end, s_coef)
    config = (chunk_size, activation, bias_kind, p, eps, sharpness, ln_eps, residual)
    _, _, (w1_chunks, w2_chunks, s1_chunks, s2_chunks) = _forward(
        q, k, v, bias_params, ln_w, ln_b, coef, w1, w2, s1, s2, config, True
    )

    def like(t: Tensor | None, present: bool = True) -> Tensor:
        return w1.new_empty(0) if t is None or not present else torch.empty_like(t)

    dq, dk, dv, dbp = like(q), like(k), like(v), like(bias_params)
    # the LayerNorm's outer parameters: one partial sum per (batch, head), reduced below
    dln_w = w1.new_empty(B, H, q.shape[3]) if ln_w is not None else w1.new_empty(0)
    dln_b = w1.new_empty(B, H, q.shape[3]) if ln_w is not None else w1.new_empty(0)
    dbeta, df, dG, dm_end, ds_coef = like(beta), like(f), like(G), like(m_end), like(s_coef)
    dw1, dw2, ds1, ds2 = like(w1), like(w2), like(w1, has_mom), like(w2, has_mom)
    scalars, constants = _meta(q, w1, ln_w, config)
    empty = w1.new_empty(0)
    _backward_kernel[(B * H,)](
        q,
        k,
        v,
        empty if bias_params is None else bias_params,
        empty if ln_w is None else ln_w,
        empty if ln_b is None else ln_b,
        dy,
        beta,
        f,
        G,
        m_end,
        s_coef,
        w1_chunks,
        w2_chunks,
        s1_chunks,
        s2_chunks,
        dw1_final,
        dw2_final,
        ds1_final,
        ds2_final,
        dw1_anchor,
        dw2_anchor,
        dq,
        dk,
        dv,
        dbp,
        dln_w,
        dln_b,
        dbeta,
        df,
        dG,
        dm_end,
        ds_coef,
        dw1,
        dw2,
        ds1,
        ds2,
        T,
        NC,
        *scalars,
        **constants,
        HAS_MOM=has_mom,
    )
    if ln_w is not None:
        dln_w, dln_b = dln_w.sum(0), dln_b.sum(0)
    return [dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef, dw1, dw2, ds1, ds2]


@titans_mlp_bwd.register_fake
def _(q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, *rest):
    def like(t: Tensor | None, present: bool = True) -> Tensor:
        return w1.new_empty(0) if t is None or not present else torch.empty_like(t)

    has_mom = s1 is not None
    return [
        *(like(t) for t in (q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2)),
        like(w1, has_mom),
        like(w2, has_mom),
    ]


_TENSOR_INPUTS = 15  # q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2


def _setup_context(ctx, inputs, output) -> None:
    tensors, ctx.config = inputs[:_TENSOR_INPUTS], inputs[_TENSOR_INPUTS:]
    ctx.absent = [t is None for t in tensors]
    ctx.save_for_backward(*tensors)


def _backward(ctx, dy, dw1_final, dw2_final, ds1_final, ds2_final, dw1_anchor, dw2_anchor):
    tensors = ctx.saved_tensors
    q, w1, w2, s1 = tensors[0], tensors[11], tensors[12], tensors[13]

    def cot(t: Tensor | None, like: Tensor) -> Tensor:
        return torch.zeros_like(like) if t is None else t.contiguous()

    has_mom = s1 is not None
    grads = titans_mlp_bwd(
        *tensors,
        cot(dy, w1.new_empty(q.shape)),
        cot(dw1_final, w1),
        cot(dw2_final, w2),
        cot(ds1_final, w1) if has_mom else w1.new_zeros(0),
        cot(ds2_final, w2) if has_mom else w1.new_zeros(0),
        cot(dw1_anchor, w1),
        cot(dw2_anchor, w2),
        *ctx.config,
    )
    grads = [None if absent else g for g, absent in zip(grads, ctx.absent)]
    if not has_mom:  # f, m_end, s_coef are empty placeholders without momentum
        grads[7] = grads[9] = grads[10] = None
    return *grads, *(None,) * len(ctx.config)


torch.library.register_autograd("memnets::titans_mlp_fwd", _backward, setup_context=_setup_context)


# -------------------------------------------------------------------------------------------------
# entry point


def _bias_config(bias: object) -> tuple[int, float, float, float] | None:
    """(kind, p, eps, sharpness) of a bias the kernels cover, else ``None``."""
    if bias is None or isinstance(bias, L2Bias):
        return L2, 2.0, 0.0, 0.0
    if isinstance(bias, LpBias):
        return LP, float(bias.p), float(bias.eps), 0.0
    if isinstance(bias, HuberBias):
        return (HUBER_NORM if bias.mode == "norm" else HUBER_COORD), 2.0, 0.0, float(bias.sharpness)
    return None


def on_chip_state_too_large(d_in: int, d_hidden: int, chunk_size: int | None) -> bool:
    """Whether the whole-state kernels exceed the GPU's shared memory at this chunk size (``None``: at
    the smallest tile), so that the wide-state kernels (:mod:`memnets.kernels.titans_mlp_wide_triton`)
    run instead. Both widths are padded to powers of two (>= 16): the padded state is what occupies the
    chip (D = 8, hidden 128 at chunk 64 passed an unpadded check and needs 232 KB in the backward)."""
    return _block(d_in) * _block(d_hidden) > MAX_STATE_FOR_TILE[_block(chunk_size or 1)]


def supports(
    arch: MemoryMLP, bias: object = None, chunk_size: int | None = None, hidden_block: int | None = None
) -> str | None:
    """``None`` when the kernel covers this memory, bias and chunk size, else the reason it does not
    (``hidden_block``: for the wide-state kernels with that hidden tiling)."""
    if arch.depth != 2:
        return f"memory depth {arch.depth} (the MLP Triton kernel covers depth 2)"
    if arch.activation not in ACTIVATIONS:
        return f"activation {arch.activation!r} (the MLP Triton kernel covers {list(ACTIVATIONS)})"
    if _bias_config(bias) is None:
        return f"attentional bias {bias!r} (the MLP Triton kernel covers L2Bias, LpBias and HuberBias)"
    if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK:
        return f"chunk_size {chunk_size} (the MLP Triton kernel covers chunk sizes 1..{MAX_CHUNK})"
    d_in, d_hidden = arch.shapes[0]
    if hidden_block is not None or on_chip_state_too_large(d_in, d_hidden, chunk_size):
        from .titans_mlp_wide_triton import supports_wide  # imports this module

        reason = supports_wide(d_in, chunk_size, hidden_block)
        if reason is not None:
            return reason
    if arch.init_weights[0].dtype != torch.float32:
        return f"memory dtype {arch.init_weights[0].dtype} (the MLP Triton kernel runs in float32)"
    return None


def _slice(x: Tensor | None, s: slice) -> Tensor | None:
    return None if x is None else x[:, s]


def titans_mlp_chunked(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 16,
    bias: object = None,
    bias_params: Tensor | None = None,
    hidden_block: int | None = None,
) -> tuple[Tensor, MemoryState]:
    """Drop-in for ``memory_chunked(arch, q, k, v, lr, mom, keep, state, chunk_size=chunk_size,
    bias=bias, bias_params=bias_params)`` for a depth-2 ``arch`` (see :func:`supports`). Same shapes and
    state: ``q, k, v [B, T, H, D]``, gates ``[B, T, H]``; returns ``y`` in ``q``'s dtype and the
    :class:`MemoryState` after the last token (float32). ``hidden_block``: run the wide-state kernels
    of :mod:`memnets.kernels.titans_mlp_wide_triton` with the hidden width tiled in blocks of this
    many columns (``None``: they run, with their default block, only where
    :func:`on_chip_state_too_large`)."""
    reason = supports(arch, bias, chunk_size, hidden_block)
    if reason is not None:
        raise ValueError(f"titans_mlp_chunked: unsupported configuration: {reason}")
    B, T, H, D = q.shape
    for name, g in (("lr", lr), ("mom", mom), ("keep", keep)):
        if g is not None and tuple(g.shape) != (B, T, H):
            raise ValueError(f"titans_mlp_chunked: {name} must have shape {[B, T, H]}, got {tuple(g.shape)}")
    if arch.num_heads != H or arch.dim != D:
        raise ValueError(
            f"titans_mlp_chunked: q has H={H}, D={D}, the memory H={arch.num_heads}, D={arch.dim}"
        )
    if state is not None and (state.momentum is None) != (mom is None):
        raise ValueError(
            "titans_mlp_chunked: the state's momentum and the mom argument must be given together"
        )
    kind, p, eps, sharp = _bias_config(bias)  # type: ignore[misc]
    if kind in (HUBER_NORM, HUBER_COORD):
        want = (B, T, H) if kind == HUBER_NORM else (B, T, H, D)
        if bias_params is None or tuple(bias_params.shape) != want:
            got = None if bias_params is None else tuple(bias_params.shape)
            raise ValueError(
                f"titans_mlp_chunked: {bias!r} needs bias_params of shape {list(want)}, got {got}"
            )
    if state is not None and state.offset > 0:
        return finish_chunk_then(
            functools.partial(titans_mlp_chunked, hidden_block=hidden_block), arch, q, k, v, lr, mom, keep,
            state, chunk_size=chunk_size, bias=bias, bias_params=bias_params,
        )  # fmt: skip
    if state is None:
        w1, w2 = (w[None].expand(B, *w.shape) for w in arch.init_weights)
        s1 = s2 = None
        if mom is not None:
            s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
    else:
        w1, w2 = state.weights
        s1, s2 = (None, None) if state.momentum is None else state.momentum
    if T == 0:
        return q.new_zeros(q.shape), MemoryState((w1, w2), None if s1 is None else (s1, s2))
    w1, w2 = w1.float().contiguous(), w2.float().contiguous()
    if s1 is not None:
        s1, s2 = s1.float().contiguous(), s2.float().contiguous()  # type: ignore[union-attr]
    L = chunk_size
    NC = triton.cdiv(T, L)
    pad = NC * L - T

    with torch.autocast(q.device.type, enabled=False):

        def gate(x: Tensor, log: bool) -> Tensor:  # [B, T, H] -> [B, H, NC, L], padded with lr 0 / gate 1
            x = x.float().transpose(1, 2)
            x = safe_log(x) if log else x
            return F.pad(x, (0, pad)).reshape(B, H, NC, L)

        c = chunk_coefficients(
            gate(lr, False),
            None if keep is None else gate(keep, True),
            None if mom is None else gate(mom, True),
        )
        dtype = q.dtype
        bp = None if kind in (L2, LP) else bias_params.float().contiguous()  # type: ignore[union-attr]
        ln_w = ln_b = None
        if arch.layer_norm:
            ln_w, ln_b = arch.norm_weight.float().contiguous(), arch.norm_bias.float().contiguous()
        dummy = c.beta.new_zeros(0)
        op, wide = titans_mlp_fwd, ()
        if hidden_block is not None or on_chip_state_too_large(D, arch.shapes[0][1], L):
            from .titans_mlp_wide_triton import DEFAULT_HIDDEN_BLOCK
            from .titans_mlp_wide_triton import titans_mlp_wide_fwd as op

            wide = (DEFAULT_HIDDEN_BLOCK if hidden_block is None else hidden_block,)
        y, w1f, w2f, s1f, s2f, w1a, w2a = op(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            bp,
            ln_w,
            ln_b,
            c.beta.contiguous(),
            dummy if c.f is None else c.f.contiguous(),
            c.G.contiguous(),
            dummy if c.m_end is None else c.m_end.contiguous(),
            dummy if c.s_coef is None else c.s_coef.contiguous(),
            w1,
            w2,
            s1,
            s2,
            L,
            ACTIVATIONS[arch.activation],
            kind,
            p,
            eps,
            sharp,
            float(arch.eps),
            arch.residual,
            *wide,
        )
        if arch.residual:
            y = y + q.float()
        y = y.to(dtype)
    offset = T % L
    out = MemoryState((w1f, w2f), None if s1 is None else (s1f, s2f), (w1a, w2a) if offset else None, offset)
    return y, out
