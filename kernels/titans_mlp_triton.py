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

Tiles. The kernels walk tiles of at most ``MAX_TILE`` = 64 tokens (padded to at least 16 rows). A
chunk longer than a tile (or whose tile would not fit the chip, see below) runs as KE tiles of a
divisor of its length: every token's inner gradient is still taken at the *chunk*-start weights (the
key path uses those, refreshed every KE tiles), while the reads and the update walk tile by tile.
That is exact, not an approximation: with the gradients u_s fixed at the chunk start, the recurrence
S_t = mom_t S_{t−1} − lr_t u_s, W_t = keep_t W_{t−1} + S_t is linear, so splitting a chunk's dual form
at any token gives the same W_t (the tile coefficients are ``chunk_coefficients`` at the tile size).
Chunk sizes 8..256 (and TNT's global 2048) therefore all run; a chunk size with no divisor in
8..64 whose tile fits (a prime above 64) is refused.

Reads at the chunk start (``READ_START``, TNT's global memory, :func:`chunk_read_mlp`, TNT Eq. 5, 7):
Y = [LN](σ(Q W1) W2) at the chunk-start weights, plain gradient descent (no momentum or decay).

The Omega rule (OmegaNet, ATLAS Eq. 9-10, :func:`omega_mlp_chunked`; spec 4.5): token t's inner
gradient sums the gated gradients of the last c = ``window`` tokens, all at the chunk-start weights.
A tile's key path then runs over P = c − 1 more rows, the tokens before it (from the previous tile,
chunk or call: the state carries the last P keys and values, which lead ``k`` and ``v``), and the
coefficient matrix becomes G·Γ ``[L, P + L]`` with the band Γ[n, e] = win_gate[n, P + n − e]
(:func:`~memnets.memory.omega.window_band`, computed in PyTorch, so the window gates' gradients come
from autograd), s_coef likewise s_coefᵀ Γ. Key rows overlap between tiles: the backward writes their
gradients per tile and sums them (:func:`_fold_key_rows`).

Kernels (grid: one program per (batch, head), tiles sequential inside; all math in float32, half
inputs upcast on load, matmul operands as ``dot_precision`` says, float32 by default):

1. ``_forward_kernel``: carries (W1, W2, S1, S2) over tiles C0 .. C0 + NC, writes y, the state after
   them and the last chunk's start weights (the engine's ``anchor`` when T is not a multiple of the
   chunk). With ``STORE`` it instead writes every tile's start state and skips the reads.
2. ``_backward_kernel``: the same tiles in reverse, carrying the cotangents (dW1, dW2, dS1, dS2) of the
   tile-end state; recomputes the tile's key and query paths from its stored start state (and its
   chunk's start weights) and gives the gradients of q, k, v, the bias parameters, the LayerNorm's γ
   and b, every coefficient and the start state. The second-order terms are included: Δ depends on
   W1, W2 through R (ℓ'' of the bias) and through the LayerNorm's Jacobian at Z2, δ1 on W2 and on Z1
   (σ'' of the activation). The key path's weight cotangents collect over a chunk's tiles and join
   the state's at its first tile.

