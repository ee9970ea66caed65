"""The wide-state backward's recurrence with the hidden width split across programs: SPLIT programs per
(sequence, head), each owning NB / SPLIT hidden blocks (its columns of W1, S1 and their cotangents, its
rows of W2, S2 and theirs), one launch per chunk, walking the chunks from the last.

Why: after the reads' backward left the recurrence (:mod:`.wide_reads`), what stays sequential is the
chunk-end update's backward, the key path's second-order terms and the state's cotangents; at
titans-760m's 4 × 16 heads one program per (sequence, head) runs 64 programs on 132 SMs, each walking
256 chunks through a chain of dependent products and state loads. As in the split forward
(:mod:`.wide_split`), only whole-row sums cross the hidden blocks of a chunk:

- pass 1, the key path's Z2 = Σ_j σ(K W1_j) W2_j at the chunk-start state: the reads' launch computes it
  and keeps it (``ReadTerms.rows``); every program takes Δ from it;
- pass 3 (per hidden block: layer 1's and layer 2's chunk-end update backward, δ1_j's second-order
  terms) sums each block's share of dΔ, of the coefficients' cotangents (G's and β's last row, f_L,
  s_coef, m_end) and, in pass 5, of dk;
- pass 4 (dΔ back through ℓ'(R) and the key LayerNorm to dZ2) needs dΔ on whole rows; pass 5 (dZ2 back
  to each block's W2_j, Z1_j and layer 1's cotangents) needs only dZ2 and block j.

So launch n (after a first one that runs pass 3 of the segment's last chunk) runs in program s, for
chunk c = NC − 1 − n: dΔ = the reads' share plus the SPLIT programs' shares (written by the launch
before), pass 4 on whole rows (every program the same), pass 5 on its own blocks (its dk share kept),
then pass 3 of chunk c − 1 on its own blocks, whose cotangents pass 5 has just brought to chunk c's
start (its shares kept; two slots of dΔ shares by chunk parity). No program waits on another inside a
launch, so the CPU interpreter, which runs programs one after another, computes what the GPU does. A last
launch over (sequence, head, chunk) sums the shares into dk and the coefficients' cotangents.

Programs: B·H·SPLIT per launch (:func:`~.config.wide_split`, the forward's choice); launches: chunks +
2 per recompute segment. Where it runs: where the reads leave the recurrence (:func:`.wide_reads.splits_reads`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dual_form import inner, update_backward_t
from ..precision import dot
from ..relaunch import Relaunch
from .common import (
    act,
    act_grad,
    act_grad2,
    col_block,
    delta_backward,
    key_cols_t,
    key_delta,
    ln_params,
    load_f32,
    row_block,
)
from .config import SEGMENT_INTS, split_constants, wide_num_warps
from .wide_blocks import chunk_rows, layer1_t, w1_block, w2_block
from .wide_forward import read_coefficients, update_coefficients
from .wide_reads import ReadTerms, read_tiles


@triton.jit
def chunk_index(bh, c, C0, NC, NCT, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr):
    """Chunk C0 + c of (sequence, head) ``bh``: its index in the sequence, in the coefficients and in
    the segment's stored states and shares; the bases of this (sequence, head)'s state cotangents in
    layer 1's and layer 2's and of the chunk's start state in the stored ones."""
    g = C0 + c
    ch = bh * NC + c
    return g, bh * NCT + g, ch, bh * DI * DH, bh * DH * D, ch * DI * DH, ch * DH * D


