"""The reads' backward of the wide-state MLP-memory kernels, apart from the state's recurrence.

Of the backward's passes per chunk (:mod:`.wide_forward` lists them), the reads' (pass 2, and pass 3's
read terms: Ẑ1 and Ẑ2 back to dẐ1, Â, the coefficients β, f, G and the cotangents of Q Kᵀ, q and Δ)
read only the chunk's start state, the inputs and dy, never the state's cotangents. One program per
(sequence, head, chunk) takes them here for every chunk of a recompute segment at once
(``_wide_read_backward_kernel``, from the start states the STORE recompute kept), so the sequential
kernel (:mod:`.wide_split_backward`) walks only the chunk-end update's backward, the key path's
second-order terms and the state's cotangents: at titans-760m's shapes 26 of a hidden block's 44 products leave the
chain of dependent steps, and the programs in flight grow from B·H to B·H·(chunks per segment). The
kernel writes dq and the coefficients' read terms in place, and keeps per chunk what the recurrence
adds (``ReadTerms``): per hidden block j the tiles dẐ1_jᵀ and Â_jᵀ ``[BHB, L]`` (the reads' terms of
dW1_j, dS1_j and dW2_j, dS2_j are their low-rank products with q and dY, formed in the recurrence) and
the reads' shares of dδ1_jᵀ and dA_jᵀ ``[BHB, BK]``; dY after the read's LayerNorm ``[L, D]``, the
reads' share of dΔ ``[BK, D]``, the key path's Z2 ``[BK, D]`` (the recurrence's Δ, a sum over the
hidden blocks that its programs hold in parts), and the read LayerNorm's dγ, db. About 4·BK·Dh + 3·BK·D
floats per chunk (124 KB at titans-760m), for one recompute segment's chunks at a time.

Where it runs (:func:`splits_reads`): keys as wide as values (the Titans, Miras and TNT memories), not
with Moneta's maps. The per-token map's reads carry every token's scale, whose cotangents the
recurrence needs before its update terms (pass 3a); the chunk-end map's cotangent needs the whole
state's ℓ_q norm, which the split recurrence's programs hold in parts. With keys wider than values (OmegaNet's and
Atlas' polynomial features, 34 key blocks at omeganet-760m) this launch would re-run the key path and
every layer-1 product over all key blocks, more than the recurrence saves (the static report at
omeganet-760m: 158 ms of backward became 129 + 44 ms, benchmarks/RESULTS.md §55).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dual_form import inner
from ..precision import dot
from .common import (
    act,
    act_grad,
    col_block,
    key_cols_t,
    key_delta,
    ln_params,
    load_f32,
    read_layer2_backward,
)
from .config import SEGMENT_INTS, wide_num_warps
from .wide_blocks import chunk_rows, key_z2, query_keys, w1_block, w2_block
from .wide_forward import read_coefficients


@triton.jit
def read_z1(qw1T, qs1T, d1T, qkGT, b_beta, b_f, DOT: tl.constexpr, HAS_MOM: tl.constexpr):
    """The read's Ẑ1_jᵀ = (β ⊙ (Q W1_j) [+ f ⊙ (Q S1_j)] − (Q Kᵀ ⊙ G) δ1_j)ᵀ."""
    z1T = b_beta[None, :] * qw1T - dot(d1T, qkGT, DOT)
    if HAS_MOM:
        z1T += b_f[None, :] * qs1T
    return z1T