Memory stays bounded at long T by checkpoint segments (``checkpoint_every`` chunks, default
⌈√chunks⌉): the forward launches once per segment and keeps the state at each segment start; the
backward walks the segments in reverse, re-running the forward from the segment's checkpoint with
``STORE`` (that segment's tile states only) before its backward launch. Saved per (batch, head):
⌈T/C⌉/every + every·KE states instead of one per tile, for one extra forward pass.

Both passes are ``torch.library`` custom ops (``memnets::titans_mlp_fwd`` / ``_bwd``) with fake
implementations; ``register_autograd`` ties them together.

Not covered (``supports`` names the reason; the mixers then fall back to the PyTorch engine): depth
other than 2, other biases (KL, the dot loss of DLA), retention maps and chunk-end maps (Moneta's ℓ_q
normalisation, Memora's softmax retention: both act on each token's weights, which the dual form
never forms), Muon (Atlas: Newton–Schulz of each chunk's momentum), the gated memory (Atlas++), keys
wider than values (polynomial features of degree > 1, OmegaNet's default), the Huber bias with an
Omega window, float64 memories, and states D·Dh beyond the shared-memory limits below.

Performance is untuned and untimed (written without a GPU; the interpreter ran it, and both kernels
were compiled ahead of time for sm_90 with ``scripts/check_kernels_compile.py``: ``NUM_WARPS`` = 4
(8 spills less at tiles of <= 32 rows, RESULTS §9), num_stages=1, GELU, L2 bias, LayerNorm, residual,
momentum). One program per (batch, head) keeps the
whole state on chip, so the footprint grows with D·Dh and the tile. Shared memory of that
compile (forward / backward), and the backward's register spills per thread::

    D    Dh    L=16            L=32            L=64             L=128
    16   64    16 / 16 KB      24 / 32 KB      48 / 128 KB      96 / 304 KB
    32   128   48 / 32 KB      64 / 64 KB      112 / 272 KB
    64   256   160 / 128 KB
    backward spills: 2.6 KB (16, 64, 16) ... 11 KB (32, 128, 32) ... 21 KB (64, 256, 16)

An H100 has 228 KB of shared memory per SM, so ``MAX_STATE_FOR_TILE`` admits D·Dh <= 32·128 for
tiles of 16 and 32 rows and D·Dh <= 16·64 for 64 rows; 128-row tiles never fit (``MAX_TILE`` = 64;
several tiles per chunk cost no more shared memory: KE = 4 compiles to the same 128 KB). Every
shape spills registers (255 per thread), so expect it to be slow. States that fit no tile of the
chunk (D = 64, Dh = 256: Titans at head dim 64) run the wide-state kernels of
:mod:`memnets.kernels.titans_mlp_wide_triton` (state in global memory, hidden width in blocks; the
plain chunked form, chunks of at most ``MAX_TILE``): :func:`titans_mlp_chunked` picks them where
:func:`on_chip_state_too_large`, or where ``hidden_block`` is given.

Packed sequences (``cu_seqlens``, B = 1, ``VARLEN``): one program per (sequence, head) walks that
sequence's tiles, which restart at its first token (coefficients per sequence tile, gates padded per
sequence, :mod:`memnets.kernels.packing`); every sequence has its own initial and final state. With
the Omega window, each sequence's carried window rows lead its own rows in k and v (sequence n's key
rows start at cu[n] + n·P0), so no window reaches into the sequence before it.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from memnets.kernels.packing import chunk_layout, sequence_lengths, sequence_states, tile_gate
from torch import Tensor

from memnets.memory import (
    L2Bias,
    MemoryMLP,
    MemoryState,
    check_inputs,
    chunk_coefficients,
    finish_chunk_then,
)
from memnets.memory.chunk_read import check_read_inputs, chunk_read_memory
from memnets.memory.features import FeatureMemoryMLP
from memnets.memory.miras import HuberBias, LpBias
from memnets.memory.omega import OmegaState, omega_chunked, window_band

MAX_TILE = 64
# largest D·Dh per padded tile (rows) whose kernels fit an H100's 228 KB of shared memory (sm_90
# compile, see the module docstring); 128-row tiles need 304 KB even at D·Dh = 16·64
MAX_STATE_FOR_TILE = {16: 32 * 128, 32: 32 * 128, 64: 16 * 64}
ACTIVATIONS = {"gelu": 0, "silu": 1, "tanh": 2}
# warps per program: at (D, Dh, tile) = (32, 128, 16) an sm_90 compile spills 7.2 / 1.7 KB per thread
# (backward / forward) at 4 warps and 5.9 / 0.8 KB at 8, but 8 warps at 255 registers fill an SM's
# register file with one program; untimed (no GPU yet): the benchmark's --num-warps sets it
NUM_WARPS = 4
# whether backend="auto" may pick the wide-state kernels: their in-place global-memory updates rely on
# barriers between a program's threads, which the interpreter cannot test; turn on once the kernel
# tests have passed on a GPU (RESULTS §9). backend="triton" runs them either way.
WIDE_IN_AUTO = False
# operands of the kernels' matmuls (compile-time, see _dot): float32 by default; on a GPU "tf32" or
# the inputs' half type trade accuracy for tensor-core rate (a third / a sixth of tf32x3's cost)
DOT_PRECISIONS = {"tf32x3": 0, "tf32": 1, "float16": 2, "bfloat16": 3}
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
def _key_delta(
    Z2,
    b_k,
    b_v,
    delta,
    gamma,
    shift,
    mask,
    cmask,
    p,
    eps,
    sharp,
    ln_eps,
    D: tl.constexpr,
    BIAS: tl.constexpr,
    LN: tl.constexpr,
    RES: tl.constexpr,
):
    """(Δ, ℓ'(R), R, x̂, 1/σ) of the key path from Z2 (x̂ = Z2 and 1/σ unused without LayerNorm)."""
    xk = Z2
    rk = tl.sum(Z2, 1)
    out = Z2
    if LN:
        xk, rk = _ln(Z2, cmask, D, ln_eps)
        out = xk * gamma[None, :] + shift[None, :]
    r = _residual(out, b_k, RES) - b_v
    dout = _bias_grad(r, delta, p, eps, sharp, BIAS)
    dd = dout
    if LN:
        dd = _ln_bwd(xk, rk, dout * gamma[None, :], cmask, D)
    dd = tl.where(mask, dd, 0.0)
    return dd, dout, r, xk, rk


@triton.jit
def _delta_backward(
    d_dd, dd, dout, r, delta, xk, rk, gamma, mask, cmask, p, eps, sharp,
    D: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr,
):  # fmt: skip
    """The cotangent ``d_dd`` of Δ = [LN backward of] ℓ'(R) (``dout`` = ℓ'(R), ``xk``, ``rk`` the key
    path's LayerNorm at Z2) back to R and Z2, second order (ℓ'' of the bias, the LayerNorm's Jacobian
    at Z2), over ``mask``'s rows. Returns (dZ2, dR, dγ, db, dδ): the LayerNorm's scale and shift
    cotangents summed over rows, dδ the Huber threshold's (``[rows]`` "norm", ``[rows, D]`` "coord",
    zeros for the other biases)."""
    d_dd = tl.where(mask, d_dd, 0.0)
    d_gamma = tl.sum(d_dd * 0.0, 0)
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
    d_delta = delta * 0.0
    if BIAS == 0:
        dr = 2.0 * d_out
    elif BIAS == 1:
        dr = p * tl.exp((0.5 * p - 2.0) * tl.log(r * r + eps)) * ((p - 1.0) * r * r + eps) * d_out
    elif BIAS == 2:
        small = tl.sum(r * r, 1) <= delta * delta
        th = _tanh(sharp * r)
        dr = tl.where(small[:, None], 2.0 * d_out, 2.0 * delta[:, None] * sharp * (1.0 - th * th) * d_out)
        d_delta = tl.where(small, 0.0, tl.sum(2.0 * th * d_out, 1))
    else:
        small = tl.abs(r) <= delta
        dr = tl.where(small, 2.0 * d_out, 0.0)
        d_delta = tl.where(small, 0.0, 2.0 * _sign(r) * d_out)
    dr = tl.where(mask, dr, 0.0)
    d_shift = tl.sum(dr, 0)
    if LN:
        d_gamma += tl.sum(dr * xk, 0)
        dZ2 += _ln_bwd(xk, rk, dr * gamma[None, :], cmask, D)
    else:
        dZ2 = dr
    return dZ2, dr, d_gamma, d_shift, d_delta


@triton.jit
def _read_ln_bwd(z, dy, gamma, cmask, D: tl.constexpr, ln_eps):
    """Cotangents of a read's output Y = γ ⊙ LN(z) + b: (dz, dγ, db), dγ and db summed over rows."""
    xq, rq = _ln(z, cmask, D, ln_eps)
    return _ln_bwd(xq, rq, dy * gamma[None, :], cmask, D), tl.sum(dy * xq, 0), tl.sum(dy, 0)


@triton.jit
def _residual(out, x, RES: tl.constexpr):
    """M(x) = x + out with the residual (the bias sees M(k) − v exactly as the engine forms it)."""
    if RES:
        out = out + x
    return out


@triton.jit
def _rows(b, t0, h, T, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    """Offsets and mask of rows t0 .. t0+L of head h in a ``[B, T, H, D]`` tensor (rows outside
    0 .. T−1 masked: t0 < 0 for a window reaching before the first token)."""
    li = tl.arange(0, BL)
    rows = t0 + li
    cols = tl.arange(0, BD)
    valid = (li < L) & (rows >= 0) & (rows < T)
    mask = valid[:, None] & (cols < D)[None, :]
    offs = ((b * T + rows.to(tl.int64))[:, None] * H + h) * D + cols[None, :]
    return offs, mask, valid, ((b * T + rows.to(tl.int64)) * H + h)


@triton.jit
def _key_base(i_bh, bos, P0, H: tl.constexpr, VARLEN: tl.constexpr):
    """The sequence's first row in k and v: packed, every sequence's P0 carried window rows lead its
    own rows (sequence n starts at cu[n] + n·P0); else row 0 of its batch entry."""
    kb = bos
    if VARLEN:
        kb += (i_bh // H).to(tl.int64) * P0
    return kb


@triton.jit
def _sequence(i_bh, cu, toff, T, NCT, H: tl.constexpr, VARLEN: tl.constexpr):
    """Program (sequence, head)'s batch index, first row, length, first tile and tile count, and its
    row in the coefficients: with ``VARLEN`` sequence n of the packed batch spans rows cu[n] .. cu[n+1]
    and coefficient tiles toff[n] .. toff[n+1]; else batch entry b spans all T rows and NCT tiles."""
    if VARLEN:
        i_n = i_bh // H
        bos = tl.load(cu + i_n).to(tl.int64)
        Tn = (tl.load(cu + i_n + 1).to(tl.int64) - bos).to(tl.int32)
        t_first = tl.load(toff + i_n)
        n_tiles = tl.load(toff + i_n + 1) - t_first
        b = bos * 0
        crow = (i_bh % H).to(tl.int64)
    else:
        b = (i_bh // H).to(tl.int64)
        bos = b * 0
        Tn = T
        t_first = 0
        n_tiles = NCT
        crow = i_bh.to(tl.int64)
    return b, bos, Tn, t_first, n_tiles, crow


@triton.jit
def _mat(R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """Offsets and mask of an ``[R, C]`` matrix in a ``[BR, BC]`` tile."""
    r = tl.arange(0, BR)
    c = tl.arange(0, BC)
    return r[:, None] * C + c[None, :], (r < R)[:, None] & (c < C)[None, :]


@triton.jit
def _dot(a, b, DOT: tl.constexpr):
    """a @ b accumulated in float32, the operands as ``DOT_PRECISIONS`` says: 0 float32 (three TF32
    products, tf32x3), 1 one TF32 product, 2 / 3 rounded to float16 / bfloat16 (as fla's kernels read
    their float32 state against half inputs)."""
    if DOT == 0:
        out = tl.dot(a, b, input_precision="tf32x3")
    elif DOT == 1:
        out = tl.dot(a, b, input_precision="tf32")
    elif DOT == 2:
        out = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    return out


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
    cu,
    toff,
    T,
    P0,
    C0,
    NC,
    NCT,
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
    KE: tl.constexpr,
    P: tl.constexpr,
    BK: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
    BIAS: tl.constexpr,
    LN: tl.constexpr,
    RES: tl.constexpr,
    HAS_MOM: tl.constexpr,
    READ_START: tl.constexpr,
    VARLEN: tl.constexpr,
    STORE: tl.constexpr,
):
    i_bh = tl.program_id(0)
    b, bos, Tn, t_first, n_tiles, crow = _sequence(i_bh, cu, toff, T, NCT, H, VARLEN)
    kb = _key_base(i_bh, bos, P0, H, VARLEN)
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
    K1 = W1  # the key path's weights: those at the start of the chunk (of KE tiles) the tile is in
    K2 = W2
    for c in range(tl.minimum(NC, n_tiles - C0)):
        g = C0 + c  # the tile's index in the sequence
        cc = crow * NCT + t_first + g  # index of this (batch, head, tile) in the coefficients
        if g % KE == 0:
            K1 = W1
            K2 = W2
        if STORE:
            sc = bh * NC + c
            tl.store(w1_chunks + sc * n + o1, W1, mask=m1)
            tl.store(w2_chunks + sc * n + o2, W2, mask=m2)
            if HAS_MOM:
                tl.store(s1_chunks + sc * n + o1, S1, mask=m1)
                tl.store(s2_chunks + sc * n + o2, S2, mask=m2)
        if g == n_tiles - 1:
            tl.store(w1_anchor + bh * n + o1, K1, mask=m1)
            tl.store(w2_anchor + bh * n + o2, K2, mask=m2)
        offs, mask, _, _ = _rows(b, bos + g * L, h, bos + Tn, H, D, L, BL, BD)
        # key rows: the tile's tokens after the P before them (the Omega window's reach), in k and v
        # where the state's carried window (P0 rows) leads the sequence's rows
        koffs, kmask, kvalid, krow = _rows(b, P0 + g * L - P, h, P0 + Tn, H, D, P + L, BK, BD)
        koffs += kb * H * D
        krow += kb * H
        lk = tl.arange(0, BK)
        lkmask = lk < P + L
        b_k = tl.load(k + koffs, mask=kmask, other=0.0).to(tl.float32)
        b_v = tl.load(v + koffs, mask=kmask, other=0.0).to(tl.float32)
        delta = tl.zeros([BK], dtype=tl.float32)
        if BIAS == 2:
            delta = tl.load(bp + krow, mask=kvalid, other=0.0).to(tl.float32)
        if BIAS == 3:
            delta = tl.load(bp + koffs, mask=kmask, other=0.0).to(tl.float32)
        # key path at the chunk-start weights
        Z1 = _dot(b_k, K1, DOT)
        A = _act(Z1, ACT)
        Z2 = _dot(A, K2, DOT)
        dd, _, _, _, _ = _key_delta(
            Z2, b_k, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )  # Δ = δ2, the last layer's output gradient
        d1 = _dot(dd, tl.trans(K2), DOT) * _act_grad(Z1, ACT)  # δ1
        if not STORE:
            b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
            if READ_START:
                b_y = _dot(_act(_dot(b_q, K1, DOT), ACT), K2, DOT)
            else:
                b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
                b_G = tl.load(
                    G + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :],
                    mask=lmask[:, None] & lkmask[None, :],
                    other=0.0,
                )
                z1 = b_beta[:, None] * _dot(b_q, W1, DOT) - _dot(_dot(b_q, tl.trans(b_k), DOT) * b_G, d1, DOT)
                if HAS_MOM:
                    b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
                    z1 += b_f[:, None] * _dot(b_q, S1, DOT)
                a1 = _act(z1, ACT)
                b_y = b_beta[:, None] * _dot(a1, W2, DOT) - _dot(_dot(a1, tl.trans(A), DOT) * b_G, dd, DOT)
                if HAS_MOM:
                    b_y += b_f[:, None] * _dot(a1, S2, DOT)
            if LN:
                xq, _ = _ln(b_y, cmask, D, ln_eps)
                b_y = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=mask)
        last = tl.minimum(Tn - g * L, L) - 1  # the tile's last token (the tail tile is short)
        g_last = tl.load(G + cc * L * (P + L) + last * (P + L) + lk, mask=lkmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)
        W1_new = beta_last * W1 - _dot(tl.trans(b_k), g_last[:, None] * d1, DOT)
        W2_new = beta_last * W2 - _dot(tl.trans(A), g_last[:, None] * dd, DOT)
        if HAS_MOM:
            f_last = tl.load(f + cc * L + last)
            W1_new += f_last * S1
            W2_new += f_last * S2
            b_s = tl.load(s_coef + cc * (P + L) + lk, mask=lkmask, other=0.0)
            b_m = tl.load(m_end + cc)
            S1 = b_m * S1 - _dot(tl.trans(b_k), b_s[:, None] * d1, DOT)
            S2 = b_m * S2 - _dot(tl.trans(A), b_s[:, None] * dd, DOT)
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
    cu,
    toff,
    T,
    P0,
    C0,
    NC,
    NCT,
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
    KE: tl.constexpr,
    P: tl.constexpr,
    BK: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
    BIAS: tl.constexpr,
    LN: tl.constexpr,
    RES: tl.constexpr,
    HAS_MOM: tl.constexpr,
    READ_START: tl.constexpr,
    VARLEN: tl.constexpr,
):
    i_bh = tl.program_id(0)
    b, bos, Tn, t_first, n_tiles, crow = _sequence(i_bh, cu, toff, T, NCT, H, VARLEN)
    kb = _key_base(i_bh, bos, P0, H, VARLEN)
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
    lk = tl.arange(0, BK)
    lkmask = lk < P + L
    gmask = lmask[:, None] & lkmask[None, :]
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma = tl.zeros([BD], dtype=tl.float32)
    shift = tl.zeros([BD], dtype=tl.float32)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    if LN:
        gamma = tl.load(ln_w + h * D + cols, mask=cmask, other=0.0)
        shift = tl.load(ln_b + h * D + cols, mask=cmask, other=0.0)
    # the key path's weights are those at the start of the tile's chunk of KE tiles: the cotangent
    # they collect (acc) joins the state's at that chunk's first tile
    acc1 = tl.zeros([BD, BH], dtype=tl.float32)
    acc2 = tl.zeros([BH, BD], dtype=tl.float32)
    n_here = tl.minimum(NC, n_tiles - C0)
    for i in range(n_here):
        c = n_here - 1 - i
        g = C0 + c  # the tile's index in the sequence
        cc = crow * NCT + t_first + g
        sc = bh * NC + c
        last = tl.minimum(Tn - g * L, L) - 1  # the tile's last token (the tail tile is short)
        is_last = li == last
        W1 = tl.load(w1_chunks + sc * n + o1, mask=m1, other=0.0)
        W2 = tl.load(w2_chunks + sc * n + o2, mask=m2, other=0.0)
        if KE == 1:
            K1 = W1
            K2 = W2
        else:
            kc = sc - g % KE
            K1 = tl.load(w1_chunks + kc * n + o1, mask=m1, other=0.0)
            K2 = tl.load(w2_chunks + kc * n + o2, mask=m2, other=0.0)
        offs, mask, _, _ = _rows(b, bos + g * L, h, bos + Tn, H, D, L, BL, BD)
        koffs, kmask, kvalid, krow = _rows(b, P0 + g * L - P, h, P0 + Tn, H, D, P + L, BK, BD)
        koffs += kb * H * D
        krow += kb * H
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        b_k = tl.load(k + koffs, mask=kmask, other=0.0).to(tl.float32)
        b_v = tl.load(v + koffs, mask=kmask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        delta = tl.zeros([BK], dtype=tl.float32)
        if BIAS == 2:
            delta = tl.load(bp + krow, mask=kvalid, other=0.0).to(tl.float32)
        if BIAS == 3:
            delta = tl.load(bp + koffs, mask=kmask, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
        g_last = tl.load(G + cc * L * (P + L) + last * (P + L) + lk, mask=lkmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)

        # recompute the key path
        Z1 = _dot(b_k, K1, DOT)
        A = _act(Z1, ACT)
        Z2 = _dot(A, K2, DOT)
        # Δ = δ2, ℓ'(R) before the LayerNorm backward, R, and the LayerNorm's x̂ and 1/σ at Z2
        dd, dout, r, xk, rk = _key_delta(
            Z2, b_k, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )
        E = _dot(dd, tl.trans(K2), DOT)
        sg = _act_grad(Z1, ACT)
        d1 = E * sg  # δ1
        if READ_START:
            # reads at the chunk-start weights: Y = [LN](σ(Q K1) K2)
            z1 = _dot(b_q, K1, DOT)
            a1 = _act(z1, ACT)
            if LN:
                b_dy, dg, db = _read_ln_bwd(_dot(a1, K2, DOT), b_dy, gamma, cmask, D, ln_eps)
                d_gamma += dg
                d_shift += db
            dz1 = _dot(b_dy, tl.trans(K2), DOT) * _act_grad(z1, ACT)
            b_dq = _dot(dz1, tl.trans(K1), DOT)
            rK1 = _dot(tl.trans(b_q), dz1, DOT)
            rK2 = _dot(tl.trans(a1), b_dy, DOT)
            b_dk = tl.zeros([BK, BD], dtype=tl.float32)
            dA = tl.zeros([BK, BH], dtype=tl.float32)
            d_d1 = tl.zeros([BK, BH], dtype=tl.float32)
            d_dd = tl.zeros([BK, BD], dtype=tl.float32)
            b_dbeta = tl.zeros([BL], dtype=tl.float32)
            b_dG = tl.zeros([BL, BK], dtype=tl.float32)
            gW1 = tl.zeros([BD, BH], dtype=tl.float32)
            gW2 = tl.zeros([BH, BD], dtype=tl.float32)
        else:
            b_G = tl.load(G + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :], mask=gmask, other=0.0)
            # recompute the query path
            qw1 = _dot(b_q, W1, DOT)
            qk = _dot(b_q, tl.trans(b_k), DOT)
            z1 = b_beta[:, None] * qw1 - _dot(qk * b_G, d1, DOT)
            if HAS_MOM:
                S1 = tl.load(s1_chunks + sc * n + o1, mask=m1, other=0.0)
                S2 = tl.load(s2_chunks + sc * n + o2, mask=m2, other=0.0)
                b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
                qs1 = _dot(b_q, S1, DOT)
                z1 += b_f[:, None] * qs1
            a1 = _act(z1, ACT)
            aa = _dot(a1, tl.trans(A), DOT)
            a1w2 = _dot(a1, W2, DOT)
            if HAS_MOM:
                a1s2 = _dot(a1, S2, DOT)
            if LN:
                # Y = LN(Ẑ2) γ + b: recompute Ẑ2 and take the cotangent through the LayerNorm
                z2 = b_beta[:, None] * a1w2 - _dot(aa * b_G, dd, DOT)
                if HAS_MOM:
                    z2 += b_f[:, None] * a1s2
                b_dy, dg, db = _read_ln_bwd(z2, b_dy, gamma, cmask, D, ln_eps)
                d_gamma += dg
                d_shift += db

            # layer 2 of the reads: Ẑ2 = β ⊙ (Â W2) [+ f ⊙ (Â S2)] − (Â Aᵀ ⊙ G) Δ
            b_dbeta = tl.sum(b_dy * a1w2, 1)
            dP = -_dot(b_dy, tl.trans(dd), DOT)
            b_dG = dP * aa
            dP = dP * b_G
            d_dd = -_dot(tl.trans(aa * b_G), b_dy, DOT)  # dΔ
            da1 = b_beta[:, None] * _dot(b_dy, tl.trans(W2), DOT) + _dot(dP, A, DOT)
            dA = _dot(tl.trans(dP), a1, DOT)
            gW2 = _dot(tl.trans(a1), b_beta[:, None] * b_dy, DOT)
            if HAS_MOM:
                b_df = tl.sum(b_dy * a1s2, 1)
                da1 += b_f[:, None] * _dot(b_dy, tl.trans(S2), DOT)
            # layer 1 of the reads: Ẑ1 = β ⊙ (Q W1) [+ f ⊙ (Q S1)] − (Q Kᵀ ⊙ G) δ1
            dz1 = da1 * _act_grad(z1, ACT)
            b_dbeta += tl.sum(dz1 * qw1, 1)
            dP = -_dot(dz1, tl.trans(d1), DOT)
            b_dG += dP * qk
            dP = dP * b_G
            d_d1 = -_dot(tl.trans(qk * b_G), dz1, DOT)  # dδ1
            b_dq = b_beta[:, None] * _dot(dz1, tl.trans(W1), DOT) + _dot(dP, b_k, DOT)
            b_dk = _dot(tl.trans(dP), b_q, DOT)
            gW1 = _dot(tl.trans(b_q), b_beta[:, None] * dz1, DOT)
            if HAS_MOM:
                b_df += tl.sum(dz1 * qs1, 1)
                b_dq += b_f[:, None] * _dot(dz1, tl.trans(S1), DOT)

        # chunk end: W' = β_L W [+ f_L S] − Xᵀ (g_last ⊙ δ),  S' = m_end S − Xᵀ (s_coef ⊙ δ)
        kw = _dot(b_k, cW1, DOT)
        aw = _dot(A, cW2, DOT)
        d_d1 -= g_last[:, None] * kw
        d_dd -= g_last[:, None] * aw
        dg_last = -tl.sum(d1 * kw, 1) - tl.sum(dd * aw, 1)
        b_dk -= _dot(g_last[:, None] * d1, tl.trans(cW1), DOT)
        dA -= _dot(g_last[:, None] * dd, tl.trans(cW2), DOT)
        dbeta_last = tl.sum(tl.sum(cW1 * W1, 1), 0) + tl.sum(tl.sum(cW2 * W2, 1), 0)
        gW1 += beta_last * cW1
        gW2 += beta_last * cW2
        b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
        b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
        if HAS_MOM:
            f_last = tl.load(f + cc * L + last)
            b_m = tl.load(m_end + cc)
            b_s = tl.load(s_coef + cc * (P + L) + lk, mask=lkmask, other=0.0)
            b_df = tl.where(
                is_last, b_df + tl.sum(tl.sum(cW1 * S1, 1), 0) + tl.sum(tl.sum(cW2 * S2, 1), 0), b_df
            )
            ks = _dot(b_k, cS1, DOT)
            As = _dot(A, cS2, DOT)
            d_d1 -= b_s[:, None] * ks
            d_dd -= b_s[:, None] * As
            b_ds = -tl.sum(d1 * ks, 1) - tl.sum(dd * As, 1)
            b_dk -= _dot(b_s[:, None] * d1, tl.trans(cS1), DOT)
            dA -= _dot(b_s[:, None] * dd, tl.trans(cS2), DOT)
            tl.store(dm_end + cc, tl.sum(tl.sum(cS1 * S1, 1), 0) + tl.sum(tl.sum(cS2 * S2, 1), 0))
            tl.store(df + cc * L + li, b_df, mask=lmask)
            tl.store(ds_coef + cc * (P + L) + lk, b_ds, mask=lkmask)
            cS1 = f_last * cW1 + b_m * cS1 + _dot(tl.trans(b_q), b_f[:, None] * dz1, DOT)
            cS2 = f_last * cW2 + b_m * cS2 + _dot(tl.trans(a1), b_f[:, None] * b_dy, DOT)

        # key path backward (second order): δ1 = (Δ K2ᵀ) ⊙ σ'(Z1), Δ = ℓ'(A K2 − V), A = σ(K K1)
        if KE == 1:
            gK1 = gW1
            gK2 = gW2
        else:
            gK1 = acc1
            gK2 = acc2
        if READ_START:
            gK1 += rK1
            gK2 += rK2
        dE = d_d1 * sg
        dZ1 = d_d1 * E * _act_grad2(Z1, ACT)
        d_dd += _dot(dE, K2, DOT)
        gK2 += _dot(tl.trans(dE), dd, DOT)
        dZ2, dr, dg, db, b_ddelta = _delta_backward(
            d_dd, dd, dout, r, delta, xk, rk, gamma, kmask, cmask, p, eps, sharp, D, BIAS, LN
        )
        if LN:
            d_gamma += dg
            d_shift += db
        if BIAS == 2:
            tl.store(dbp + krow, b_ddelta.to(dbp.dtype.element_ty), mask=kvalid)
        if BIAS == 3:
            tl.store(dbp + koffs, b_ddelta.to(dbp.dtype.element_ty), mask=kmask)
        dA += _dot(dZ2, tl.trans(K2), DOT)
        gK2 += _dot(tl.trans(A), dZ2, DOT)
        dZ1 += dA * sg
        b_dk += _dot(dZ1, tl.trans(K1), DOT)
        gK1 += _dot(tl.trans(b_k), dZ1, DOT)
        if g == n_tiles - 1:
            gK1 += tl.load(dw1_anchor + bh * n + o1, mask=m1, other=0.0)
            gK2 += tl.load(dw2_anchor + bh * n + o2, mask=m2, other=0.0)
        tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        if RES:
            b_dk += dr  # M(k) = k + ...: the residual's direct path
        if P == 0:
            tl.store(dk + koffs, b_dk.to(dk.dtype.element_ty), mask=kmask)
            tl.store(dv + koffs, (-dr).to(dv.dtype.element_ty), mask=kmask)
        else:  # key rows overlap the previous tile's: one block per tile, summed by the caller
            toffs = (cc * (P + L) + lk)[:, None] * D + cols[None, :]
            tl.store(dk + toffs, b_dk.to(dk.dtype.element_ty), mask=kmask)
            tl.store(dv + toffs, (-dr).to(dv.dtype.element_ty), mask=kmask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        tl.store(dG + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :], b_dG, mask=gmask)
        if KE == 1:
            cW1 = gK1
            cW2 = gK2
        elif g % KE == 0:
            cW1 = gW1 + gK1
            cW2 = gW2 + gK2
            acc1 = tl.zeros([BD, BH], dtype=tl.float32)
            acc2 = tl.zeros([BH, BD], dtype=tl.float32)
        else:
            cW1 = gW1
            cW2 = gW2
            acc1 = gK1
            acc2 = gK2
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


def _common_meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: tuple) -> tuple[tuple, dict]:
    """Runtime scalars and compile-time constants shared with the wide-state kernels
    (:mod:`memnets.kernels.titans_mlp_wide_triton`): ``config`` starts (tile, activation, bias kind,
    p, eps, sharpness, LayerNorm eps, residual)."""
    tile, activation, bias_kind, p, eps, sharpness, ln_eps, residual = config[:8]
    H, D = q.shape[2:]
    DH = w1.shape[-1]
    constants = dict(
        H=H,
        D=D,
        DH=DH,
        L=tile,
        BL=_block(tile),
        BD=_block(D),
        BH=_block(DH),
        ACT=activation,
        BIAS=bias_kind,
        LN=ln_w is not None,
        RES=residual,
        num_stages=1,  # the chunk loop is a sequential recurrence: multi-buffering only costs shared memory
    )
    return (p, eps, sharpness, ln_eps), constants


def _meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: tuple) -> tuple[tuple, dict]:
    """Runtime scalars and compile-time constants of both kernels; ``config`` goes on (tiles per
    chunk, reads at chunk start, checkpoint segment, Omega prefix rows, longest sequence in tiles,
    dot precision)."""
    scalars, constants = _common_meta(q, w1, ln_w, config)
    tiles_per_chunk, read_start, _, prefix, _, dot = config[8:14]
    constants |= dict(
        KE=tiles_per_chunk,
        P=prefix,
        BK=_block(prefix + config[0]),
        READ_START=read_start,
        DOT=dot,
        num_warps=NUM_WARPS,
    )
    return scalars, constants