@triton.jit
def chunk_delta(
    k, v, bp, gamma, shift, rd_rows, b, g, h, ch, T, P0, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr,
    RES: tl.constexpr,
):  # fmt: skip
    """Chunk g's rows (:func:`~.wide_blocks.chunk_rows`) and the key path's Δ from the Z2 the reads'
    launch kept (chunk ``ch`` of ``ReadTerms.rows``): :func:`~.common.key_delta`'s results after the rows'."""
    _, _, qvalid, qrow, koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
        k, v, bp, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, BIAS, RES
    )
    cols = tl.arange(0, BD)
    cmask = cols < D
    at = ch * (3 * BK * BD + BL * BK) + 2 * BK * BD + BL * BK
    Z2 = tl.load(rd_rows + at + tl.arange(0, BK)[:, None] * BD + cols[None, :])
    dd, dout, r, xk, rk = key_delta(
        Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
    )
    return qvalid, qrow, koffs, kmask, kvalid, krow, delta, dd, dout, r, xk, rk


@triton.jit
def key_layer1_t(
    w1, dw1, ds1, cb1, base1, j, k, krow, kvalid,
    DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NI: tl.constexpr,
    BK: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Hidden block j's key-path layer 1 at the chunk-start state (from ``cb1``) and the chunk-end
    cotangents' products with the keys (at ``base1`` of dw1, ds1), summed over the key blocks: Z1ᵀ,
    (K C_W)ᵀ and (K C_S)ᵀ ``[BHB, BK]`` (zeros without momentum). Unlike
    :func:`~.wide_reads.layer1_reads` it leaves the update's inner products ⟨C_W, W1⟩, ⟨C_S, S1⟩,
    ⟨C_W, S1⟩ to pass 5, which loads those blocks anyway: pass 3 keeps one layer-1 block live at a time
    and never loads S1."""
    Z1T = tl.zeros([BHB, BK], dtype=tl.float32)
    kcT = tl.zeros([BHB, BK], dtype=tl.float32)
    ksT = tl.zeros([BHB, BK], dtype=tl.float32)
    for i in range(NI):
        o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
        kT = key_cols_t(k, krow, kvalid, i, DI, KB)
        Z1T += dot(tl.trans(load_f32(w1 + cb1 + o1, m1)), kT, DOT)
        kcT += dot(tl.trans(tl.load(dw1 + base1 + o1, mask=m1, other=0.0)), kT, DOT)
        if HAS_MOM:
            ksT += dot(tl.trans(tl.load(ds1 + base1 + o1, mask=m1, other=0.0)), kT, DOT)
    return Z1T, kcT, ksT


@triton.jit
def update_backward(
    k, v, bp, gamma, shift, beta, f, G, m_end, s_coef, w1_chunks, w2_chunks, s1_chunks, s2_chunks,
    dw2_anchor, dw1, dw2, ds1, ds2, scratch, rd_blocks, rd_rows, dd_parts, sums,
    b, h, bh, s, c, T, P0, C0, NC, NCT, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
    SPLIT: tl.constexpr, NBJ: tl.constexpr,
):  # fmt: skip
    """Pass 3 of chunk C0 + c on program s's hidden blocks: per block j the key path's layer 1 and the
    chunk-end cotangents' products with the keys (:func:`key_layer1_t`), the reads' tiles, layer 2's
    chunk-end update backward (dW2_j, dS2_j rewritten to the chunk-start values but for pass 5's
    key-path term) and δ1_j's second-order terms. The cotangents of δ1_j and Z1_j go to ``scratch`` for
    pass 5, the blocks' share of dΔ to ``dd_parts`` (the chunk's parity slot), their shares of G's and
    β's last row, f_L, s_coef and m_end to ``sums``."""
    g, cc, ch, base1, base2, cb1, cb2 = chunk_index(bh, c, C0, NC, NCT, D, DI, DH)
    _qv, _qr, _ko, _km, kvalid, krow, _dl, dd, _do, _r, _xk, _rk = chunk_delta(
        k, v, bp, gamma, shift, rd_rows, b, g, h, ch, T, P0, p, eps, sharp, ln_eps,
        H, D, DI, L, P, BL, BK, BD, BIAS, LN, RES,
    )  # fmt: skip
    ddT = tl.trans(dd)
    li = tl.arange(0, BL)
    lk = tl.arange(0, BK)
    cols = tl.arange(0, BD)
    b_beta, b_f, _b_G = read_coefficients(beta, f, G, cc, L, P, BL, BK, HAS_MOM)
    g_last, beta_last, f_last, b_s, b_m = update_coefficients(
        beta, f, G, m_end, s_coef, cc, tl.minimum(T - g * L, L) - 1, L, P, BK, HAS_MOM
    )
    b_dy = tl.load(rd_rows + ch * (3 * BK * BD + BL * BK) + li[:, None] * BD + cols[None, :])
    sw = NB * BHB
    slot = BK * sw
    hb = tl.arange(0, BHB)[:, None]
    # this chunk's read tiles and this program's scratch as scalar bases, the tiles' offsets int32; pass
    # 5 keeps read_tiles' offsets (this form in both passes, or read_tiles' in both, measured 59.28 and
    # 59.31 µs of exposed latency per step at titans-760m against 59.25 with the two)
    blocks = rd_blocks + ch * 4 * slot
    tq = li[None, :] * sw + hb  # [BHB, BL] tiles
    tk = lk[None, :] * sw + hb  # [BHB, BK] tiles (the scratch's too)
    scr = scratch + bh * 2 * slot
    d_ddT = tl.zeros([BD, BK], dtype=tl.float32)
    dg_last = tl.zeros([BK], dtype=tl.float32)
    b_ds = tl.zeros([BK], dtype=tl.float32)
    dbeta_last = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)
    df_last = dbeta_last
    dm = dbeta_last
    for jj in range(NBJ):
        j = s * NBJ + jj
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        Z1T, kcT, ksT = key_layer1_t(
            w1_chunks, dw1, ds1, cb1, base1, j, k, krow, kvalid, DI, DH, KB, BHB, NI, BK, DOT, HAS_MOM
        )
        AT = act(Z1T, ACT)
        sgT = act_grad(Z1T, ACT)
        a1T = tl.load(blocks + slot + j * BHB + tq)
        d_d1T = tl.load(blocks + 2 * slot + j * BHB + tk) - g_last[None, :] * kcT  # dδ1_jᵀ
        dAT = tl.load(blocks + 3 * slot + j * BHB + tk)
        if HAS_MOM:
            d_d1T -= b_s[None, :] * ksT
        dET = d_d1T * sgT
        # layer 2's chunk-end update, W2' = β_L W2 [+ f_L S2] − Aᵀ (g_last ⊙ Δ),
        # S2' = m_end S2 − Aᵀ (s_coef ⊙ Δ), backward from its cotangents C_W, C_S. At most two layer-2
        # blocks live at once: S2 and C_W are loaded twice (once per product that needs them), the
        # momentum's cotangent stored before C_W is loaded for good and W2 last (titans-760m: spill
        # 912 -> 736 B, under L1 beside the shared memory; benchmarks/RESULTS.md §56)
        if HAS_MOM:
            cS2 = tl.load(ds2 + base2 + o2, mask=m2, other=0.0)
            dm += inner(cS2, load_f32(s2_chunks + cb2 + o2, m2))
            d_ddT, dAT, d_coef = update_backward_t(d_ddT, dAT, AT, ddT, b_s, cS2, DOT)
            b_ds -= d_coef
            cS2 = b_m * cS2 + dot(a1T, b_f[:, None] * b_dy, DOT)
            cS2 += f_last * tl.load(dw2 + base2 + o2, mask=m2, other=0.0)
            tl.debug_barrier()  # every thread has read block j of dS2
            tl.store(ds2 + base2 + o2, cS2, mask=m2)
        cW2 = tl.load(dw2 + base2 + o2, mask=m2, other=0.0)
        if HAS_MOM:
            df_last += inner(cW2, load_f32(s2_chunks + cb2 + o2, m2))
        d_ddT, dAT, d_coef = update_backward_t(d_ddT, dAT, AT, ddT, g_last, cW2, DOT)
        dg_last -= d_coef
        W2 = load_f32(w2_chunks + cb2 + o2, m2)
        dbeta_last += inner(cW2, W2)
        d_ddT += dot(tl.trans(W2), dET, DOT)
        ET = dot(W2, ddT, DOT)  # δ1_jᵀ = (W2_j Δᵀ) ⊙ σ'(Z1_jᵀ)
        d1T = ET * sgT
        dg_last -= tl.sum(d1T * kcT, 0)
        if HAS_MOM:
            b_ds -= tl.sum(d1T * ksT, 0)
        gW2 = beta_last * cW2 + dot(a1T, b_beta[:, None] * b_dy, DOT) + dot(dET, dd, DOT)
        if g == NCT - 1:
            gW2 += tl.load(dw2_anchor + base2 + o2, mask=m2, other=0.0)
        dZ1T = d_d1T * ET * act_grad2(Z1T, ACT) + dAT * sgT
        tl.debug_barrier()  # every thread has read layer 2's block j of dW2
        tl.store(scr + j * BHB + tk, d1T)
        tl.store(scr + slot + j * BHB + tk, dZ1T)
        tl.store(dw2 + base2 + o2, gW2, mask=m2)
    part = ((g % 2) * tl.num_programs(0) + bh) * SPLIT + s
    tl.store(dd_parts + part * BK * BD + lk[None, :] * BD + cols[:, None], d_ddT)
    at = (ch * SPLIT + s) * (2 * BK + 8)
    tl.store(sums + at + lk, dg_last)
    tl.store(sums + at + 2 * BK, dbeta_last)
    if HAS_MOM:
        tl.store(sums + at + BK + lk, b_ds)
        tl.store(sums + at + 2 * BK + 1, df_last)
        tl.store(sums + at + 2 * BK + 2, dm)


