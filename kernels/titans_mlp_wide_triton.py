"""Wide-state variant of :mod:`memnets.kernels.titans_mlp_triton`: the deep (two-layer MLP) memory's
chunked update with the state tiled over the hidden width, for states too large to keep on chip
(Titans at head dim 64: D = 64, Dh = 256).

Same semantics, custom-op signature and outputs as ``memnets::titans_mlp_fwd`` / ``_bwd`` (see that
module for the equations, the coefficients β, f, G, m_end, s_coef and the biases), plus one argument,
``hidden_block`` (BHB, a power of two >= 16): the hidden width Dh is split into NB = ⌈Dh / BHB⌉
blocks. Layer-1 columns and layer-2 rows split cleanly per block j (W1_j ``[D, BHB]``, W2_j
``[BHB, D]``, likewise S1_j, S2_j); only these sums cross blocks (spec memory-models.md 7.3)::

    key path   Z2 = Σ_j σ(K W1_j) W2_j                      (then R, ℓ'(R), the LayerNorm backward: Δ)
    read       Ẑ2 = Σ_j [β Â_j W2_j + f Â_j S2_j] − ((Σ_j Â_j A_jᵀ) ⊙ G) Δ
    backward   the cotangents of Δ, of Q Kᵀ (through G), of q and k, and the per-token coefficient
               gradients (β, f, G's last row, s_coef, m_end)

Grid and state: still one program per (batch, head), chunks sequential inside, but the state lives in
global memory (float32 working buffers: the final-state outputs, 4 · D · Dh · 4 bytes per program with
momentum, 256 KB at D = 64, Dh = 256, so B · H <= ~190 programs keep it in an H100's 50 MB L2) and
each chunk loops over the hidden blocks; only one block of each matrix, the
chunk's ``[L, D]`` rows and ``[L, L]`` tiles are on chip at a time. A program re-reads (and in the
backward re-writes) its state blocks; a write followed by a read of the same global buffer by the same
program is separated by ``tl.debug_barrier()`` (the threads that write an element are not those that
read it back), and so is a read followed by an in-place overwrite (the sm_90 PTX loads with plain
``ld.global``, not the non-coherent ``.nc`` path, so ``bar.sync`` orders them).

Forward, per chunk (``_wide_forward_kernel``):

1. key pass over j: Z2 += σ(K W1_j) W2_j; then Δ (bias derivative, LayerNorm backward) on the whole
   ``[L, D]`` row block;
2. update pass over j: recompute Z1_j, A_j, δ1_j = (Δ W2_jᵀ) ⊙ σ'(Z1_j), the read's Ẑ1_j and Â_j,
   accumulate Ẑ2's block terms and Σ_j Â_j A_jᵀ, then overwrite block j of W1, W2, S1, S2 with its
   chunk-end value (block j's old values are not needed by any later block);
3. finish Ẑ2 (the Δ term), the LayerNorm, store y.

With ``STORE`` (the backward's recompute) pass 2 also writes each block's chunk-start value (4 D·Dh
floats) and skips the reads. Traffic per chunk and program, with momentum: 6 D·Dh state floats read (2
in pass 1, 4 in pass 2) and 4 D·Dh written (without momentum 4 and 2), plus the chunk's q, k, v rows;
the whole-state kernel reads and writes the state once per call.

Backward, chunks in reverse (``_wide_backward_kernel``), state cotangents (dW1, dW2, dS1, dS2) in the
gradient outputs used as working buffers, chunk-start states from the STORE pass:

1. key pass (as forward 1): Z2 → Δ, ℓ'(R), the LayerNorm statistics;
2. read pass over j: Â_j from the recomputed δ1_j; accumulate Â W2, Â S2 and Â Aᵀ; then (whole rows)
   the read's LayerNorm backward, dβ, df of layer 2, dG and the cotangent of Δ from Ẑ2's Δ term;
3. gradient pass over j: layer-1 read backward (dq, dk via dQKᵀ accumulated over j, dδ1_j), the
   chunk-end update's terms (cotangents of δ1_j, Δ, K, A_j, β_L, f_L, G's last row, s_coef, m_end),
   δ1_j's second-order terms (dΔ += (dδ1_j ⊙ σ'(Z1_j)) W2_j); block j's new dS1, dS2, the partial
   dW1, dW2 (all but the Z2 path) written in place, and the partial cotangent of Z1_j
   ``[L, BHB]`` to a scratch buffer;
4. (whole rows) the cotangent of Δ through the LayerNorm (second order) and ℓ'' to R and Z2;
5. finishing pass over j: dZ1_j = scratch_j + (dZ2 W2_jᵀ) ⊙ σ'(Z1_j), dW2_j += A_jᵀ dZ2,
   dW1_j += Kᵀ dZ1_j, dk += dZ1_j W1_jᵀ.

Traffic per chunk and program, with momentum: 12 D·Dh floats of the chunk-start state read (2 in
passes 1 and 5, 4 in passes 2 and 3), 6 D·Dh cotangent floats read and 6 D·Dh written (4 in pass 3,
2 in pass 5), L·Dh scratch floats written and read once; plus the STORE recompute (a forward that
writes 4 D·Dh per chunk).

Not covered: everything :mod:`memnets.kernels.titans_mlp_triton` does not cover (its ``supports``
names those: depth other than 2, the KL bias, retention and chunk-end maps, float64 memories, chunk
sizes above 64), and head dims beyond ``MAX_WIDE_DIM_FOR_TILE`` (the chunk's rows exceed the shared
memory). Never run on a GPU: tested in the Triton interpreter (which runs a program's block ops one
after the other, so it does not exercise the barriers' cross-thread ordering), untimed, and compiled
ahead of time for sm_90 with ``scripts/check_kernels_compile.py`` (num_warps=4, num_stages=1, hidden
blocks of 32, GELU, L2 bias, LayerNorm, residual, momentum). Shared memory (forward / the backward's
STORE recompute / backward) and register spills per thread (forward / backward)::

    D    Dh    L=16               L=32               L=64
    16   128   4 / 8 / 6 KB
    64   256   21 / 32 / 28 KB    44 / 56 / 52 KB    112 / 144 / 112 KB
    128  512   41 / 64 / 52 KB    76 / 112 / 96 KB   192 / 288 / 192 KB (over)
    spills (64, 256): 4.0 / 4.7 KB (L=16), 4.8 / 7.8 KB (L=32), 4.0 / 9.5 KB (L=64);
           (128, 512): 8.2 / 8.7 KB (L=16), 9.8 / 13.7 KB (L=32)

Every shape spills (255 registers per thread; 8 warps spill about as much), the whole-state kernel
at (64, 256, 16) spills 21 KB in the backward. An H100 has 228 KB per SM: ``MAX_WIDE_DIM_FOR_TILE``
admits D <= 128 for chunk tiles of 16 and 32 rows and D <= 64 for 64 rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .titans_mlp_triton import (
    _act,
    _act_grad,
    _act_grad2,
    _block,
    _common_meta,
    _cotangents,
    _delta_backward,
    _dot,
    _fake_grads,
    _fake_outputs,
    _input_grads,
    _key_delta,
    _ln,
    _read_ln_bwd,
    _rows,
    _save_inputs,
)

# hidden columns per block: 16 spills a little less than 32 (D = 64, Dh = 256, chunk 16: 2.6 / 3.8 KB
# per thread forward / backward against 4.0 / 4.8 KB) but runs its matmuls at the smallest MMA width;
# 64 spills 5.8 / 6.5 KB (untimed: no GPU was at hand)
DEFAULT_HIDDEN_BLOCK = 32
NUM_WARPS = 4  # 8 warps spill about as much (the chunk's [L, D] rows and [L, L] tiles stay live)
# largest head dim (padded) per padded chunk tile (rows) whose kernels fit an H100's 228 KB of shared
# memory (sm_90 compile, see the module docstring): the chunk's [L, D] rows and [L, L] tiles stay on chip
MAX_WIDE_DIM_FOR_TILE = {16: 128, 32: 128, 64: 64}


def supports_wide(d_in: int, chunk_size: int | None, hidden_block: int | None) -> str | None:
    """``None`` when the wide-state kernels cover head dim ``d_in`` (any hidden width) at this chunk size
    (1..64; ``None``: at some chunk size) with this hidden block size, else the reason."""
    if hidden_block is not None and (hidden_block < 16 or hidden_block & (hidden_block - 1)):
        return f"hidden_block {hidden_block} (the wide-state MLP kernel takes powers of two >= 16)"
    largest = max(MAX_WIDE_DIM_FOR_TILE.values())
    if _block(d_in) > largest:
        return (
            f"head dim {d_in} (the wide-state MLP Triton kernel covers head dims <= {largest}: the "
            "chunk's rows stay on chip)"
        )
    if chunk_size is not None and _block(d_in) > MAX_WIDE_DIM_FOR_TILE[_block(chunk_size)]:
        return (
            f"head dim {d_in} at chunk_size {chunk_size} (the wide-state MLP Triton kernel exceeds the "
            f"GPU's shared memory; use chunk_size <= 32 or head dim <= "
            f"{MAX_WIDE_DIM_FOR_TILE[_block(chunk_size)]})"
        )
    return None


# -------------------------------------------------------------------------------------------------
# blocks of the state


@triton.jit
def _w1_block(j, D: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BHB: tl.constexpr):
    """Offsets and mask of hidden block j of a ``[D, Dh]`` matrix (W1, S1): a ``[BD, BHB]`` tile."""
    r = tl.arange(0, BD)
    c = j * BHB + tl.arange(0, BHB)
    return r[:, None] * DH + c[None, :], (r < D)[:, None] & (c < DH)[None, :]


@triton.jit
def _w2_block(j, D: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BHB: tl.constexpr):
    """Offsets and mask of hidden block j of a ``[Dh, D]`` matrix (W2, S2): a ``[BHB, BD]`` tile."""
    r = j * BHB + tl.arange(0, BHB)
    c = tl.arange(0, BD)
    return r[:, None] * D + c[None, :], (r < DH)[:, None] & (c < D)[None, :]


@triton.jit
def _key_z2(
    b_k,
    w1,
    w2,
    base,
    D: tl.constexpr,
    DH: tl.constexpr,
    BL: tl.constexpr,
    BD: tl.constexpr,
    BHB: tl.constexpr,
    NB: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
):
    """Z2 = Σ_j σ(K W1_j) W2_j at the state stored from ``base``."""
    Z2 = tl.zeros([BL, BD], dtype=tl.float32)
    for j in range(NB):
        o1, m1 = _w1_block(j, D, DH, BD, BHB)
        o2, m2 = _w2_block(j, D, DH, BD, BHB)
        W1 = tl.load(w1 + base + o1, mask=m1, other=0.0)
        W2 = tl.load(w2 + base + o2, mask=m2, other=0.0)
        Z2 += _dot(_act(_dot(b_k, W1, DOT), ACT), W2, DOT)
    return Z2


# -------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _wide_forward_kernel(
    q,
    k,
    v,
    bp,
    beta,
    f,
    G,
    m_end,
    s_coef,
    ln_w,
    ln_b,
    y,
    w1,
    w2,
    s1,
    s2,
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
    BHB: tl.constexpr,
    NB: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
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
    base = bh * n  # this program's state in w1, w2, s1, s2 (updated in place)
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
        offs, mask, valid, row_idx = _rows(b, c * L, h, T, H, D, L, BL, BD)
        b_k = tl.load(k + offs, mask=mask, other=0.0).to(tl.float32)
        b_v = tl.load(v + offs, mask=mask, other=0.0).to(tl.float32)
        delta = tl.zeros([BL], dtype=tl.float32)
        if BIAS == 2:
            delta = tl.load(bp + row_idx, mask=valid, other=0.0).to(tl.float32)
        if BIAS == 3:
            delta = tl.load(bp + offs, mask=mask, other=0.0).to(tl.float32)
        # pass 1: the key path's Z2 at the chunk-start weights, then Δ on whole rows
        Z2 = _key_z2(b_k, w1, w2, base, D, DH, BL, BD, BHB, NB, ACT, DOT)
        dd, _, _, _, _ = _key_delta(
            Z2, b_k, b_v, delta, gamma, shift, mask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )
        last = tl.minimum(T - c * L, L) - 1  # the chunk's last token (the tail chunk is short)
        g_last = tl.load(G + cc * L * L + last * L + li, mask=lmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)
        if HAS_MOM:
            f_last = tl.load(f + cc * L + last)
            b_s = tl.load(s_coef + cc * L + li, mask=lmask, other=0.0)
            b_m = tl.load(m_end + cc)
        if not STORE:
            b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
            b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
            b_G = tl.load(
                G + cc * L * L + li[:, None] * L + li[None, :],
                mask=lmask[:, None] & lmask[None, :],
                other=0.0,
            )
            qkG = _dot(b_q, tl.trans(b_k), DOT) * b_G
            if HAS_MOM:
                b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
        z2 = tl.zeros([BL, BD], dtype=tl.float32)  # the read's Ẑ2 without its Δ term
        aa = tl.zeros([BL, BL], dtype=tl.float32)  # Σ_j Â_j A_jᵀ
        # pass 2: per hidden block, the reads' share and the chunk-end update
        for j in range(NB):
            o1, m1 = _w1_block(j, D, DH, BD, BHB)
            o2, m2 = _w2_block(j, D, DH, BD, BHB)
            W1 = tl.load(w1 + base + o1, mask=m1, other=0.0)
            W2 = tl.load(w2 + base + o2, mask=m2, other=0.0)
            Z1 = _dot(b_k, W1, DOT)
            A = _act(Z1, ACT)
            d1 = _dot(dd, tl.trans(W2), DOT) * _act_grad(Z1, ACT)  # δ1_j
            W1_new = beta_last * W1 - _dot(tl.trans(b_k), g_last[:, None] * d1, DOT)
            W2_new = beta_last * W2 - _dot(tl.trans(A), g_last[:, None] * dd, DOT)
            if HAS_MOM:
                S1 = tl.load(s1 + base + o1, mask=m1, other=0.0)
                S2 = tl.load(s2 + base + o2, mask=m2, other=0.0)
                W1_new += f_last * S1
                W2_new += f_last * S2
                S1_new = b_m * S1 - _dot(tl.trans(b_k), b_s[:, None] * d1, DOT)
                S2_new = b_m * S2 - _dot(tl.trans(A), b_s[:, None] * dd, DOT)
            if STORE:
                tl.store(w1_chunks + cc * n + o1, W1, mask=m1)
                tl.store(w2_chunks + cc * n + o2, W2, mask=m2)
                if HAS_MOM:
                    tl.store(s1_chunks + cc * n + o1, S1, mask=m1)
                    tl.store(s2_chunks + cc * n + o2, S2, mask=m2)
            else:
                z1 = b_beta[:, None] * _dot(b_q, W1, DOT) - _dot(qkG, d1, DOT)
                if HAS_MOM:
                    z1 += b_f[:, None] * _dot(b_q, S1, DOT)
                a1 = _act(z1, ACT)
                z2 += b_beta[:, None] * _dot(a1, W2, DOT)
                if HAS_MOM:
                    z2 += b_f[:, None] * _dot(a1, S2, DOT)
                aa += _dot(a1, tl.trans(A), DOT)
            if c == NC - 1:
                tl.store(w1_anchor + base + o1, W1, mask=m1)
                tl.store(w2_anchor + base + o2, W2, mask=m2)
            tl.debug_barrier()  # every thread has read block j before it is overwritten
            tl.store(w1 + base + o1, W1_new, mask=m1)
            tl.store(w2 + base + o2, W2_new, mask=m2)
            if HAS_MOM:
                tl.store(s1 + base + o1, S1_new, mask=m1)
                tl.store(s2 + base + o2, S2_new, mask=m2)
        tl.debug_barrier()  # the next chunk's pass 1 reads the updated blocks
        if not STORE:
            z2 -= _dot(aa * b_G, dd, DOT)
            if LN:
                xq, _ = _ln(z2, cmask, D, ln_eps)
                z2 = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, z2.to(y.dtype.element_ty), mask=mask)


# -------------------------------------------------------------------------------------------------
# backward


@triton.jit
def _wide_backward_kernel(
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
    scratch,
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
    BHB: tl.constexpr,
    NB: tl.constexpr,
    ACT: tl.constexpr,
    DOT: tl.constexpr,
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
    base = bh * n  # this program's state cotangents in dw1, dw2, ds1, ds2 (chunk end -> chunk start)
    li = tl.arange(0, BL)
    lmask = li < L
    gmask = lmask[:, None] & lmask[None, :]
    cols = tl.arange(0, BD)
    cmask = cols < D
    # scratch: the partial cotangent of Z1_j [BL, BHB] of each block, passed from pass 3 to pass 5
    sw = NB * BHB
    so = bh * BL * sw + li[:, None] * sw + tl.arange(0, BHB)[None, :]
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
        cb = cc * n  # this chunk's start state in w1_chunks, ...
        last = tl.minimum(T - c * L, L) - 1  # the chunk's last token (the tail chunk is short)
        is_last = li == last
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
        if HAS_MOM:
            b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
            f_last = tl.load(f + cc * L + last)
            b_m = tl.load(m_end + cc)
            b_s = tl.load(s_coef + cc * L + li, mask=lmask, other=0.0)
        qk = _dot(b_q, tl.trans(b_k), DOT)
        qkG = qk * b_G

        # pass 1: the key path
        Z2 = _key_z2(b_k, w1_chunks, w2_chunks, cb, D, DH, BL, BD, BHB, NB, ACT, DOT)
        dd, dout, r, xk, rk = _key_delta(
            Z2, b_k, b_v, delta, gamma, shift, mask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )

        # pass 2: the reads' layer-2 inputs summed over the hidden blocks
        a1w2 = tl.zeros([BL, BD], dtype=tl.float32)
        a1s2 = tl.zeros([BL, BD], dtype=tl.float32)
        aa = tl.zeros([BL, BL], dtype=tl.float32)
        for j in range(NB):
            o1, m1 = _w1_block(j, D, DH, BD, BHB)
            o2, m2 = _w2_block(j, D, DH, BD, BHB)
            W1 = tl.load(w1_chunks + cb + o1, mask=m1, other=0.0)
            W2 = tl.load(w2_chunks + cb + o2, mask=m2, other=0.0)
            Z1 = _dot(b_k, W1, DOT)
            A = _act(Z1, ACT)
            d1 = _dot(dd, tl.trans(W2), DOT) * _act_grad(Z1, ACT)
            z1 = b_beta[:, None] * _dot(b_q, W1, DOT) - _dot(qkG, d1, DOT)
            if HAS_MOM:
                S1 = tl.load(s1_chunks + cb + o1, mask=m1, other=0.0)
                S2 = tl.load(s2_chunks + cb + o2, mask=m2, other=0.0)
                z1 += b_f[:, None] * _dot(b_q, S1, DOT)
            a1 = _act(z1, ACT)
            a1w2 += _dot(a1, W2, DOT)
            aa += _dot(a1, tl.trans(A), DOT)
            if HAS_MOM:
                a1s2 += _dot(a1, S2, DOT)
        if LN:
            # Y = LN(Ẑ2) γ + b: the cotangent through the read's LayerNorm
            z2 = b_beta[:, None] * a1w2 - _dot(aa * b_G, dd, DOT)
            if HAS_MOM:
                z2 += b_f[:, None] * a1s2
            b_dy, dg, db = _read_ln_bwd(z2, b_dy, gamma, cmask, D, ln_eps)
            d_gamma += dg
            d_shift += db
        # Ẑ2's terms on whole rows: β ⊙ (Â W2) [+ f ⊙ (Â S2)] − (Â Aᵀ ⊙ G) Δ
        b_dbeta = tl.sum(b_dy * a1w2, 1)
        dP = -_dot(b_dy, tl.trans(dd), DOT)
        b_dG = dP * aa
        dP = dP * b_G
        d_dd = -_dot(tl.trans(aa * b_G), b_dy, DOT)  # dΔ, completed over the blocks in pass 3
        if HAS_MOM:
            b_df = tl.sum(b_dy * a1s2, 1)
            b_ds = tl.zeros([BL], dtype=tl.float32)
            dm = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)

        # pass 3: per block, the reads' layer 1, the chunk-end update and δ1_j's second-order terms
        dPq = tl.zeros([BL, BL], dtype=tl.float32)  # cotangent of Q Kᵀ ⊙ G, summed over the blocks
        b_dq = tl.zeros([BL, BD], dtype=tl.float32)
        b_dk = tl.zeros([BL, BD], dtype=tl.float32)
        dg_last = tl.zeros([BL], dtype=tl.float32)
        for j in range(NB):
            o1, m1 = _w1_block(j, D, DH, BD, BHB)
            o2, m2 = _w2_block(j, D, DH, BD, BHB)
            W1 = tl.load(w1_chunks + cb + o1, mask=m1, other=0.0)
            W2 = tl.load(w2_chunks + cb + o2, mask=m2, other=0.0)
            cW1 = tl.load(dw1 + base + o1, mask=m1, other=0.0)  # cotangents of the chunk-end state
            cW2 = tl.load(dw2 + base + o2, mask=m2, other=0.0)
            Z1 = _dot(b_k, W1, DOT)
            A = _act(Z1, ACT)
            sg = _act_grad(Z1, ACT)
            E = _dot(dd, tl.trans(W2), DOT)
            d1 = E * sg
            qw1 = _dot(b_q, W1, DOT)
            z1 = b_beta[:, None] * qw1 - _dot(qkG, d1, DOT)
            if HAS_MOM:
                S1 = tl.load(s1_chunks + cb + o1, mask=m1, other=0.0)
                S2 = tl.load(s2_chunks + cb + o2, mask=m2, other=0.0)
                cS1 = tl.load(ds1 + base + o1, mask=m1, other=0.0)
                cS2 = tl.load(ds2 + base + o2, mask=m2, other=0.0)
                qs1 = _dot(b_q, S1, DOT)
                z1 += b_f[:, None] * qs1
            a1 = _act(z1, ACT)
            # layer 2 of the reads, block j
            da1 = b_beta[:, None] * _dot(b_dy, tl.trans(W2), DOT) + _dot(dP, A, DOT)
            dA = _dot(tl.trans(dP), a1, DOT)
            gW2 = _dot(tl.trans(a1), b_beta[:, None] * b_dy, DOT)
            if HAS_MOM:
                da1 += b_f[:, None] * _dot(b_dy, tl.trans(S2), DOT)
            # layer 1 of the reads: Ẑ1_j = β ⊙ (Q W1_j) [+ f ⊙ (Q S1_j)] − (Q Kᵀ ⊙ G) δ1_j
            dz1 = da1 * _act_grad(z1, ACT)
            b_dbeta += tl.sum(dz1 * qw1, 1)
            dPq -= _dot(dz1, tl.trans(d1), DOT)
            d_d1 = -_dot(tl.trans(qkG), dz1, DOT)  # dδ1_j
            b_dq += b_beta[:, None] * _dot(dz1, tl.trans(W1), DOT)
            gW1 = _dot(tl.trans(b_q), b_beta[:, None] * dz1, DOT)
            if HAS_MOM:
                b_df += tl.sum(dz1 * qs1, 1)
                b_dq += b_f[:, None] * _dot(dz1, tl.trans(S1), DOT)
            # chunk end: W' = β_L W [+ f_L S] − Xᵀ (g_last ⊙ δ),  S' = m_end S − Xᵀ (s_coef ⊙ δ)
            kw = _dot(b_k, cW1, DOT)
            aw = _dot(A, cW2, DOT)
            d_d1 -= g_last[:, None] * kw
            d_dd -= g_last[:, None] * aw
            dg_last -= tl.sum(d1 * kw, 1) + tl.sum(dd * aw, 1)
            b_dk -= _dot(g_last[:, None] * d1, tl.trans(cW1), DOT)
            dA -= _dot(g_last[:, None] * dd, tl.trans(cW2), DOT)
            dbeta_last = tl.sum(tl.sum(cW1 * W1, 1), 0) + tl.sum(tl.sum(cW2 * W2, 1), 0)
            b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
            gW1 += beta_last * cW1
            gW2 += beta_last * cW2
            if HAS_MOM:
                df_last = tl.sum(tl.sum(cW1 * S1, 1), 0) + tl.sum(tl.sum(cW2 * S2, 1), 0)
                b_df = tl.where(is_last, b_df + df_last, b_df)
                ks = _dot(b_k, cS1, DOT)
                As = _dot(A, cS2, DOT)
                d_d1 -= b_s[:, None] * ks
                d_dd -= b_s[:, None] * As
                b_ds -= tl.sum(d1 * ks, 1) + tl.sum(dd * As, 1)
                b_dk -= _dot(b_s[:, None] * d1, tl.trans(cS1), DOT)
                dA -= _dot(b_s[:, None] * dd, tl.trans(cS2), DOT)
                dm += tl.sum(tl.sum(cS1 * S1, 1), 0) + tl.sum(tl.sum(cS2 * S2, 1), 0)
                cS1 = f_last * cW1 + b_m * cS1 + _dot(tl.trans(b_q), b_f[:, None] * dz1, DOT)
                cS2 = f_last * cW2 + b_m * cS2 + _dot(tl.trans(a1), b_f[:, None] * b_dy, DOT)
            # δ1_j = (Δ W2_jᵀ) ⊙ σ'(Z1_j): its cotangent reaches Δ, W2_j and Z1_j (second order)
            dE = d_d1 * sg
            dZ1 = d_d1 * E * _act_grad2(Z1, ACT)
            d_dd += _dot(dE, W2, DOT)
            gW2 += _dot(tl.trans(dE), dd, DOT)
            if c == NC - 1:
                gW1 += tl.load(dw1_anchor + base + o1, mask=m1, other=0.0)
                gW2 += tl.load(dw2_anchor + base + o2, mask=m2, other=0.0)
            tl.debug_barrier()  # every thread has read block j's cotangents before they are overwritten
            tl.store(scratch + so + j * BHB, dZ1 + dA * sg)
            tl.store(dw1 + base + o1, gW1, mask=m1)
            tl.store(dw2 + base + o2, gW2, mask=m2)
            if HAS_MOM:
                tl.store(ds1 + base + o1, cS1, mask=m1)
                tl.store(ds2 + base + o2, cS2, mask=m2)
        b_dG += dPq * qk
        dPq = dPq * b_G
        b_dq += _dot(dPq, b_k, DOT)
        b_dk += _dot(tl.trans(dPq), b_q, DOT)
        b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
        if HAS_MOM:
            tl.store(dm_end + cc, dm)
            tl.store(df + cc * L + li, b_df, mask=lmask)
            tl.store(ds_coef + cc * L + li, b_ds, mask=lmask)

        # pass 4 (whole rows): Δ = [LN backward of] ℓ'(R) back to R and Z2
        dZ2, dr, dg, db, b_ddelta = _delta_backward(
            d_dd, dd, dout, r, delta, xk, rk, gamma, mask, cmask, p, eps, sharp, D, BIAS, LN
        )
        if LN:
            d_gamma += dg
            d_shift += db
        if BIAS == 2:
            tl.store(dbp + row_idx, b_ddelta.to(dbp.dtype.element_ty), mask=valid)
        if BIAS == 3:
            tl.store(dbp + offs, b_ddelta.to(dbp.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # pass 3's writes (scratch, dW1, dW2) are read back by other threads

        # pass 5: Z2 = Σ_j A_j W2_j back to W1_j, W2_j and K
        for j in range(NB):
            o1, m1 = _w1_block(j, D, DH, BD, BHB)
            o2, m2 = _w2_block(j, D, DH, BD, BHB)
            W1 = tl.load(w1_chunks + cb + o1, mask=m1, other=0.0)
            W2 = tl.load(w2_chunks + cb + o2, mask=m2, other=0.0)
            Z1 = _dot(b_k, W1, DOT)
            A = _act(Z1, ACT)
            dZ1 = tl.load(scratch + so + j * BHB) + _dot(dZ2, tl.trans(W2), DOT) * _act_grad(Z1, ACT)
            gW1 = tl.load(dw1 + base + o1, mask=m1, other=0.0) + _dot(tl.trans(b_k), dZ1, DOT)
            gW2 = tl.load(dw2 + base + o2, mask=m2, other=0.0) + _dot(tl.trans(A), dZ2, DOT)
            b_dk += _dot(dZ1, tl.trans(W1), DOT)
            tl.debug_barrier()  # every thread has read block j before it is overwritten
            tl.store(dw1 + base + o1, gW1, mask=m1)
            tl.store(dw2 + base + o2, gW2, mask=m2)
        tl.debug_barrier()  # the previous chunk's pass 3 reads these cotangents and rewrites scratch
        tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        if RES:
            b_dk += dr  # M(k) = k + ...: the residual's direct path
        tl.store(dk + offs, b_dk.to(dk.dtype.element_ty), mask=mask)
        tl.store(dv + offs, (-dr).to(dv.dtype.element_ty), mask=mask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        tl.store(dG + cc * L * L + li[:, None] * L + li[None, :], b_dG, mask=gmask)
    if LN:
        tl.store(dln_w + bh * D + cols, d_gamma, mask=cmask)
        tl.store(dln_b + bh * D + cols, d_shift, mask=cmask)


# -------------------------------------------------------------------------------------------------
# launchers and custom ops


def _wide_meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: tuple, hidden_block: int):
    """The whole-state kernels' runtime scalars and constants, with the hidden tiling instead of BH."""
    scalars, constants = _common_meta(q, w1, ln_w, config)
    del constants["BH"]
    DH = constants["DH"]
    BHB = min(hidden_block, _block(DH))
    constants |= {"BHB": BHB, "NB": triton.cdiv(DH, BHB), "DOT": config[8], "num_warps": NUM_WARPS}
    return scalars, constants