def _carried_rows(k: Tensor, T: int, cu: Tensor | None) -> int:
    """P0, the Omega window's carried rows that lead k and v (of each packed sequence)."""
    return (k.shape[1] - T) // (1 if cu is None else cu.numel() - 1)


def _segments(n_tiles: int, config: tuple) -> list[tuple[int, int]]:
    """(first tile, number of tiles) of each checkpoint segment (``n_tiles``: of the longest sequence)."""
    every = config[10]
    return [(c0, min(every, n_tiles - c0)) for c0 in range(0, n_tiles, every)]


def _forward(q, k, v, bp, ln_w, ln_b, coef, packing, state, config, c0, nc, anchor, y, store):
    """One launch over tiles c0 .. c0 + nc from ``state`` (w1, w2, s1, s2) at tile c0; writes the reads
    into ``y`` (unless ``store``) and the last chunk's start weights into ``anchor``. Returns the state
    after the tiles and, with ``store``, every tile's start state ``[B, H, nc, ...]``."""
    T, H = q.shape[1:3]
    beta, f, G, m_end, s_coef = coef
    w1, w2, s1, s2 = state
    has_mom = s1 is not None
    cu, toff = packing

    def new(*shape: int) -> Tensor:
        return w1.new_empty(shape)

    final = (new(*w1.shape), new(*w2.shape)) + (
        (new(*w1.shape), new(*w2.shape)) if has_mom else (new(0), new(0))
    )
    N = w1.shape[0]  # programs per head: batch entries, or packed sequences
    w1_chunks = new(N, H, nc, *w1.shape[2:]) if store else new(0)
    w2_chunks = new(N, H, nc, *w2.shape[2:]) if store else new(0)
    s1_chunks = new(N, H, nc, *w1.shape[2:]) if store and has_mom else new(0)
    s2_chunks = new(N, H, nc, *w2.shape[2:]) if store and has_mom else new(0)
    scalars, constants = _meta(q, w1, ln_w, config)
    empty = new(0)
    _forward_kernel[(w1.shape[0] * H,)](
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
        *final,
        *anchor,
        w1_chunks,
        w2_chunks,
        s1_chunks,
        s2_chunks,
        empty if cu is None else cu,
        empty if toff is None else toff,
        T,
        _carried_rows(k, T, cu),
        c0,
        nc,
        beta.shape[2],
        *scalars,
        **constants,
        HAS_MOM=has_mom,
        VARLEN=cu is not None,
        STORE=store,
    )
    return final if has_mom else (*final[:2], None, None), (w1_chunks, w2_chunks, s1_chunks, s2_chunks)


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
    cu_seqlens: Tensor | None,
    tile_offsets: Tensor | None,
    tile: int,
    activation: int,
    bias_kind: int,
    p: float,
    eps: float,
    sharpness: float,
    ln_eps: float,
    residual: bool,
    tiles_per_chunk: int,
    read_start: bool,
    checkpoint_every: int,
    prefix: int,
    max_tiles: int,
    dot_precision: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``q, k, v [B, T, H, D]``; ``bias_params`` the Huber threshold ``[B, T, H]`` (norm) or
    ``[B, T, H, D]`` (coord), else ``None``; ``ln_w, ln_b [H, D]`` the memory LayerNorm's scale and
    shift (``None``: no LayerNorm); coefficients of tiles of ``tile`` tokens ``[B, H, NT, tile(, tile)]``
    float32 (f, m_end, s_coef empty without momentum); state ``w1, s1 [B, H, D, Dh]``,
    ``w2, s2 [B, H, Dh, D]`` float32. Scalars: the tile, activation (``ACTIVATIONS``), bias kind, ℓ_p's
    p and ε, Huber's sharpness, the LayerNorm's ε, the residual (the kernels form M(k) = k + ..., the
    read's ``+ q`` is left to the caller), tiles per chunk (the key path's weights are refreshed every
    that many tiles), ``read_start`` (reads at the chunk-start weights, no momentum), and the tiles per
    checkpoint segment. Returns (y float32, W1, W2, S1, S2 final (S empty without momentum), W1, W2 at
    the last chunk's start, and the state at every segment start ``[NS, B, H, ...]`` (the backward's
    checkpoints))."""
    coef = (beta, f, G, m_end, s_coef)
    config = (
        tile,
        activation,
        bias_kind,
        p,
        eps,
        sharpness,
        ln_eps,
        residual,
        tiles_per_chunk,
        read_start,
        checkpoint_every,
        prefix,
        max_tiles,
        dot_precision,
    )
    y = w1.new_empty(q.shape)
    anchor = (torch.empty_like(w1), torch.empty_like(w2))
    state = (w1, w2, s1, s2)
    starts = []
    packing = (cu_seqlens, tile_offsets)
    for c0, nc in _segments(max_tiles, config):
        starts.append(state)
        state, _ = _forward(
            q, k, v, bias_params, ln_w, ln_b, coef, packing, state, config, c0, nc, anchor, y, False
        )
    ckpt = [torch.stack([st[i] for st in starts]) for i in range(2)]
    ckpt += [torch.stack([st[i] for st in starts]) if s1 is not None else w1.new_empty(0) for i in (2, 3)]
    w1f, w2f, s1f, s2f = state
    s1f, s2f = (w1.new_empty(0) if s is None else s for s in (s1f, s2f))  # distinct: outputs may not alias
    return (y, w1f, w2f, s1f, s2f, *anchor, *ckpt)


def _fake_outputs(q: Tensor, w1: Tensor, w2: Tensor, has_mom: bool) -> tuple[Tensor, ...]:
    """The meta outputs the MLP forward ops share: y, W1, W2, S1, S2 final, W1, W2 anchor."""
    return (
        w1.new_empty(q.shape),
        torch.empty_like(w1),
        torch.empty_like(w2),
        torch.empty_like(w1) if has_mom else w1.new_empty(0),
        torch.empty_like(w2) if has_mom else w1.new_empty(0),
        torch.empty_like(w1),
        torch.empty_like(w2),
    )


def _fake_grads(inputs: tuple) -> list[Tensor]:
    """The meta gradients of the MLP backward ops for the forward inputs (q .. s2): empty where an
    input is absent."""
    w1, s1 = inputs[11], inputs[13]
    return [w1.new_empty(0) if t is None else torch.empty_like(t) for t in inputs[:13]] + [
        torch.empty_like(w) if s1 is not None else w1.new_empty(0) for w in inputs[11:13]
    ]


@titans_mlp_fwd.register_fake
def _(q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, cu, toff, *config):
    has_mom = s1 is not None
    ns = len(_segments(config[12], config))
    return (
        *_fake_outputs(q, w1, w2, has_mom),
        w1.new_empty(ns, *w1.shape),
        w2.new_empty(ns, *w2.shape),
        w1.new_empty(ns, *w1.shape) if has_mom else w1.new_empty(0),
        w2.new_empty(ns, *w2.shape) if has_mom else w1.new_empty(0),
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
    cu_seqlens: Tensor | None,
    tile_offsets: Tensor | None,
    ckpt_w1: Tensor,
    ckpt_w2: Tensor,
    ckpt_s1: Tensor,
    ckpt_s2: Tensor,
    dy: Tensor,
    dw1_final: Tensor,
    dw2_final: Tensor,
    ds1_final: Tensor,
    ds2_final: Tensor,
    dw1_anchor: Tensor,
    dw2_anchor: Tensor,
    tile: int,
    activation: int,
    bias_kind: int,
    p: float,
    eps: float,
    sharpness: float,
    ln_eps: float,
    residual: bool,
    tiles_per_chunk: int,
    read_start: bool,
    checkpoint_every: int,
    prefix: int,
    max_tiles: int,
    dot_precision: int,
) -> list[Tensor]:
    """Gradients (q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2) of
    :func:`titans_mlp_fwd` (empty for absent inputs). Segments run in reverse: each re-runs its forward
    from its checkpoint to recompute its tiles' start states (memory: one segment's states), then
    takes the gradients back through it."""
    B, T, H = q.shape[:3]
    has_mom = s1 is not None
    coef = (beta, f, G, m_end, s_coef)
    config = (
        tile,
        activation,
        bias_kind,
        p,
        eps,
        sharpness,
        ln_eps,
        residual,
        tiles_per_chunk,
        read_start,
        checkpoint_every,
        prefix,
        max_tiles,
        dot_precision,
    )

    def like(t: Tensor | None, present: bool = True) -> Tensor:
        return w1.new_empty(0) if t is None or not present else torch.empty_like(t)

    dq, dk, dv, dbp = like(q), like(k), like(v), like(bias_params)
    NT, rows = beta.shape[2], prefix + tile
    if prefix:  # each tile's key rows (they overlap), summed by _fold_key_rows; rows never written stay 0
        dk, dv = (w1.new_zeros(B, H, NT, rows, x.shape[3]) for x in (k, v))
    dbeta, df, dG, dm_end, ds_coef = like(beta), like(f), like(G), like(m_end), like(s_coef)
    # the LayerNorm's outer parameters: one partial sum per (batch, head) and segment, reduced below
    dln_w, dln_b = (
        w1.new_zeros(*w1.shape[:2], q.shape[3]) if ln_w is not None else w1.new_empty(0) for _ in range(2)
    )
    carry = (dw1_final, dw2_final, ds1_final, ds2_final)
    scratch = (torch.empty_like(w1), torch.empty_like(w2))  # the recompute's anchor, unused
    scalars, constants = _meta(q, w1, ln_w, config)
    empty = w1.new_empty(0)
    segments = _segments(max_tiles, config)
    packing = (cu_seqlens, tile_offsets)
    for s in reversed(range(len(segments))):
        c0, nc = segments[s]
        start = (ckpt_w1[s], ckpt_w2[s]) + ((ckpt_s1[s], ckpt_s2[s]) if has_mom else (None, None))
        _, chunks = _forward(
            q, k, v, bias_params, ln_w, ln_b, coef, packing, start, config, c0, nc, scratch, empty, True
        )
        d_init = (like(w1), like(w2), like(w1, has_mom), like(w2, has_mom))
        dln = (like(dln_w), like(dln_b)) if ln_w is not None else (empty, empty)
        _backward_kernel[(w1.shape[0] * H,)](
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
            *chunks,
            *carry,
            dw1_anchor,
            dw2_anchor,
            dq,
            dk,
            dv,
            dbp,
            *dln,
            dbeta,
            df,
            dG,
            dm_end,
            ds_coef,
            *d_init,
            empty if cu_seqlens is None else cu_seqlens,
            empty if tile_offsets is None else tile_offsets,
            T,
            _carried_rows(k, T, cu_seqlens),
            c0,
            nc,
            beta.shape[2],
            *scalars,
            **constants,
            HAS_MOM=has_mom,
            VARLEN=cu_seqlens is not None,
        )
        carry = d_init
        if ln_w is not None:
            dln_w, dln_b = dln_w + dln[0], dln_b + dln[1]
    if ln_w is not None:
        dln_w, dln_b = dln_w.sum(0), dln_b.sum(0)
    if prefix:
        dk, dv = (
            _fold_key_rows(d, x, T, tile, prefix, cu_seqlens, tile_offsets) for d, x in ((dk, k), (dv, v))
        )
    return [dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef, *carry]


def _fold_key_rows(
    per_tile: Tensor, like: Tensor, T: int, tile: int, prefix: int, cu: Tensor | None, toff: Tensor | None
) -> Tensor:
    """Sum per-tile key-row gradients ``[B, H, NT, prefix + tile, D]`` into ``like``'s ``[B, Tk, H, D]``:
    tile g of a sequence whose key rows start at kb (0, or packed cu[n] + n·P0) has row e at
    kb + P0 + g·tile − prefix + e, P0 the carried window's rows; rows outside the sequence's
    kb .. kb + P0 + length − 1 (before its first carried row, in its last tile's padding) are absent."""
    B, H, NT, rows, D = per_tile.shape
    P0 = _carried_rows(like, T, cu)
    ar = functools.partial(torch.arange, device=like.device)
    tiles = ar(NT)
    if cu is None:
        first, length = torch.zeros_like(tiles), torch.full_like(tiles, T)
        seq, in_seq = first, tiles
    else:
        cu, toff = cu.long(), toff.long()  # type: ignore[union-attr]
        seq = torch.searchsorted(toff, tiles, right=True) - 1
        first, length, in_seq = cu[seq] + seq * P0, (cu[1:] - cu[:-1])[seq], tiles - toff[seq]
    idx = (first + P0 + in_seq * tile - prefix)[:, None] + ar(rows)[None, :]
    valid = (idx >= first[:, None]) & (idx < (first + P0 + length)[:, None])
    out = per_tile.new_zeros(B, H, like.shape[1], D)
    out.index_add_(2, idx[valid], per_tile[:, :, valid])
    return out.transpose(1, 2).to(like.dtype).contiguous()


@titans_mlp_bwd.register_fake
def _(*inputs):
    return _fake_grads(inputs)


# q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, cu_seqlens, tile_offsets
_TENSOR_INPUTS = 17


def _save_inputs(ctx, inputs: tuple, n_tensors: int, extra: tuple = ()) -> None:
    """Save a forward op's first ``n_tensors`` inputs (and ``extra`` tensors) for its backward; the
    rest of the inputs are its config."""
    tensors, ctx.config = inputs[:n_tensors], inputs[n_tensors:]
    ctx.absent = [t is None for t in tensors]
    ctx.save_for_backward(*tensors, *extra)


def _setup_context(ctx, inputs, output) -> None:
    _save_inputs(ctx, inputs, _TENSOR_INPUTS, output[7:])  # with the checkpoints


def _cotangents(ctx, tensors: tuple, outputs: tuple) -> tuple:
    """The backward op's cotangents of (y, W1, W2, S1, S2 final, W1, W2 anchor): zeros for unused
    outputs, empty momenta without momentum."""
    q, w1, w2, s1 = tensors[0], tensors[11], tensors[12], tensors[13]
    likes = (w1.new_empty(q.shape), w1, w2, w1, w2, w1, w2)
    has_mom = s1 is not None
    return tuple(
        w1.new_zeros(0)
        if i in (3, 4) and not has_mom
        else torch.zeros_like(like)
        if t is None
        else t.contiguous()
        for i, (t, like) in enumerate(zip(outputs, likes))
    )


def _input_grads(ctx, grads: list) -> list:
    """The backward op's gradients as autograd wants them: ``None`` for absent inputs and for the
    momentum coefficients' empty placeholders."""
    grads = [None if absent else g for g, absent in zip(grads, ctx.absent)]
    if ctx.absent[13]:  # no momentum: f, m_end, s_coef are empty placeholders
        grads[7] = grads[9] = grads[10] = None
    return grads


def _backward(ctx, *cotangents):
    saved = ctx.saved_tensors
    tensors, ckpt = saved[:_TENSOR_INPUTS], saved[_TENSOR_INPUTS:]
    grads = titans_mlp_bwd(*tensors, *ckpt, *_cotangents(ctx, tensors, cotangents[:7]), *ctx.config)
    return (
        *_input_grads(ctx, grads),
        None,
        None,
        *(None,) * len(ctx.config),
    )  # none for cu_seqlens, tile_offsets


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


def _tile(chunk_size: int, state: int, prefix: int = 0) -> int | None:
    """The tile of a chunk: the chunk itself, or its largest divisor in 8..``MAX_TILE``, whose padded
    tile (with ``prefix`` more key rows: the Omega window's reach) fits ``state`` (padded D·Dh) on
    chip; ``None`` if there is none."""
    fits = [
        t
        for t in range(min(chunk_size, MAX_TILE), 0, -1)
        if chunk_size % t == 0
        and (t >= 8 or t == chunk_size)
        and state <= MAX_STATE_FOR_TILE.get(_block(t + prefix), 0)
    ]
    return fits[0] if fits else None


def on_chip_state_too_large(d_in: int, d_hidden: int, chunk_size: int | None, prefix: int = 0) -> bool:
    """Whether no tile of this chunk size (``None``: of any) keeps the state on chip (both widths padded
    to powers of two >= 16: the padded state is what occupies the chip), so that the wide-state kernels
    (:mod:`memnets.kernels.titans_mlp_wide_triton`) run instead."""
    state = _block(d_in) * _block(d_hidden)
    if chunk_size is None:
        return state > max(MAX_STATE_FOR_TILE.values())
    return chunk_size < 1 or _tile(chunk_size, state, prefix) is None


def supports(
    arch: MemoryMLP,
    bias: object = None,
    chunk_size: int | None = None,
    window: int = 1,
    no_wide: str | None = None,
) -> str | None:
    """``None`` when the kernels cover this memory, bias, chunk size and Omega window, else the reason
    they do not. States too large for the chip run the wide-state kernels (the plain chunked form only:
    not the Omega window, chunk sizes up to ``MAX_TILE``) unless ``no_wide`` says why they may not
    run here (chunk-start reads, packed sequences, ``backend="auto"`` while ``WIDE_IN_AUTO`` is off)."""
    if type(arch) not in (MemoryMLP, FeatureMemoryMLP):
        return f"memory {type(arch).__name__} (the MLP Triton kernel covers the chain MLP memory)"
    if arch.shapes[0][0] != arch.dim:
        return (
            f"key width {arch.shapes[0][0]} != value width {arch.dim} (feature maps of degree > 1: the MLP "
            "Triton kernel needs them equal)"
        )
    if window > 1 and _bias_config(bias) is not None and _bias_config(bias)[0] in (HUBER_NORM, HUBER_COORD):  # type: ignore[index]
        return f"attentional bias {bias!r} with an Omega window (per-token thresholds of the window's rows)"
    if arch.depth != 2:
        return f"memory depth {arch.depth} (the MLP Triton kernel covers depth 2)"
    if arch.activation not in ACTIVATIONS:
        return f"activation {arch.activation!r} (the MLP Triton kernel covers {list(ACTIVATIONS)})"
    if _bias_config(bias) is None:
        return f"attentional bias {bias!r} (the MLP Triton kernel covers L2Bias, LpBias and HuberBias)"
    if arch.init_weights[0].dtype != torch.float32:
        return f"memory dtype {arch.init_weights[0].dtype} (the MLP Triton kernel runs in float32)"
    d_in, d_hidden = arch.shapes[0]
    if not on_chip_state_too_large(d_in, d_hidden, chunk_size, window - 1):
        return None
    if no_wide is None and window == 1 and (chunk_size is None or chunk_size <= MAX_TILE):
        from .titans_mlp_wide_triton import supports_wide  # it imports this module

        return supports_wide(d_in, chunk_size, None)
    if no_wide is not None:
        note = f"; the wide-state kernels do not run {no_wide}"
    elif window > 1:
        note = "; the wide-state kernels have no Omega window"
    else:
        note = f"; the wide-state kernels cover chunk sizes up to {MAX_TILE}"
    # (D = 8, hidden 128 at chunk 64 passed an unpadded check and needs 232 KB in the backward)
    state = _block(d_in) * _block(d_hidden)
    largest = max(MAX_STATE_FOR_TILE.values())
    if state > largest:
        return (
            f"head dim {d_in} with hidden width {d_hidden} (the MLP Triton kernel keeps the whole state "
            f"on chip and covers head dim x hidden <= {largest}, both padded to powers of two >= 16{note})"
        )
    if chunk_size is not None and (chunk_size < 1 or _tile(chunk_size, state, window - 1) is None):
        tiles = ", ".join(f"{t} rows: D x hidden <= {s}" for t, s in MAX_STATE_FOR_TILE.items())
        reach = f" and window {window} ({window - 1} more key rows per tile)" if window > 1 else ""
        return (
            f"chunk_size {chunk_size}{reach} with head dim {d_in} and hidden width {d_hidden} (a chunk runs "
            f"in tiles of a divisor of it in 8..{MAX_TILE} (or the whole chunk if shorter) whose padded "
            f"tile fits the GPU's shared memory: {tiles}{note})"
        )
    return None


def _check_dot_precision(name: str, dot_precision: str) -> None:
    if dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"{name}: dot_precision={dot_precision!r} is not one of {list(DOT_PRECISIONS)}")