@triton.jit
def layer1_reads(
    w1, s1, dw1, ds1, cb1, base1, j, k, q, krow, kvalid, qrow, qvalid, ks1,
    DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NI: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
    UPDATE: tl.constexpr,
):  # fmt: skip
    """Hidden block j's layer-1 products at the chunk-start state (from ``cb1``), hidden-major, summed
    over the key blocks: Z1ᵀ = ``ks1`` W1ᵀ Kᵀ (the key path's scale: Moneta's per-token map's s(W1),
    else 1), Aᵀ = σ(Z1ᵀ), σ'(Z1ᵀ), (Q W1)ᵀ and with momentum (Q S1)ᵀ (else
    (Q W1)ᵀ again, unread). With ``UPDATE``, in the same loop, the terms of layer 1's chunk-end update
    W1' = β_L W1 [+ f_L S1] − Kᵀ (g_last ⊙ δ1), S1' = m_end S1 − Kᵀ (s_coef ⊙ δ1) that sum over the key
    blocks, from the chunk-end cotangents C_W, C_S (at ``base1`` of dw1, ds1; read, not yet
    overwritten): (K C_W)ᵀ and (K C_S)ᵀ ``[BHB, BK]`` (the caller forms the cotangents of δ1_j, g_last
    and s_coef from them), ⟨C_W, W1⟩ (β_L's cotangent), ⟨C_S, S1⟩ (m_end's) and ⟨C_W, S1⟩ (f_L's);
    zeros without. One loop rather than two: a second pass over W1 and S1 cost
    more spill at the Titans shapes (benchmarks/RESULTS.md §25)."""
    Z1T = tl.zeros([BHB, BK], dtype=tl.float32)
    qw1T = tl.zeros([BHB, BL], dtype=tl.float32)
    qs1T = tl.zeros([BHB, BL], dtype=tl.float32)
    kcT = tl.zeros([BHB, BK], dtype=tl.float32)
    ksT = tl.zeros([BHB, BK], dtype=tl.float32)
    dbeta_last = tl.sum(tl.zeros([BK], dtype=tl.float32), 0)
    dm = dbeta_last
    df_last = dbeta_last
    for i in range(NI):
        o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
        W1 = load_f32(w1 + cb1 + o1, m1)
        kT = key_cols_t(k, krow, kvalid, i, DI, KB)
        Z1T += dot(tl.trans(W1), kT, DOT)
        qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
        qw1T += dot(tl.trans(W1), qT, DOT)
        if UPDATE:
            cW1 = tl.load(dw1 + base1 + o1, mask=m1, other=0.0)
            kcT += dot(tl.trans(cW1), kT, DOT)
            dbeta_last += inner(cW1, W1)
        if HAS_MOM:
            S1 = load_f32(s1 + cb1 + o1, m1)
            qs1T += dot(tl.trans(S1), qT, DOT)
            if UPDATE:
                cS1 = tl.load(ds1 + base1 + o1, mask=m1, other=0.0)
                ksT += dot(tl.trans(cS1), kT, DOT)
                dm += inner(cS1, S1)
                df_last += inner(cW1, S1)
    if not HAS_MOM:
        qs1T = qw1T
    Z1T = ks1 * Z1T
    return Z1T, act(Z1T, ACT), act_grad(Z1T, ACT), qw1T, qs1T, kcT, ksT, dbeta_last, dm, df_last


@triton.jit
def read_block(
    w1, s1, w2, s2, dw1, ds1, cb1, cb2, base1, j, k, q, krow, kvalid, qrow, qvalid, ks1, ks2,
    ddT, dyT, dPT, qkGT, bb1, bf1, bb2, bf2,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr,
    NI: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr,
    DOT: tl.constexpr, HAS_MOM: tl.constexpr, UPDATE: tl.constexpr,
):  # fmt: skip
    """Hidden block j of the reads, recomputed and taken back to Ẑ1_j: :func:`layer1_reads` (its results
    first), then W2_j, E_jᵀ = ``ks2`` (W2_j Δᵀ), δ1_jᵀ = E_jᵀ ⊙ σ'(Z1_jᵀ), the read's Ẑ1_jᵀ and Â_jᵀ with
    layer 1's coefficients (``bb1``, ``bf1``, ``qkGT`` = (Q Kᵀ ⊙ G)ᵀ), and dẐ1_jᵀ from dẐ2 through
    layer 2's (``bb2``, ``bf2``, ``dPT`` = (d(Â Aᵀ) ⊙ G)ᵀ): Ẑ2 = β ⊙ (Â W2) [+ f ⊙ (Â S2)] − (Â Aᵀ ⊙ G)
    Δ. The coefficients are Moneta's per-token map's scaled ones (s_t β_t, each layer its own), else
    β, f and G."""
    o2, m2 = w2_block(j, D, DH, BD, BHB)
    Z1T, AT, sgT, qw1T, qs1T, kcT, ksT, dbl, dml, dfl = layer1_reads(
        w1, s1, dw1, ds1, cb1, base1, j, k, q, krow, kvalid, qrow, qvalid, ks1,
        DI, DH, KB, BHB, NI, BL, BK, ACT, DOT, HAS_MOM, UPDATE,
    )  # fmt: skip
    W2 = load_f32(w2 + cb2 + o2, m2)
    ET = ks2 * dot(W2, ddT, DOT)
    d1T = ET * sgT
    z1T = read_z1(qw1T, qs1T, d1T, qkGT, bb1, bf1, DOT, HAS_MOM)
    a1T = act(z1T, ACT)
    da1T = bb2[None, :] * dot(W2, dyT, DOT) + dot(AT, dPT, DOT)
    if HAS_MOM:
        da1T += bf2[None, :] * dot(load_f32(s2 + cb2 + o2, m2), dyT, DOT)
    dz1T = da1T * act_grad(z1T, ACT)
    return Z1T, AT, sgT, qw1T, qs1T, kcT, ksT, dbl, dml, dfl, W2, ET, d1T, a1T, dz1T