@triton.jit
def key_backward(
    k, q, v, bp, gamma, shift, beta, f, G, m_end, s_coef, w1_chunks, w2_chunks, s1_chunks,
    dw1_anchor, dv, dbp, dw1, dw2, ds1, scratch, rd_blocks, rd_rows, dd_parts, sums, dk_parts, key_ln,
    b, h, bh, s, c, T, P0, C0, NC, NCT, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
    SPLIT: tl.constexpr, SP2: tl.constexpr, NBJ: tl.constexpr,
):  # fmt: skip
    """Passes 4 and 5 of chunk C0 + c in program s: dΔ on whole rows (the reads' share and the programs'
    pass-3 shares), back through ℓ'(R) and the key LayerNorm to dZ2 (every program alike; program 0
    stores dv and the LayerNorm's dγ, db of the chunk), then Z2 = Σ_j A_j W2_j back to its blocks' W2_j,
    Z1_j and layer 1's cotangents, brought to the chunk's start, and its share of dk."""
    g, cc, ch, base1, base2, cb1, cb2 = chunk_index(bh, c, C0, NC, NCT, D, DI, DH)
    qvalid, qrow, koffs, kmask, kvalid, krow, delta, dd, dout, r, xk, rk = chunk_delta(
        k, v, bp, gamma, shift, rd_rows, b, g, h, ch, T, P0, p, eps, sharp, ln_eps,
        H, D, DI, L, P, BL, BK, BD, BIAS, LN, RES,
    )  # fmt: skip
    lk = tl.arange(0, BK)
    cols = tl.arange(0, BD)
    cmask = cols < D
    part = lk[:, None] * BD + cols[None, :]
    # pass 4: dΔ summed (one load of all shares: the compiler unrolls so short a loop), then whole rows
    t = tl.arange(0, SP2)
    first = ((g % 2) * tl.num_programs(0) + bh) * SPLIT * BK * BD
    shares = tl.load(
        dd_parts + first + t[:, None, None] * BK * BD + part[None, :, :],
        mask=(t < SPLIT)[:, None, None],
        other=0.0,
    )
    d_dd = tl.sum(shares, 0) + tl.load(rd_rows + ch * (3 * BK * BD + BL * BK) + BK * BD + part)
    zero = tl.zeros([BD], dtype=tl.float32)
    # (every program stores the same Huber thresholds' cotangents, where there are any)
    dZ2, dr, d_gamma, d_shift = delta_backward(
        d_dd, dd, dout, r, delta, xk, rk, gamma, zero, zero, dbp, koffs, kmask, krow, kvalid, cmask,
        p, eps, sharp, D, BIAS, LN,
    )  # fmt: skip
    if s == 0:
        tl.store(key_ln + ch * 2 * BD + cols, d_gamma)
        tl.store(key_ln + ch * 2 * BD + BD + cols, d_shift)
        if P == 0:
            tl.store(dv + koffs, (-dr).to(dv.dtype.element_ty), mask=kmask)
        else:
            voffs, vmask = col_block(cc * (P + L) + lk, kvalid, 0, D, D, BD)
            tl.store(dv + voffs, (-dr).to(dv.dtype.element_ty), mask=vmask)
    dZ2T = tl.trans(dZ2)
    b_beta, b_f, _b_G = read_coefficients(beta, f, G, cc, L, P, BL, BK, HAS_MOM)
    g_last, beta_last, f_last, b_s, b_m = update_coefficients(
        beta, f, G, m_end, s_coef, cc, tl.minimum(T - g * L, L) - 1, L, P, BK, HAS_MOM
    )
    sw = NB * BHB
    so = bh * 2 * BK * sw + lk[None, :] * sw + tl.arange(0, BHB)[:, None]
    tq, _tk = read_tiles(rd_blocks, ch, BK, BL, BHB, NB)
    # pass 5: Z2 back to W2_j and Z1_j, then per key block layer 1's cotangents and the share of dk
    for jj in range(NBJ):
        j = s * NBJ + jj
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        Z1T = layer1_t(w1_chunks, cb1, j, k, krow, kvalid, DI, DH, KB, BHB, NI, BK, DOT)
        W2 = load_f32(w2_chunks + cb2 + o2, m2)
        dZ1T = tl.load(scratch + so + BK * sw + j * BHB) + dot(W2, dZ2T, DOT) * act_grad(Z1T, ACT)
        gW2 = tl.load(dw2 + base2 + o2, mask=m2, other=0.0) + dot(act(Z1T, ACT), dZ2, DOT)
        tl.debug_barrier()  # every thread has read block j before it is overwritten
        tl.store(dw2 + base2 + o2, gW2, mask=m2)
        tl.store(scratch + so + BK * sw + j * BHB, dZ1T)
    tl.debug_barrier()  # the finished cotangents of Z1_j are read back by other threads
    dbeta_last = tl.sum(tl.zeros([BK], dtype=tl.float32), 0)
    df_last = dbeta_last
    dm = dbeta_last
    for i in range(NI):
        kT = key_cols_t(k, krow, kvalid, i, DI, KB)
        qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
        b_dkT = tl.zeros([KB, BK], dtype=tl.float32)
        for jj in range(NBJ):
            j = s * NBJ + jj
            o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
            dz1T = tl.load(rd_blocks + tq + j * BHB)
            d1T = tl.load(scratch + so + j * BHB)
            dZ1T = tl.load(scratch + so + BK * sw + j * BHB)
            W1 = load_f32(w1_chunks + cb1 + o1, m1)
            cW1 = tl.load(dw1 + base1 + o1, mask=m1, other=0.0)
            b_dkT += dot(W1, dZ1T, DOT) - dot(cW1, d1T * g_last[None, :], DOT)
            dbeta_last += inner(cW1, W1)  # layer 1's update terms of β_L, m_end, f_L (key_layer1_t)
            if HAS_MOM:  # the momentum block first and stored: fewer blocks live at once
                S1 = load_f32(s1_chunks + cb1 + o1, m1)
                df_last += inner(cW1, S1)
                cS1 = tl.load(ds1 + base1 + o1, mask=m1, other=0.0)
                dm += inner(cS1, S1)
                b_dkT -= dot(cS1, d1T * b_s[None, :], DOT)
                cS1 = b_m * cS1 + f_last * cW1 + dot(qT, tl.trans(b_f[None, :] * dz1T), DOT)
                tl.debug_barrier()  # every thread has read block (i, j) of dS1
                tl.store(ds1 + base1 + o1, cS1, mask=m1)
            gW1 = beta_last * cW1 + dot(qT, tl.trans(b_beta[None, :] * dz1T), DOT)
            gW1 += dot(kT, tl.trans(dZ1T), DOT)
            if g == NCT - 1:
                gW1 += tl.load(dw1_anchor + base1 + o1, mask=m1, other=0.0)
            tl.debug_barrier()  # every thread has read block (i, j) of dW1
            tl.store(dw1 + base1 + o1, gW1, mask=m1)
        if RES and DI == D:  # noqa: SIM102 (a compile-time branch around a runtime one)
            if s == 0:  # M(k) = k + ...: the residual's direct path, in program 0's share
                b_dkT += tl.trans(dr)
        kb = i * KB + tl.arange(0, KB)
        tl.store(
            dk_parts + ((ch * SPLIT + s) * DI + kb[:, None]) * BK + lk[None, :],
            b_dkT,
            mask=(kb < DI)[:, None],
        )
    at = (ch * SPLIT + s) * (2 * BK + 8) + 2 * BK + 4  # (the layout: launch_wide_split_backward)
    tl.store(sums + at, dbeta_last)
    if HAS_MOM:
        tl.store(sums + at + 1, df_last)
        tl.store(sums + at + 2, dm)