def _check_bias_params(name: str, kind: int, bias: object, bias_params: Tensor | None, q: Tensor) -> None:
    if kind in (HUBER_NORM, HUBER_COORD):
        want = tuple(q.shape[:3]) if kind == HUBER_NORM else tuple(q.shape)
        if bias_params is None or tuple(bias_params.shape) != want:
            got = None if bias_params is None else tuple(bias_params.shape)
            raise ValueError(f"{name}: {bias!r} needs bias_params of shape {list(want)}, got {got}")


def _run(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
    state: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    *,
    chunk_size: int,
    bias: object,
    bias_params: Tensor | None,
    read_start: bool,
    checkpoint_every: int | None,
    window: int = 1,
    win_gate: Tensor | None = None,
    lengths: list[int] | None = None,
    hidden_block: int | None = None,
    dot_precision: str = "tf32x3",
) -> tuple[Tensor, MemoryState]:
    """The kernels from a chunk boundary: tiles, coefficients, launch; returns y and the state. With an
    Omega ``window`` > 1, ``k`` and ``v`` lead with the carried window's rows (``[B, P0 + T, H, D]``).
    With ``lengths`` (packed sequences, B = 1) every sequence's tiles start at its first token and the
    state holds one entry per sequence (the returned offset and anchor are then per sequence only in
    :func:`titans_mlp_chunked`'s list)."""
    B, T, H, D = q.shape
    w1, w2, s1, s2 = state
    if T == 0:
        return q.new_zeros(q.shape), MemoryState((w1, w2), None if s1 is None else (s1, s2))  # type: ignore[arg-type]
    w1, w2 = w1.float().contiguous(), w2.float().contiguous()
    if s1 is not None:
        s1, s2 = s1.float().contiguous(), s2.float().contiguous()  # type: ignore[union-attr]
    P = window - 1
    wide = hidden_block is not None or on_chip_state_too_large(D, w1.shape[-1], chunk_size, P)
    # the wide-state kernels walk whole chunks of <= MAX_TILE tokens (supports() checked)
    L = chunk_size if wide else _tile(chunk_size, _block(D) * _block(w1.shape[-1]), P)
    assert L is not None and not (wide and (P or read_start or lengths))
    seq_lengths = lengths or [T]
    bounds, offsets, index = chunk_layout(seq_lengths, L, q.device)  # tiles of L tokens
    NT = index.shape[0]  # tiles per coefficient row
    tiles = [triton.cdiv(n, L) for n in seq_lengths]  # on the host: no device-to-host copy
    n_chunks = max(triton.cdiv(n, chunk_size) for n in seq_lengths)
    every = checkpoint_every or math.isqrt(max(n_chunks, 1) - 1) + 1  # ⌈√chunks⌉: ≈ one segment's states
    kind, p, eps, sharp = _bias_config(bias)  # type: ignore[misc]
    packing = (bounds, offsets) if lengths else (None, None)

    with torch.autocast(q.device.type, enabled=False):

        def gate(x: Tensor, log: bool) -> Tensor:  # [B, T, H] -> [B, H, NT, L]
            return tile_gate(x.transpose(1, 2), index, log)

        c = chunk_coefficients(
            gate(lr, False),
            None if keep is None else gate(keep, True),
            None if mom is None else gate(mom, True),
        )
        G, s_coef = c.G, c.s_coef
        if P:
            # the Omega window: G -> G·Γ over each tile's P + L key rows (memnets.memory.omega)
            gam = None
            if win_gate is not None:
                gam = F.pad(win_gate.float().transpose(1, 2), (0, 0, 0, 1))[:, :, index]
                gam = gam.reshape(B, H * NT, L, window)
            band = window_band(gam, P, L, window, G)
            band = band if gam is None else band.reshape(B, H, NT, L, P + L)
            G = G @ band
            s_coef = None if s_coef is None else (s_coef[..., None, :] @ band)[..., 0, :]
        dtype = q.dtype
        bp = None if kind in (L2, LP) else bias_params.float().contiguous()  # type: ignore[union-attr]
        ln_w = ln_b = None
        if arch.layer_norm:
            ln_w, ln_b = arch.norm_weight.float().contiguous(), arch.norm_bias.float().contiguous()
        dummy = c.beta.new_zeros(0)
        tensors = (
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            bp,
            ln_w,
            ln_b,
            c.beta.contiguous(),
            dummy if c.f is None else c.f.contiguous(),
            G.contiguous(),
            dummy if c.m_end is None else c.m_end.contiguous(),
            dummy if s_coef is None else s_coef.contiguous(),
            w1,
            w2,
            s1,
            s2,
        )
        config = (L, ACTIVATIONS[arch.activation], kind, p, eps, sharp, float(arch.eps), arch.residual)
        dot = DOT_PRECISIONS[dot_precision]
        if wide:
            from .titans_mlp_wide_triton import DEFAULT_HIDDEN_BLOCK, titans_mlp_wide_fwd

            block = DEFAULT_HIDDEN_BLOCK if hidden_block is None else hidden_block
            y, w1f, w2f, s1f, s2f, w1a, w2a = titans_mlp_wide_fwd(*tensors, *config, block, dot)
        else:
            tiles_per_chunk = chunk_size // L
            y, w1f, w2f, s1f, s2f, w1a, w2a, *_ = titans_mlp_fwd(
                *tensors,
                *packing,
                *config,
                tiles_per_chunk,
                read_start,
                every * tiles_per_chunk,
                P,
                max(tiles),
                dot,
            )
        if arch.residual:
            y = y + q.float()
        y = y.to(dtype)
    offset = T % chunk_size
    keep_anchor = offset or lengths  # packed: the caller picks each sequence's
    out = MemoryState(
        (w1f, w2f), None if s1 is None else (s1f, s2f), (w1a, w2a) if keep_anchor else None, offset
    )
    return y, out