@triton.jit
def read_layer2(
    w1, s1, w2, s2, dw1, ds1, cb1, cb2, base1, k, q, krow, kvalid, qrow, qvalid, ks1, ks2, dd, ddT, qkGT,
    bb1, bf1, bb2, bf2, bG2, b_dy, gamma, d_gamma, d_shift, cmask, ln_eps,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr,
    NI: tl.constexpr, NB: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr,
    ACT: tl.constexpr, DOT: tl.constexpr, LN: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Pass 2: the reads' layer-2 inputs summed over the hidden blocks, Â W2, Â S2 (without momentum
    unread) and Â Aᵀ (Â_j from the recomputed δ1_j, layer 1's coefficients ``bb1``, ``bf1``), then
    Ẑ2's terms on whole rows with layer 2's (``bb2``, ``bf2``, ``bG2``): :func:`read_layer2_backward`'s
    results."""
    a1w2T = tl.zeros([BD, BL], dtype=tl.float32)
    a1s2T = tl.zeros([BD, BL], dtype=tl.float32)
    aa = tl.zeros([BL, BK], dtype=tl.float32)
    for j in range(NB):
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        _, AT, sgT, qw1T, qs1T, _, _, _, _, _ = layer1_reads(
            w1, s1, dw1, ds1, cb1, base1, j, k, q, krow, kvalid, qrow, qvalid, ks1,
            DI, DH, KB, BHB, NI, BL, BK, ACT, DOT, HAS_MOM, False,
        )  # fmt: skip
        W2 = load_f32(w2 + cb2 + o2, m2)
        z1T = read_z1(qw1T, qs1T, ks2 * dot(W2, ddT, DOT) * sgT, qkGT, bb1, bf1, DOT, HAS_MOM)
        a1T = act(z1T, ACT)
        a1w2T += dot(tl.trans(W2), a1T, DOT)
        aa += dot(tl.trans(a1T), AT, DOT)
        if HAS_MOM:
            S2 = load_f32(s2 + cb2 + o2, m2)
            a1s2T += dot(tl.trans(S2), a1T, DOT)
    return read_layer2_backward(
        b_dy, tl.trans(a1w2T), tl.trans(a1s2T), aa, bG2, dd, bb2, bf2, gamma, d_gamma, d_shift, cmask,
        ln_eps, D, DOT, LN, HAS_MOM,
    )  # fmt: skip


@triton.jit
def read_tiles(blocks, ch, BK: tl.constexpr, BL: tl.constexpr, BHB: tl.constexpr, NB: tl.constexpr):
    """Offsets of chunk ``ch``'s tiles in ``ReadTerms.blocks`` (add ``j * BHB`` for hidden block j and
    ``s * BK * NB * BHB`` for slot s): ``[BHB, BL]`` tiles (slots 0 dẐ1ᵀ, 1 Âᵀ) and ``[BHB, BK]`` ones
    (slots 2 dδ1ᵀ, 3 dAᵀ)."""
    sw = NB * BHB
    hb = tl.arange(0, BHB)[:, None]
    base = ch * 4 * BK * sw
    return base + tl.arange(0, BL)[None, :] * sw + hb, base + tl.arange(0, BK)[None, :] * sw + hb


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_read_backward_kernel(
    q, k, v, bp, ln_w, ln_b, dy, beta, f, G,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # the chunks' start states (the STORE recompute's)
    dq, dbeta, df, dG, blocks, rows, ln_parts,  # outputs
    T, P0, C0, NC, NCT, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Chunk C0 + c's reads of one (sequence, head), program (that, c), backward from dY at the chunk's
    start state: dq and the read terms of dβ, df, dG (written in place; the recurrence adds the
    update's, on the chunk's last row), and the chunk's ``ReadTerms``."""
    i_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    ch = bh * NC + c  # this (batch, head, chunk) in the stored states and the read terms
    g = C0 + c  # the chunk's index in the sequence
    cc = bh * NCT + g  # and in the coefficients
    n1 = DI * DH
    n2 = DH * D
    cb1 = ch * n1
    cb2 = ch * n2
    li = tl.arange(0, BL)
    lmask = li < L
    lk = tl.arange(0, BK)
    lkmask = lk < P + L
    gmask = lmask[:, None] & lkmask[None, :]
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    offs, mask, qvalid, qrow, _koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
        k, v, bp, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, BIAS, RES
    )
    b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
    b_beta, b_f, b_G = read_coefficients(beta, f, G, cc, L, P, BL, BK, HAS_MOM)
    qk = query_keys(q, k, qrow, qvalid, krow, kvalid, DI, KB, NI, BL, BK, DOT)
    qkG = qk * b_G
    qkGT = tl.trans(qkG)
    # pass 1: the key path's Δ (the reads' Ẑ1 and Ẑ2 take it; no name is ``_`` outside the loops, whose
    # ``_`` Triton would carry between iterations)
    Z2 = key_z2(
        k, krow, kvalid, w1_chunks, w2_chunks, cb1, cb2, 0, 1.0, D, DI, DH, BK, BD, KB, NI, BHB, NB, ACT, DOT
    )
    rb = ch * (3 * BK * BD + BL * BK)  # this chunk's rows in ReadTerms.rows; Z2 last (the recurrence's Δ)
    tl.store(rows + rb + 2 * BK * BD + BL * BK + lk[:, None] * BD + cols[None, :], Z2)
    dd, _dout, _r, _xk, _rk = key_delta(
        Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
    )
    ddT = tl.trans(dd)
    # pass 2, then Ẑ2's terms on whole rows
    b_dy, d_gamma, d_shift, b_dbeta, b_df, b_dG, dP, d_dd = read_layer2(
        w1_chunks, s1_chunks, w2_chunks, s2_chunks, w1_chunks, s1_chunks, cb1, cb2, 0, k, q, krow, kvalid,
        qrow, qvalid, 1.0, 1.0, dd, ddT, qkGT, b_beta, b_f, b_beta, b_f, b_G, b_dy, gamma, d_gamma, d_shift,
        cmask, ln_eps, D, DI, DH, KB, BHB, NI, NB, BD, BL, BK, ACT, DOT, LN, HAS_MOM,
    )  # fmt: skip
    dyT = tl.trans(b_dy)
    dPT = tl.trans(dP)
    # pass 3's read terms per hidden block: layer 1 of the reads back to dẐ1_j, its coefficients, the
    # cotangents of Q Kᵀ and of δ1_j, and layer 2's dA_j
    tq, tk = read_tiles(blocks, ch, BK, BL, BHB, NB)
    slot = BK * NB * BHB
    dPq = tl.zeros([BL, BK], dtype=tl.float32)  # cotangent of Q Kᵀ ⊙ G, summed over the blocks
    for j in range(NB):
        _, _, _, qw1T, qs1T, _, _, _, _, _, _, _, d1T, a1T, dz1T = read_block(
            w1_chunks, s1_chunks, w2_chunks, s2_chunks, w1_chunks, s1_chunks, cb1, cb2, 0, j, k, q,
            krow, kvalid, qrow, qvalid, 1.0, 1.0, ddT, dyT, dPT, qkGT, b_beta, b_f, b_beta, b_f,
            D, DI, DH, KB, BHB, NI, BD, BL, BK, ACT, DOT, HAS_MOM, False,
        )  # fmt: skip
        b_dbeta += tl.sum(dz1T * qw1T, 0)
        if HAS_MOM:
            b_df += tl.sum(dz1T * qs1T, 0)
        dPq -= dot(tl.trans(dz1T), d1T, DOT)
        tl.store(blocks + tq + j * BHB, dz1T)
        tl.store(blocks + tq + slot + j * BHB, a1T)
        tl.store(blocks + tk + 2 * slot + j * BHB, -dot(dz1T, qkG, DOT))
        tl.store(blocks + tk + 3 * slot + j * BHB, dot(a1T, dP, DOT))
    b_dG += dPq * qk
    dPq = dPq * b_G
    tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
    tl.store(dG + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :], b_dG, mask=gmask)
    if HAS_MOM:
        tl.store(df + cc * L + li, b_df, mask=lmask)
    tl.store(rows + rb + li[:, None] * BD + cols[None, :], b_dy)
    tl.store(rows + rb + BK * BD + lk[:, None] * BD + cols[None, :], d_dd)
    tl.store(rows + rb + 2 * BK * BD + li[:, None] * BK + lk[None, :], dPq)
    tl.store(ln_parts + ch * 2 * BD + cols, d_gamma)
    tl.store(ln_parts + ch * 2 * BD + BD + cols, d_shift)
    tl.debug_barrier()  # the dẐ1 tiles just written are read back by other threads
    # dq, through Q Kᵀ and Ẑ1's β and f terms, per key block
    for i in range(NI):
        b_dqT = dot(key_cols_t(k, krow, kvalid, i, DI, KB), tl.trans(dPq), DOT)
        for j in range(NB):
            o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
            dz1T = tl.load(blocks + tq + j * BHB)
            b_dqT += dot(load_f32(w1_chunks + cb1 + o1, m1), b_beta[None, :] * dz1T, DOT)
            if HAS_MOM:
                b_dqT += dot(load_f32(s1_chunks + cb1 + o1, m1), b_f[None, :] * dz1T, DOT)
        qoffs, qmask = col_block(qrow, qvalid, i * KB, DI, DI, KB)
        tl.store(dq + qoffs, tl.trans(b_dqT).to(dq.dtype.element_ty), mask=qmask)