def _forward(q, k, v, bp, ln_w, ln_b, coef, w1, w2, s1, s2, config, hidden_block, store):
    B, T, H = q.shape[:3]
    beta, f, G, m_end, s_coef = coef
    NC = beta.shape[2]
    has_mom = s1 is not None

    def new(*shape: int) -> Tensor:
        return w1.new_empty(shape)

    y = new(*q.shape) if not store else new(0)  # float32: the read's residual is added outside
    # the state is updated in place in the final-state outputs
    w1_final, w2_final = (
        w1.clone(memory_format=torch.contiguous_format),
        w2.clone(memory_format=torch.contiguous_format),
    )
    s1_final = s1.clone(memory_format=torch.contiguous_format) if has_mom else new(0)
    s2_final = s2.clone(memory_format=torch.contiguous_format) if has_mom else new(0)
    w1_anchor, w2_anchor = new(*w1.shape), new(*w2.shape)
    w1_chunks = new(B, H, NC, *w1.shape[2:]) if store else new(0)
    w2_chunks = new(B, H, NC, *w2.shape[2:]) if store else new(0)
    s1_chunks = new(B, H, NC, *w1.shape[2:]) if store and has_mom else new(0)
    s2_chunks = new(B, H, NC, *w2.shape[2:]) if store and has_mom else new(0)
    scalars, constants = _wide_meta(q, w1, ln_w, config, hidden_block)
    empty = new(0)
    _wide_forward_kernel[(B * H,)](
        q,
        k,
        v,
        empty if bp is None else bp,
        beta,
        f,
        G,
        m_end,
        s_coef,
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


@torch.library.custom_op("memnets::titans_mlp_wide_fwd", mutates_args=())
def titans_mlp_wide_fwd(
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
    hidden_block: int,
    dot_precision: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``memnets::titans_mlp_fwd`` (same arguments and outputs) with the hidden width tiled in blocks
    of ``hidden_block`` columns."""
    coef = (beta, f, G, m_end, s_coef)
    config = (chunk_size, activation, bias_kind, p, eps, sharpness, ln_eps, residual, dot_precision)
    y, state, _ = _forward(
        q, k, v, bias_params, ln_w, ln_b, coef, w1, w2, s1, s2, config, hidden_block, False
    )
    return (y, *state)


@titans_mlp_wide_fwd.register_fake
def _(q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, *config):
    return _fake_outputs(q, w1, w2, s1 is not None)


@torch.library.custom_op("memnets::titans_mlp_wide_bwd", mutates_args=())
def titans_mlp_wide_bwd(
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
    hidden_block: int,
    dot_precision: int,
) -> list[Tensor]:
    """``memnets::titans_mlp_bwd`` (same arguments and outputs) with the hidden width tiled."""
    B, T, H = q.shape[:3]
    has_mom = s1 is not None
    coef = (beta, f, G, m_end, s_coef)
    config = (chunk_size, activation, bias_kind, p, eps, sharpness, ln_eps, residual, dot_precision)
    _, _, (w1_chunks, w2_chunks, s1_chunks, s2_chunks) = _forward(
        q, k, v, bias_params, ln_w, ln_b, coef, w1, w2, s1, s2, config, hidden_block, True
    )

    def like(t: Tensor | None) -> Tensor:
        return w1.new_empty(0) if t is None else torch.empty_like(t)

    def start(t: Tensor) -> Tensor:  # a working buffer, from the chunk-end cotangent to the initial one
        return t.float().clone(memory_format=torch.contiguous_format)

    dq, dk, dv, dbp = like(q), like(k), like(v), like(bias_params)
    # the LayerNorm's outer parameters: one partial sum per (batch, head), reduced below
    dln_w = w1.new_empty(B, H, q.shape[3]) if ln_w is not None else w1.new_empty(0)
    dln_b = w1.new_empty(B, H, q.shape[3]) if ln_w is not None else w1.new_empty(0)
    dbeta, df, dG, dm_end, ds_coef = like(beta), like(f), like(G), like(m_end), like(s_coef)
    dw1, dw2 = start(dw1_final), start(dw2_final)
    ds1, ds2 = (start(ds1_final), start(ds2_final)) if has_mom else (w1.new_empty(0), w1.new_empty(0))
    scalars, constants = _wide_meta(q, w1, ln_w, config, hidden_block)
    scratch = w1.new_empty(B * H, constants["BL"], constants["NB"] * constants["BHB"])
    empty = w1.new_empty(0)
    _wide_backward_kernel[(B * H,)](
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
        scratch,
        T,
        beta.shape[2],
        *scalars,
        **constants,
        HAS_MOM=has_mom,
    )
    if ln_w is not None:
        dln_w, dln_b = dln_w.sum(0), dln_b.sum(0)
    return [dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef, dw1, dw2, ds1, ds2]


@titans_mlp_wide_bwd.register_fake
def _(*inputs):
    return _fake_grads(inputs)


def _backward(ctx, *cotangents):
    tensors = ctx.saved_tensors
    grads = titans_mlp_wide_bwd(*tensors, *_cotangents(ctx, tensors, cotangents), *ctx.config)
    return *_input_grads(ctx, grads), *(None,) * len(ctx.config)


def _setup_context(ctx, inputs, output) -> None:
    _save_inputs(ctx, inputs, 15)  # q .. s2


torch.library.register_autograd("memnets::titans_mlp_wide_fwd", _backward, setup_context=_setup_context)