def _start(arch: MemoryMLP, B: int, state: MemoryState | None, momentum: bool) -> tuple:
    if state is None:
        w1, w2 = (w[None].expand(B, *w.shape) for w in arch.init_weights)
        return (w1, w2, torch.zeros_like(w1), torch.zeros_like(w2)) if momentum else (w1, w2, None, None)
    s1, s2 = (None, None) if state.momentum is None else state.momentum
    return (*state.weights, s1, s2)


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
    checkpoint_every: int | None = None,
    dot_precision: str = "tf32x3",
    cu_seqlens: Tensor | None = None,
    hidden_block: int | None = None,
) -> tuple[Tensor, MemoryState | list[MemoryState]]:
    """Drop-in for ``memory_chunked(arch, q, k, v, lr, mom, keep, state, chunk_size=chunk_size,
    bias=bias, bias_params=bias_params)`` for a depth-2 ``arch`` (see :func:`supports`). Same shapes and
    state: ``q, k, v [B, T, H, D]``, gates ``[B, T, H]``; returns ``y`` in ``q``'s dtype and the
    :class:`MemoryState` after the last token (float32). ``checkpoint_every``: chunks between the
    backward's saved states (default ⌈√chunks⌉).

    ``cu_seqlens`` (``[N + 1]`` offsets, B = 1) packs N independent sequences, all in one launch: each
    starts from its own state (``state`` holds ``[N, H, ...]`` weights and momenta at a chunk boundary;
    default the learned initial weights) and its chunks restart at its first token, so the result is
    this function run on every sequence alone. The state returned is then the list of the N sequences'
    final states (each ``[1, H, ...]``, continuing its sequence exactly).

    ``hidden_block``: run the wide-state kernels (:mod:`memnets.kernels.titans_mlp_wide_triton`) with
    the hidden width in blocks of this many columns; ``None``: they run, with their default block,
    only where the state does not fit on chip (:func:`on_chip_state_too_large`).

    ``dot_precision`` (``DOT_PRECISIONS``): the matmuls' operands. "tf32x3" (default) keeps float32
    accuracy; "tf32", "float16" and "bfloat16" round the operands (the state included, accumulation
    stays float32) for 3x / 6x the tensor-core rate on a GPU. Float16 is tested here against float16's
    tolerance; tf32 and bfloat16 only on a GPU (the interpreter computes tf32 in float32 and
    mishandles bfloat16 dots)."""
    name = "titans_mlp_chunked"
    _check_dot_precision(name, dot_precision)
    reason = supports(arch, bias, chunk_size, no_wide=None if cu_seqlens is None else "packed sequences")
    if reason is None and hidden_block is not None:
        from .titans_mlp_wide_triton import supports_wide

        reason = "packed sequences in the wide-state kernels" if cu_seqlens is not None else None
        reason = reason or supports_wide(arch.shapes[0][0], chunk_size, hidden_block)
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size, name)
    _check_bias_params(name, _bias_config(bias)[0], bias, bias_params, q)  # type: ignore[index]
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"{name}: checkpoint_every must be >= 1 (chunks) or None, got {checkpoint_every}")
    lengths = None if cu_seqlens is None else sequence_lengths(name, q, cu_seqlens)
    if state is not None and state.offset > 0:
        if lengths is not None:
            raise ValueError(
                f"{name}: with cu_seqlens the state must be at a chunk boundary, got offset {state.offset}"
            )
        return finish_chunk_then(
            functools.partial(
                titans_mlp_chunked,
                checkpoint_every=checkpoint_every,
                hidden_block=hidden_block,
                dot_precision=dot_precision,
            ),
            arch, q, k, v, lr, mom, keep, state,
            chunk_size=chunk_size, bias=bias, bias_params=bias_params,
        )  # fmt: skip
    start = _start(arch, q.shape[0] if lengths is None else len(lengths), state, mom is not None)
    if lengths is not None and start[0].shape[0] != len(lengths):
        raise ValueError(
            f"{name}: the state must hold one entry per packed sequence ({len(lengths)}), got "
            f"weights of shape {tuple(start[0].shape)}"
        )
    y, out = _run(
        arch, q, k, v, lr, mom, keep, start,
        chunk_size=chunk_size, bias=bias, bias_params=bias_params, read_start=False,
        checkpoint_every=checkpoint_every, lengths=lengths, hidden_block=hidden_block,
        dot_precision=dot_precision,
    )  # fmt: skip
    if lengths is None:
        return y, out
    return y, sequence_states(out.weights, out.momentum, out.anchor, lengths, chunk_size)  # type: ignore[arg-type]