def splits_reads(token_map: int, key_width: int, value_width: int, end_map: int = 0) -> bool:
    """Whether the wide backward takes its reads in :func:`launch_wide_read_backward` (and its recurrence
    in :mod:`.wide_split_backward`), given the per-token map's kind (``LaunchConfig.token_map``, 0
    without), the widths and the chunk-end map's kind (``LaunchConfig.end_map``: its ℓ_q norm sums over
    the whole state, which the split recurrence's programs hold in parts) (the module's docstring says
    where and why)."""
    return not token_map and not end_map and key_width == value_width


class ReadTerms(NamedTuple):
    """What :func:`launch_wide_read_backward` keeps per chunk of a segment for the recurrence (float32):
    ``blocks`` ``[B·H, chunks, 4, BK, NB·BHB]`` (dẐ1ᵀ, Âᵀ, the reads' dδ1ᵀ, dAᵀ per hidden block),
    ``rows`` ``[B·H, chunks, 3·BK·BD + BL·BK]`` (dY after the read's LayerNorm ``[BL, BD]`` and the reads'
    dΔ ``[BK, BD]`` at BK·BD floats each, the cotangent of Q Kᵀ ⊙ G ``[BL, BK]``: dk's read term, then the
    key path's Z2 ``[BK, BD]`` at the chunk-start state) and
    ``ln_parts`` ``[B·H, chunks, 2, BD]`` (the read LayerNorm's dγ, db per chunk)."""

    blocks: Tensor
    rows: Tensor
    ln_parts: Tensor