@triton.jit(do_not_specialize=(*SEGMENT_INTS, "n"))
def _wide_split_backward_kernel(
    q, k, v, bp, ln_w, ln_b, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # the chunks' start states
    dw1_anchor, dw2_anchor, dv, dbp,
    dw1, dw2, ds1, ds2, scratch,  # dw1 .. ds2: the state's cotangents, each program's blocks in place
    rd_blocks, rd_rows,  # the reads' terms (wide_reads.ReadTerms)
    dd_parts, sums, dk_parts, key_ln,  # the shares (see the module's docstring)
    T, P0, C0, n, NC, NCT, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
    SPLIT: tl.constexpr, SP2: tl.constexpr, NBJ: tl.constexpr, FIRST: tl.constexpr,
):  # fmt: skip
    """Launch n of a segment's backward (``FIRST``: pass 3 of its last chunk only), program (sequence
    and head, s): chunk NC − 1 − n's passes 4 and 5, then chunk NC − 2 − n's pass 3."""
    i_bh = tl.program_id(0)
    s = tl.program_id(1)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    cols = tl.arange(0, BD)
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cols < D, D, BD, LN)
    c = NC - 1 - n
    if not FIRST:
        key_backward(
            k, q, v, bp, gamma, shift, beta, f, G, m_end, s_coef, w1_chunks, w2_chunks, s1_chunks,
            dw1_anchor, dv, dbp, dw1, dw2, ds1, scratch, rd_blocks, rd_rows, dd_parts, sums, dk_parts,
            key_ln, b, h, bh, s, c, T, P0, C0, NC, NCT, p, eps, sharp, ln_eps,
            H, D, DI, DH, L, BL, BD, KB, NI, BHB, NB, P, BK, ACT, DOT, BIAS, LN, RES, HAS_MOM, SPLIT, SP2, NBJ,
        )  # fmt: skip
        c -= 1
        tl.debug_barrier()  # pass 3 reads the cotangents pass 5 wrote in other threads
    if c >= 0:
        update_backward(
            k, v, bp, gamma, shift, beta, f, G, m_end, s_coef, w1_chunks, w2_chunks, s1_chunks, s2_chunks,
            dw2_anchor, dw1, dw2, ds1, ds2, scratch, rd_blocks, rd_rows, dd_parts, sums,
            b, h, bh, s, c, T, P0, C0, NC, NCT, p, eps, sharp, ln_eps,
            H, D, DI, DH, L, BL, BD, KB, NI, BHB, NB, P, BK, ACT, DOT, BIAS, LN, RES, HAS_MOM, SPLIT, NBJ,
        )  # fmt: skip


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_split_backward_sums_kernel(
    q, dk, dbeta, df, dG, dm_end, ds_coef, sums, dk_parts, rd_rows, T, P0, C0, NC, NCT,
    H: tl.constexpr, DI: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, P: tl.constexpr,
    BK: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, DOT: tl.constexpr,
    HAS_MOM: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Chunk C0 + c of one (sequence, head), program (that, c): the programs' shares summed into dk (with
    the reads' term through Q Kᵀ, from the cotangent of Q Kᵀ ⊙ G the reads' launch kept) and into the
    update's terms of the coefficients' cotangents (G's and β's last row, f_L: added to the reads' terms
    already stored; s_coef and m_end)."""
    i_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    g = C0 + c
    cc = bh * NCT + g
    ch = bh * NC + c
    li = tl.arange(0, BL)
    lmask = li < L
    lk = tl.arange(0, BK)
    lkmask = lk < P + L
    is_last = li == tl.minimum(T - g * L, L) - 1
    dg_last = tl.zeros([BK], dtype=tl.float32)
    b_ds = tl.zeros([BK], dtype=tl.float32)
    dbeta_last = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)
    df_last = dbeta_last
    dm = dbeta_last
    for s in range(SPLIT):
        at = (ch * SPLIT + s) * (2 * BK + 8)  # pass 3's shares, then pass 5's at 2·BK + 4
        dg_last += tl.load(sums + at + lk)
        dbeta_last += tl.load(sums + at + 2 * BK) + tl.load(sums + at + 2 * BK + 4)
        if HAS_MOM:
            b_ds += tl.load(sums + at + BK + lk)
            df_last += tl.load(sums + at + 2 * BK + 1) + tl.load(sums + at + 2 * BK + 5)
            dm += tl.load(sums + at + 2 * BK + 2) + tl.load(sums + at + 2 * BK + 6)
    gofs = cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :]
    gmask = lmask[:, None] & lkmask[None, :]
    b_dG = tl.load(dG + gofs, mask=gmask, other=0.0)
    tl.store(dG + gofs, tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG), mask=gmask)
    b_dbeta = tl.load(dbeta + cc * L + li, mask=lmask, other=0.0)
    tl.store(dbeta + cc * L + li, tl.where(is_last, b_dbeta + dbeta_last, b_dbeta), mask=lmask)
    if HAS_MOM:
        b_df = tl.load(df + cc * L + li, mask=lmask, other=0.0)
        tl.store(df + cc * L + li, tl.where(is_last, b_df + df_last, b_df), mask=lmask)
        tl.store(ds_coef + cc * (P + L) + lk, b_ds, mask=lkmask)
        tl.store(dm_end + cc, dm)
    _, _, kvalid, krow = row_block(b, P0 + g * L - P, h, P0 + T, H, DI, P + L, BK, KB)
    _, _, qvalid, qrow = row_block(b, g * L, h, T, H, DI, L, BL, KB)
    dPqT = tl.trans(
        tl.load(rd_rows + ch * (3 * BK * BD + BL * BK) + 2 * BK * BD + li[:, None] * BK + lk[None, :])
    )
    for i in range(NI):
        kb = i * KB + tl.arange(0, KB)
        b_dk = dot(dPqT, tl.trans(key_cols_t(q, qrow, qvalid, i, DI, KB)), DOT)
        for s in range(SPLIT):
            b_dk += tl.load(
                dk_parts + ((ch * SPLIT + s) * DI + kb[None, :]) * BK + lk[:, None], mask=(kb < DI)[None, :]
            )
        if P == 0:
            doffs, dmask = col_block(krow, kvalid, i * KB, DI, DI, KB)
        else:  # key rows overlap the previous chunk's: one block per chunk, summed by the caller
            doffs, dmask = col_block(cc * (P + L) + lk, kvalid, i * KB, DI, DI, KB)
        tl.store(dk + doffs, b_dk.to(dk.dtype.element_ty), mask=dmask)


def launch_wide_split_backward(
    q, k, v, bp, ln_w, ln_b, coef, chunks, reads: ReadTerms, anchor_cot, grads, d_state, meta, c0, nc, split
) -> Tensor | None:  # fmt: skip
    """The recurrence of the wide-state backward over chunks c0 .. c0 + nc with ``split`` programs per
    (sequence, head), after :func:`~.wide_reads.launch_wide_read_backward` (``reads``): the state's
    cotangents ``d_state`` updated in place, dk, dv, dbp and the update's terms of the coefficients'
    cotangents written into ``grads`` (dq, dk, dv, dbp, dβ, df, dG, dm_end, ds_coef). Returns the key
    LayerNorm's dγ, db summed over the chunks ``[B, H, 2, D]`` (None without it)."""
    B, T, H = q.shape[:3]
    scalars, constants = meta
    BK, BD, NB, BHB = constants["BK"], constants["BD"], constants["NB"], constants["BHB"]
    DI, D = constants["DI"], constants["D"]

    def new(*shape: int) -> Tensor:
        return torch.empty(shape, device=q.device, dtype=torch.float32)

    has_mom = chunks[2].numel() > 0
    scratch = new(B * H, 2, BK, NB * BHB)
    # dΔ's shares by chunk parity; per chunk and program the update terms' shares (G's last row, s_coef,
    # then β_L, f_L, m_end from pass 3 and, at 2·BK + 4, from pass 5) and dk's share
    shares = (new(2, B * H, split, BK, BD), new(B * H, nc, split, 2 * BK + 8), new(B * H, nc, split, DI, BK))
    key_ln = new(B * H, nc, 2, BD)
    empty = q.new_empty(0)
    bp, ln_w, ln_b = (empty if t is None else t for t in (bp, ln_w, ln_b))
    _, dk, dv, dbp, dbeta, df, dG, dm_end, ds_coef = grads
    sizes = split_constants(split, NB)
    kw = {**constants, "num_warps": wide_num_warps(BD, "_wide_split_backward_kernel"), "HAS_MOM": has_mom}
    # one launch per chunk: Triton's binding once per variant
    first, later = (
        Relaunch(_wide_split_backward_kernel, (B * H, split), **kw, **sizes, FIRST=f) for f in (True, False)
    )
    for n in range(-1, nc):  # n = -1: pass 3 of the last chunk
        (first if n < 0 else later)(
            q, k, v, bp, ln_w, ln_b, *coef, *chunks, *anchor_cot, dv, dbp, *d_state, scratch,
            reads.blocks, reads.rows, *shares, key_ln, T, k.shape[1] - T, c0, max(n, 0), nc,
            coef[0].shape[2], *scalars,
        )  # fmt: skip
    _wide_split_backward_sums_kernel[(B * H, nc)](
        q, dk, dbeta, df, dG, dm_end, ds_coef, shares[1], shares[2], reads.rows, T, k.shape[1] - T, c0, nc,
        coef[0].shape[2], H=H, DI=DI, L=constants["L"], BL=constants["BL"], P=constants["P"], BK=BK, BD=BD,
        KB=constants["KB"], NI=constants["NI"], DOT=constants["DOT"], HAS_MOM=has_mom, SPLIT=split,
    )  # fmt: skip
    if not constants["LN"]:
        return None
    return key_ln.sum(1)[:, :, :D].reshape(B, H, 2, D)