def chunk_read_mlp(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 2048,
    bias: object = None,
    checkpoint_every: int | None = None,
    dot_precision: str = "tf32x3",
) -> tuple[Tensor, MemoryState]:
    """Drop-in for :func:`memnets.memory.chunk_read.chunk_read_memory` (TNT's global memory: every token
    reads the weights at its chunk's start, plain gradient descent) for a depth-2 ``arch`` with an L2
    or ℓ_p bias (see :func:`supports`). A started chunk (decoding) is finished in PyTorch."""
    name = "chunk_read_mlp"
    _check_dot_precision(name, dot_precision)
    reason = supports(arch, bias, chunk_size, no_wide="chunk-start reads")
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    if _bias_config(bias)[0] in (HUBER_NORM, HUBER_COORD):  # type: ignore[index]
        raise ValueError(
            f"{name}: {bias!r} needs per-token parameters, which chunk_read_memory does not take"
        )
    check_read_inputs(arch, q, k, v, lr, state, chunk_size, name)
    y0 = None
    if state is not None and state.offset > 0:
        n = min(q.shape[1], chunk_size - state.offset)
        y0, state = chunk_read_memory(
            arch,
            q[:, :n],
            k[:, :n],
            v[:, :n],
            lr[:, :n],
            state,
            chunk_size=chunk_size,
            bias=bias,  # type: ignore[arg-type]
        )
        q, k, v, lr = q[:, n:], k[:, n:], v[:, n:], lr[:, n:]
        if q.shape[1] == 0:
            return y0, state
    y, out = _run(
        arch, q, k, v, lr, None, None, _start(arch, q.shape[0], state, False),
        chunk_size=chunk_size, bias=bias, bias_params=None, read_start=True,
        checkpoint_every=checkpoint_every, dot_precision=dot_precision,
    )  # fmt: skip
    return (y if y0 is None else torch.cat([y0, y], 1)), out