def launch_wide_read_backward(
    q, k, v, bp, ln_w, ln_b, dy, coef, chunks, grads, meta, c0: int, nc: int
) -> ReadTerms:  # fmt: skip
    """The reads' backward of chunks c0 .. c0 + nc, one program per (sequence, head, chunk), from their
    start states ``chunks`` (w1, w2, s1, s2; s empty without momentum): writes dq and the read terms of
    dβ, df, dG into ``grads`` (dq, dk, dv, dbp, dβ, df, dG, ...) and returns the ``ReadTerms``;
    ``meta`` is :func:`~.wide_forward.wide_meta`'s."""
    B, T, H = q.shape[:3]
    scalars, constants = meta
    BK, BD, NB, BHB = constants["BK"], constants["BD"], constants["NB"], constants["BHB"]

    def new(*shape: int) -> Tensor:
        return torch.empty(shape, device=q.device, dtype=torch.float32)

    BL = constants["BL"]
    terms = ReadTerms(
        new(B * H, nc, 4, BK, NB * BHB), new(B * H, nc, 3 * BK * BD + BL * BK), new(B * H, nc, 2, BD)
    )
    empty = q.new_empty(0)
    dq, _, _, _, dbeta, df, dG = grads[:7]
    _wide_read_backward_kernel[(B * H, nc)](
        q, k, v, *(empty if t is None else t for t in (bp, ln_w, ln_b)), dy, *coef[:3], *chunks,
        dq, dbeta, df, dG, *terms, T, k.shape[1] - T, c0, nc, coef[0].shape[2], *scalars,
        HAS_MOM=chunks[2].numel() > 0, **{**constants, "num_warps": wide_num_warps(BD, "_wide_read_backward_kernel")},
    )  # fmt: skip
    return terms