def omega_mlp_chunked(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    win_gate: Tensor | None = None,
    state: OmegaState | None = None,
    *,
    window: int = 1,
    chunk_size: int = 16,
    bias: object = None,
    checkpoint_every: int | None = None,
    dot_precision: str = "tf32x3",
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, OmegaState | list[OmegaState]]:
    """Drop-in for :func:`memnets.memory.omega.omega_chunked` without Muon (OmegaNet, ATLAS Eq. 9-10)
    for a depth-2 chain MLP memory with equal key and value widths (see :func:`supports` with
    ``window``): each tile's key path runs over its tokens and the ``window − 1`` before them (the
    carried window's rows first) and G becomes G·Γ with the band Γ of the window gates. A started
    chunk (decoding) is finished in PyTorch.

    ``cu_seqlens`` packs N sequences (B = 1) as in :func:`titans_mlp_chunked`: each runs from its own
    state (``state`` at a chunk boundary with ``[N, ...]`` weights and ``[N, P0, H, D]`` carried window
    rows; default the initial weights and no carried rows), its window never reaching into the
    sequence before it; the state returned is then the list of the N sequences' final states."""
    name = "omega_mlp_chunked"
    _check_dot_precision(name, dot_precision)
    reason = supports(arch, bias, chunk_size, window)
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    check_inputs(arch, q, k, v, lr, mom, keep, None if state is None else state.memory, chunk_size, name)
    B, T, H, _ = q.shape
    if win_gate is not None and tuple(win_gate.shape) != (B, T, H, window):
        raise ValueError(f"{name}: win_gate must have shape {[B, T, H, window]}, got {tuple(win_gate.shape)}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"{name}: checkpoint_every must be >= 1 (chunks) or None, got {checkpoint_every}")
    if state is not None and state.direction is not None:
        raise ValueError(f"{name}: the state has a Muon direction; the kernel covers the rule without Muon")
    omega = dict(window=window, chunk_size=chunk_size, bias=bias)
    lengths = None if cu_seqlens is None else sequence_lengths(name, q, cu_seqlens)
    y0 = None
    if state is not None and state.memory.offset > 0:
        if lengths is not None:
            raise ValueError(
                f"{name}: with cu_seqlens the state must be at a chunk boundary, got offset {state.memory.offset}"
            )
        n = min(T, chunk_size - state.memory.offset)

        def cut(x: Tensor | None, s: slice) -> Tensor | None:
            return None if x is None else x[:, s]

        head, rest = slice(0, n), slice(n, None)
        y0, state = omega_chunked(
            arch, q[:, head], k[:, head], v[:, head], lr[:, head], cut(mom, head), cut(keep, head),
            cut(win_gate, head), state, **omega,  # type: ignore[arg-type]
        )  # fmt: skip
        if n == T:
            return y0, state
        q, k, v, lr, mom, keep, win_gate = (cut(x, rest) for x in (q, k, v, lr, mom, keep, win_gate))  # type: ignore[assignment]
    seq_lengths = [q.shape[1]] if lengths is None else lengths  # (after a finished chunk's head)
    bounds = list(itertools.accumulate([0, *seq_lengths]))
    N = B if lengths is None else len(lengths)
    start = _start(arch, N, None if state is None else state.memory, mom is not None)
    if lengths is not None and start[0].shape[0] != len(lengths):
        raise ValueError(
            f"{name}: the state must hold one entry per packed sequence ({len(lengths)}), got "
            f"weights of shape {tuple(start[0].shape)}"
        )
    if state is None:
        kx, vx = k, v
    else:
        # in float32, the memory's dtype, in which the carried rows are kept; packed, each sequence's
        # carried rows lead its own rows
        pieces = [(slice(None), slice(None))]  # (the state's entries, their tokens)
        if lengths is not None:
            pieces = [(slice(n, n + 1), slice(bounds[n], bounds[n + 1])) for n in range(N)]
        kx, vx = (
            torch.cat([torch.cat([w[n].float(), x[:, t].float()], 1) for n, t in pieces], 1)
            for w, x in ((state.window_k, k), (state.window_v, v))
        )
    y, mem = _run(
        arch, q, kx, vx, lr, mom, keep, start, chunk_size=chunk_size, bias=bias, bias_params=None,
        read_start=False, checkpoint_every=checkpoint_every, window=window, win_gate=win_gate,
        lengths=lengths, dot_precision=dot_precision,
    )  # fmt: skip
    y = y if y0 is None else torch.cat([y0, y], 1)
    P0 = (kx.shape[1] - bounds[-1]) // len(seq_lengths)

    def window_rows(x: Tensor, n: int) -> Tensor:  # the last window − 1 of sequence n's key rows
        first, end = bounds[n] + n * P0, bounds[n + 1] + (n + 1) * P0
        return x[:, max(first, end - (window - 1)) : end].float()

    if lengths is None:
        return y, OmegaState(mem, window_rows(kx, 0), window_rows(vx, 0))
    mems = sequence_states(mem.weights, mem.momentum, mem.anchor, lengths, chunk_size)  # type: ignore[arg-type]
    return y, [OmegaState(m, window_rows(kx, n), window_rows(vx, n)) for n, m in enumerate(mems)]
