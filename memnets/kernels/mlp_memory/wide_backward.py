"""The wide-state variant of the MLP-memory backward kernel (the hidden width in blocks, the state and
its cotangents in global memory; the passes are described in
:mod:`memnets.kernels.mlp_memory.wide_forward`): one program per (sequence, head) with the reads in the
recurrence, where they cannot leave it (keys wider than values, Moneta's ℓ_q maps:
:func:`.wide_reads.splits_reads`); elsewhere :func:`launch_wide_backward` runs the reads' launch
(:mod:`.wide_reads`) and the split recurrence (:mod:`.wide_split_backward`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dual_form import inner, update_backward_t
from ..optional import or_empty
from ..precision import dot
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
    store_ln_grads,
)
from .config import SEGMENT_INTS, LaunchConfig, device_split
from .end_map import lq_grad_coef, lq_grad_dir, lq_scale_of
from .wide_blocks import chunk_rows, key_z2, layer1_block, layer1_t, query_keys, w1_block, w2_block
from .wide_forward import read_coefficients, update_coefficients, wide_meta
from .wide_maps import end_map_cotangent, token_layer1_backward, token_layer2_backward
from .wide_reads import launch_wide_read_backward, read_block, read_layer2, splits_reads
from .wide_split_backward import launch_wide_split_backward


@triton.jit
def momentum_cotangent(
    s, ds, sbase, cbase, offs, mask, d_deltaT, d_xT, xT, deltaT, b_s, dm, b_ds, DOT: tl.constexpr
):
    """A layer's momentum block S (chunk start) and the cotangent C of its chunk-end value S' = m_end S −
    Xᵀ (s_coef ⊙ δ), backward: (S, C, dm_end and ds_coef with the block's shares added, and the
    update's cotangents of δ and X). The chunk-start cotangent is m_end C plus the read's share and,
    with :func:`store_momentum_cotangent`, f_L C_W."""
    S = load_f32(s + sbase + offs, mask)
    C = tl.load(ds + cbase + offs, mask=mask, other=0.0)
    dm += inner(C, S)
    d_deltaT, d_xT, d_coef = update_backward_t(d_deltaT, d_xT, xT, deltaT, b_s, C, DOT)
    return S, C, dm, d_deltaT, d_xT, b_ds - d_coef


@triton.jit
def store_momentum_cotangent(ds, base, offs, mask, cS, cW, S, f_last, df_last):
    """Finish a momentum block's cotangent with W' = ... + f_L S's share (f_L C_W), store it over the
    chunk-end one, and return f_L's cotangent with ⟨C_W, S⟩ added."""
    df_last += inner(cW, S)
    cS += f_last * cW
    tl.debug_barrier()  # every thread has read the block's chunk-end cotangent
    tl.store(ds + base + offs, cS, mask=mask)
    return df_last


@triton.jit
def weight_cotangent(
    w, base, offs, mask, C, d_deltaT, d_xT, xT, deltaT, g_last, dg_last, dbeta_last, DOT: tl.constexpr
):
    """A layer's weight block W (chunk start, read again) and the cotangent C of its chunk-end value W' =
    β_L W [+ f_L S] − Xᵀ (g_last ⊙ δ), backward: (W, the update's cotangents of δ and X, and G's last
    row and β_L's cotangents with the block's shares added)."""
    d_deltaT, d_xT, d_coef = update_backward_t(d_deltaT, d_xT, xT, deltaT, g_last, C, DOT)
    W = load_f32(w + base + offs, mask)
    return W, d_deltaT, d_xT, dg_last - d_coef, dbeta_last + inner(C, W)


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_backward_kernel(
    q, k, v, bp, ln_w, ln_b, dy, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # the chunks' start states
    powers, w1_end, w2_end,  # with an ℓ_q map: the STORE recompute's power sums; END_MAP: the end weights
    tok_p1, tok_p2,  # with TOKEN_MAP: every token's power sums P1_t, P2_t (from the forward)
    dw1_anchor, dw2_anchor,  # the anchor's cotangents
    dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef,
    dw1, dw2, ds1, ds2, scratch,  # dw1 .. ds2: the state's cotangents, updated in place
    T, P0, C0, NC, NCT, p, eps, sharp, ln_eps, end_q, end_floor,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr, END_MAP: tl.constexpr,
    TOKEN_MAP: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n1 = DI * DH
    n2 = DH * D
    base1 = bh * n1  # this program's state cotangents in dw1, ds1 and dw2, ds2 (chunk end -> start)
    base2 = bh * n2
    li = tl.arange(0, BL)
    lmask = li < L
    lk = tl.arange(0, BK)
    lkmask = lk < P + L
    gmask = lmask[:, None] & lkmask[None, :]
    cols = tl.arange(0, BD)
    cmask = cols < D
    # scratch, per hidden block j (``[BHB, BK]`` tiles, transposed): the reads' dẐ1_j, δ1_j and the
    # cotangent of Z1_j, passed from pass 3 to pass 5
    sw = NB * BHB
    so = bh * 3 * BK * sw + lk[None, :] * sw + tl.arange(0, BHB)[:, None]  # [BHB, BK] tiles
    sq = bh * 3 * BK * sw + li[None, :] * sw + tl.arange(0, BHB)[:, None]  # [BHB, BL] tiles (dẐ1_j)
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    # Every product is hidden-major, as in the forward: the hidden block, a key block or the head dim is
    # M, the chunk's rows N (names ending in T are transposed tiles: ``[BHB, rows]``, ``[KB, rows]``
    # or ``[BD, rows]``).
    for ic in range(NC):
        c = NC - 1 - ic
        g = C0 + c  # the chunk's index in the sequence
        cc = bh * NCT + g  # index of this (batch, head, chunk) in the coefficients
        cb1 = (bh * NC + c) * n1  # this chunk's start state in w1_chunks, s1_chunks
        cb2 = (bh * NC + c) * n2  # and in w2_chunks, s2_chunks
        last = tl.minimum(T - g * L, L) - 1  # the chunk's last token (the tail chunk is short)
        is_last = li == last
        if END_MAP != 0:  # noqa: SIM102 (a compile-time branch: compiled out without the map)
            if (g + 1) * L <= T:  # a complete chunk: its end cotangents are the mapped weights'
                end_map_cotangent(
                    dw1, dw2, base1, base2, w1_chunks, w2_chunks, cb1 + n1, cb2 + n2, c, NC, w1_end, w2_end,
                    powers, (bh * NC + c) * 2, end_q, end_floor, D, DI, DH, KB, NI, BHB, NB, BD, END_MAP,
                )  # fmt: skip
                tl.debug_barrier()  # pass 3 reads the rewritten cotangents in other threads
        offs, mask, qvalid, qrow, koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, bp, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, BIAS, RES
        )
        b_beta, b_f, b_G = read_coefficients(beta, f, G, cc, L, P, BL, BK, HAS_MOM)
        g_last, beta_last, f_last, b_s, b_m = update_coefficients(
            beta, f, G, m_end, s_coef, cc, last, L, P, BK, HAS_MOM
        )
        # each layer's read coefficients and the key path's scales: Moneta's per-token map scales row t
        # of layer l's dual form by s(Al_t) and takes the key path at the chunk start's s(W)·W
        ks1 = 1.0  # constants the compiler folds without the map
        ks2 = 1.0
        bb1, bf1, bG1 = b_beta, b_f, b_G
        bb2, bf2, bG2 = b_beta, b_f, b_G
        if TOKEN_MAP != 0:
            pk1 = tl.load(powers + (bh * NC + c) * 2)
            pk2 = tl.load(powers + (bh * NC + c) * 2 + 1)
            ks1 = lq_scale_of(pk1, end_q, end_floor, TOKEN_MAP)
            ks2 = lq_scale_of(pk2, end_q, end_floor, TOKEN_MAP)
            p1t = tl.load(tok_p1 + cc * L + li, mask=lmask, other=0.0)
            p2t = tl.load(tok_p2 + cc * L + li, mask=lmask, other=0.0)
            s1t = lq_scale_of(p1t, end_q, end_floor, TOKEN_MAP)
            s2t = lq_scale_of(p2t, end_q, end_floor, TOKEN_MAP)
            bb1, bf1, bG1 = s1t * b_beta, s1t * b_f, s1t[:, None] * b_G
            bb2, bf2, bG2 = s2t * b_beta, s2t * b_f, s2t[:, None] * b_G
        # pass 1: the key path
        Z2 = ks2 * key_z2(
            k, krow, kvalid, w1_chunks, w2_chunks, cb1, cb2, 0, ks1,
            D, DI, DH, BK, BD, KB, NI, BHB, NB, ACT, DOT,
        )  # fmt: skip
        dd, dout, r, xk, rk = key_delta(
            Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )
        ddT = tl.trans(dd)

        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        qk = query_keys(q, k, qrow, qvalid, krow, kvalid, DI, KB, NI, BL, BK, DOT)
        qkG = qk * bG1
        qkGT = tl.trans(qkG)
        # pass 2: the reads' layer-2 inputs summed over the hidden blocks, then Ẑ2's terms on whole
        # rows (dΔ completed over the blocks in pass 3)
        b_dy, d_gamma, d_shift, b_dbeta, b_df, b_dG, dP, d_dd = read_layer2(
            w1_chunks, s1_chunks, w2_chunks, s2_chunks, dw1, ds1, cb1, cb2, base1, k, q, krow, kvalid,
            qrow, qvalid, ks1, ks2, dd, ddT, qkGT, bb1, bf1, bb2, bf2, bG2, b_dy, gamma, d_gamma, d_shift,
            cmask, ln_eps, D, DI, DH, KB, BHB, NI, NB, BD, BL, BK, ACT, DOT, LN, HAS_MOM,
        )  # fmt: skip
        dyT = tl.trans(b_dy)
        dPT = tl.trans(dP)
        dPq = tl.zeros([BL, BK], dtype=tl.float32)  # cotangent of Q Kᵀ ⊙ G, summed over the blocks
        d_ddT = tl.trans(d_dd)
        if HAS_MOM:
            b_ds = tl.zeros([BK], dtype=tl.float32)
            dm = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)
        if TOKEN_MAP != 0:
            # pass 3a: the reads' layer-1 coefficient cotangents, over the blocks, for the scales'
            # cotangents ds_t = β_t dβ̃_t + f_t df̃_t + Σ_s G[t, s] dG̃[t, s] (β̃ = s_t β, ...)
            ds2t = b_beta * b_dbeta + b_f * b_df + tl.sum(b_G * b_dG, 1)
            db1 = tl.zeros([BL], dtype=tl.float32)
            df1 = tl.zeros([BL], dtype=tl.float32)
            for j in range(NB):
                _, _, _, qw1T, qs1T, _, _, _, _, _, _, _, d1T, _, dz1T = read_block(
                    w1_chunks, s1_chunks, w2_chunks, s2_chunks, dw1, ds1, cb1, cb2, base1, j, k, q,
                    krow, kvalid, qrow, qvalid, ks1, ks2, ddT, dyT, dPT, qkGT, bb1, bf1, bb2, bf2,
                    D, DI, DH, KB, BHB, NI, BD, BL, BK, ACT, DOT, HAS_MOM, False,
                )  # fmt: skip
                db1 += tl.sum(dz1T * qw1T, 0)
                if HAS_MOM:
                    df1 += tl.sum(dz1T * qs1T, 0)
                dPq -= dot(tl.trans(dz1T), d1T, DOT)
            ds1t = b_beta * db1 + b_f * df1 + tl.sum(b_G * dPq * qk, 1)
            coef1 = lq_grad_coef(p1t, ds1t, end_q, end_floor, TOKEN_MAP)
            coef2 = lq_grad_coef(p2t, ds2t, end_q, end_floor, TOKEN_MAP)
            # the coefficients' true cotangents: each layer's scaled share (the scales' own terms are
            # added per block in pass 3)
            b_dbeta = s1t * db1 + s2t * b_dbeta
            b_df = s1t * df1 + s2t * b_df
            b_dG = s1t[:, None] * (dPq * qk) + s2t[:, None] * b_dG
            dks2 = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)  # the key path's scales' cotangents
            dks1 = dks2

        # pass 3: per hidden block, the reads' layer 1, the cotangents of δ1_j (from the reads and from
        # layer 1's chunk-end update, summed over the key blocks), layer 2's chunk-end update and δ1_j's
        # second-order terms; layer 1's own cotangents wait for pass 5, where the key blocks are the
        # outer loop (dq and dk sum over the hidden blocks)
        dg_last = tl.zeros([BK], dtype=tl.float32)
        dbeta_last = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)
        df_last = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)
        for j in range(NB):
            o2, m2 = w2_block(j, D, DH, BD, BHB)
            Z1T, AT, sgT, qw1T, qs1T, kcT, ksT, dbl, dml, dfl, W2, ET, d1T, a1T, dz1T = read_block(
                w1_chunks, s1_chunks, w2_chunks, s2_chunks, dw1, ds1, cb1, cb2, base1, j, k, q,
                krow, kvalid, qrow, qvalid, ks1, ks2, ddT, dyT, dPT, qkGT, bb1, bf1, bb2, bf2,
                D, DI, DH, KB, BHB, NI, BD, BL, BK, ACT, DOT, HAS_MOM, True,
            )  # fmt: skip
            dAT = dot(a1T, dP, DOT)
            # layer 1 of the reads: Ẑ1_j = β ⊙ (Q W1_j) [+ f ⊙ (Q S1_j)] − (Q Kᵀ ⊙ G) δ1_j (with the
            # map, its coefficients' cotangents are pass 3a's)
            if TOKEN_MAP == 0:
                b_dbeta += tl.sum(dz1T * qw1T, 0)
                if HAS_MOM:
                    b_df += tl.sum(dz1T * qs1T, 0)
                dPq -= dot(tl.trans(dz1T), d1T, DOT)
            d_d1T = -dot(dz1T, qkG, DOT)  # dδ1_jᵀ
            # layer 1's chunk-end update: its terms in δ1_j and the coefficients (from layer1_reads)
            d_d1T -= g_last[None, :] * kcT
            dg_last -= tl.sum(d1T * kcT, 0)
            dbeta_last += dbl
            if HAS_MOM:
                d_d1T -= b_s[None, :] * ksT
                b_ds -= tl.sum(d1T * ksT, 0)
                dm += dml
                df_last += dfl
            W2tok = tl.zeros([BHB, BD], dtype=tl.float32)  # the per-token map's shares of dW2_j, dS2_j
            S2tok = W2tok
            if TOKEN_MAP != 0:  # every token's accumulators of block j, back from their scales
                S2 = W2
                if HAS_MOM:
                    S2 = load_f32(s2_chunks + cb2 + o2, m2)
                W2tok, S2tok, dd2, dA2, dG2, db2, df2 = token_layer2_backward(
                    W2, S2, AT, dd, ddT, coef2, b_beta, b_f, b_G, end_q, L, BL, BD, BHB, BK, DOT, HAS_MOM
                )
                d_ddT += dd2
                dAT += dA2
                b_dG += dG2
                b_dbeta += db2
                b_df += df2
                for i in range(NI):
                    o1, m1, W1, S1 = layer1_block(w1_chunks, s1_chunks, cb1, i, j, DI, DH, KB, BHB, HAS_MOM)
                    dd1, dG1, db1, df1, _, _, _ = token_layer1_backward(
                        W1, S1, key_cols_t(k, krow, kvalid, i, DI, KB), d1T, coef1, b_beta, b_f, b_G, end_q,
                        L, BL, KB, BHB, BK, DOT, HAS_MOM, False,
                    )  # fmt: skip
                    d_d1T += dd1
                    b_dG += dG1
                    b_dbeta += db1
                    b_df += df1
                    if g == NCT - 1:  # the anchor is s(W1)·W1: its cotangent's share of s's
                        dks1 += inner(tl.load(dw1_anchor + base1 + o1, mask=m1, other=0.0), W1)
            # layer 2's chunk-end update, and δ1_j = (Δ W2_jᵀ) ⊙ σ'(Z1_j): its cotangent reaches Δ, W2_j
            # and Z1_j (second order)
            dET = d_d1T * sgT
            if HAS_MOM:
                S2, cS2, dm, d_ddT, dAT, b_ds = momentum_cotangent(
                    s2_chunks, ds2, cb2, base2, o2, m2, d_ddT, dAT, AT, ddT, b_s, dm, b_ds, DOT
                )
                cS2 = b_m * cS2 + dot(a1T, bf2[:, None] * b_dy, DOT) + S2tok
            cW2 = tl.load(dw2 + base2 + o2, mask=m2, other=0.0)
            if HAS_MOM:
                df_last = store_momentum_cotangent(ds2, base2, o2, m2, cS2, cW2, S2, f_last, df_last)
            W2, d_ddT, dAT, dg_last, dbeta_last = weight_cotangent(
                w2_chunks, cb2, o2, m2, cW2, d_ddT, dAT, AT, ddT, g_last, dg_last, dbeta_last, DOT
            )
            d_ddT += ks2 * dot(tl.trans(W2), dET, DOT)
            gW2 = beta_last * cW2 + dot(a1T, bb2[:, None] * b_dy, DOT) + ks2 * dot(dET, dd, DOT) + W2tok
            if g == NCT - 1:
                anchor2 = tl.load(dw2_anchor + base2 + o2, mask=m2, other=0.0)
                gW2 += ks2 * anchor2
                if TOKEN_MAP != 0:
                    dks2 += inner(anchor2, W2)
            if TOKEN_MAP != 0:  # E_j = s(W2) Δ W2_jᵀ: its share of the scale's cotangent, ⟨dE, E⟩ / s
                dks2 += inner(dET, ET) / ks2
            dZ1T = d_d1T * ET * act_grad2(Z1T, ACT) + dAT * sgT
            tl.debug_barrier()  # every thread has read layer 2's block j of dW2
            tl.store(scratch + sq + j * BHB, dz1T)
            tl.store(scratch + so + BK * sw + j * BHB, d1T)
            tl.store(scratch + so + 2 * BK * sw + j * BHB, dZ1T)
            tl.store(dw2 + base2 + o2, gW2, mask=m2)
        gofs = cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :]
        if TOKEN_MAP == 0:
            b_dG += dPq * qk
        dPq = dPq * bG1
        b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
        b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
        if HAS_MOM:
            b_df = tl.where(is_last, b_df + df_last, b_df)
            tl.store(dm_end + cc, dm)
            tl.store(df + cc * L + li, b_df, mask=lmask)
            tl.store(ds_coef + cc * (P + L) + lk, b_ds, mask=lkmask)

        # pass 4 (whole rows): Δ = [LN backward of] ℓ'(R) back to R and Z2
        dZ2, dr, d_gamma, d_shift = delta_backward(
            tl.trans(d_ddT), dd, dout, r, delta, xk, rk, gamma, d_gamma, d_shift, dbp, koffs, kmask, krow,
            kvalid, cmask, p, eps, sharp, D, BIAS, LN,
        )  # fmt: skip
        dZ2T = tl.trans(dZ2)
        coefk2 = 0.0
        if TOKEN_MAP != 0:  # Z2 = s(W2) A W2: the scale's cotangent complete, ⟨dZ2, Z2⟩ / s added
            coefk2 = lq_grad_coef(pk2, dks2 + inner(dZ2, Z2) / ks2, end_q, end_floor, TOKEN_MAP)
        tl.debug_barrier()  # pass 3's writes (scratch, dW2) are read back by other threads

        # pass 5: Z2 = Σ_j A_j W2_j back to W2_j and Z1_j, then per key block i layer 1's cotangents
        # (the reads', the chunk-end update's and the key path's) and the block's dq and dk
        for j in range(NB):
            o2, m2 = w2_block(j, D, DH, BD, BHB)
            Z1T = ks1 * layer1_t(w1_chunks, cb1, j, k, krow, kvalid, DI, DH, KB, BHB, NI, BK, DOT)
            W2 = load_f32(w2_chunks + cb2 + o2, m2)
            dZ1T = tl.load(scratch + so + 2 * BK * sw + j * BHB) + ks2 * dot(W2, dZ2T, DOT) * act_grad(
                Z1T, ACT
            )
            gW2 = tl.load(dw2 + base2 + o2, mask=m2, other=0.0) + ks2 * dot(act(Z1T, ACT), dZ2, DOT)
            if TOKEN_MAP != 0:  # the key path's W2 is s(W2)·W2: the scale's share
                gW2 += coefk2 * lq_grad_dir(W2, end_q)
                dks1 += inner(dZ1T, Z1T) / ks1
            tl.debug_barrier()  # every thread has read block j before it is overwritten
            tl.store(dw2 + base2 + o2, gW2, mask=m2)
            tl.store(scratch + so + 2 * BK * sw + j * BHB, dZ1T)
        coefk1 = 0.0
        if TOKEN_MAP != 0:
            coefk1 = lq_grad_coef(pk1, dks1, end_q, end_floor, TOKEN_MAP)
        tl.debug_barrier()  # the finished cotangents of Z1_j are read back by other threads
        for i in range(NI):
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
            b_dkT = dot(qT, dPq, DOT)
            b_dqT = dot(kT, tl.trans(dPq), DOT)
            for j in range(NB):
                o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
                dz1T = tl.load(scratch + sq + j * BHB)
                d1T = tl.load(scratch + so + BK * sw + j * BHB)
                dZ1T = tl.load(scratch + so + 2 * BK * sw + j * BHB)
                W1 = load_f32(w1_chunks + cb1 + o1, m1)
                cW1 = tl.load(dw1 + base1 + o1, mask=m1, other=0.0)
                b_dkT += ks1 * dot(W1, dZ1T, DOT) - dot(cW1, d1T * g_last[None, :], DOT)
                b_dqT += dot(W1, bb1[None, :] * dz1T, DOT)
                gW1 = beta_last * cW1 + dot(qT, tl.trans(bb1[None, :] * dz1T), DOT)
                gW1 += ks1 * dot(kT, tl.trans(dZ1T), DOT)
                if g == NCT - 1:
                    gW1 += ks1 * tl.load(dw1_anchor + base1 + o1, mask=m1, other=0.0)
                S1 = W1
                if HAS_MOM:
                    S1 = load_f32(s1_chunks + cb1 + o1, m1)
                    cS1 = tl.load(ds1 + base1 + o1, mask=m1, other=0.0)
                    b_dkT -= dot(cS1, d1T * b_s[None, :], DOT)
                    b_dqT += dot(S1, bf1[None, :] * dz1T, DOT)
                    cS1 = b_m * cS1 + f_last * cW1 + dot(qT, tl.trans(bf1[None, :] * dz1T), DOT)
                if TOKEN_MAP != 0:  # the key path's s(W1)·W1, and every token's accumulators
                    _, _, _, _, gW1t, gS1t, dkTt = token_layer1_backward(
                        W1, S1, kT, d1T, coef1, b_beta, b_f, b_G, end_q, L, BL, KB, BHB, BK, DOT, HAS_MOM, True,
                    )  # fmt: skip
                    gW1 += coefk1 * lq_grad_dir(W1, end_q) + gW1t
                    b_dkT += dkTt
                    if HAS_MOM:
                        cS1 += gS1t
                tl.debug_barrier()  # every thread has read block (i, j) of dW1 (and dS1)
                tl.store(dw1 + base1 + o1, gW1, mask=m1)
                if HAS_MOM:
                    tl.store(ds1 + base1 + o1, cS1, mask=m1)
            qoffs, qmask = col_block(qrow, qvalid, i * KB, DI, DI, KB)
            tl.store(dq + qoffs, tl.trans(b_dqT).to(dq.dtype.element_ty), mask=qmask)
            b_dk = tl.trans(b_dkT)
            if RES and DI == D:
                b_dk += dr  # M(k) = k + ...: the residual's direct path (wider keys: the caller's)
            if P == 0:
                doffs, dmask = col_block(krow, kvalid, i * KB, DI, DI, KB)
            else:  # key rows overlap the previous chunk's: one block per chunk, summed by the caller
                doffs, dmask = col_block(cc * (P + L) + lk, kvalid, i * KB, DI, DI, KB)
            tl.store(dk + doffs, b_dk.to(dk.dtype.element_ty), mask=dmask)
        if P == 0:
            tl.store(dv + koffs, (-dr).to(dv.dtype.element_ty), mask=kmask)
        else:
            voffs, vmask = col_block(cc * (P + L) + lk, kvalid, 0, D, D, BD)
            tl.store(dv + voffs, (-dr).to(dv.dtype.element_ty), mask=vmask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        tl.store(dG + gofs, b_dG, mask=gmask)
        tl.debug_barrier()  # the previous chunk's pass 3 reads these cotangents and rewrites scratch
    store_ln_grads(dln_w, dln_b, bh, cols, cmask, d_gamma, d_shift, D, LN)


def launch_wide_backward(
    q, k, v, bp, ln_w, ln_b, dy, coef, packing, chunks, carry, anchor_cot, grads, dln, config: LaunchConfig, c0, nc,
    end=(), token_powers=(),
) -> tuple[Tensor, ...]:  # fmt: skip
    """:func:`~memnets.kernels.mlp_memory.backward.launch_backward` for the wide-state kernel (a dense
    batch; the state cotangents are updated in place in a copy of ``carry``). ``chunks``: the STORE
    recompute's start states and power sums (:func:`~.wide_forward.launch_wide_forward`); with Moneta's
    chunk-end map ``end`` holds the weights (W1, W2) after the chunks, the same recompute's state; with
    its per-token map ``token_powers`` holds every token's power sums P1_t, P2_t (the forward's)."""
    B, T, H = q.shape[:3]
    d_state = tuple(t.float().clone(memory_format=torch.contiguous_format) for t in carry)
    scalars, constants = wide_meta(q, carry[0], carry[1], ln_w, config)
    if config.end_map and len(end) != 2:
        raise ValueError("mlp_memory_wide_bwd: the chunk-end map needs the weights after the chunks (end)")
    if config.token_map and len(token_powers) != 2:
        raise ValueError(
            "mlp_memory_wide_bwd: the per-token map needs every token's power sums (token_powers)"
        )
    empty = q.new_empty(0)
    if splits_reads(config.token_map, constants["DI"], constants["D"], config.end_map):
        # the reads' backward first, all the segment's chunks at once, then the recurrence split over
        # the hidden blocks as the forward is
        meta = (scalars, constants)
        reads = launch_wide_read_backward(q, k, v, bp, ln_w, ln_b, dy, coef, chunks[:4], grads, meta, c0, nc)
        split = device_split(q.device, B * H, constants["NB"])
        key_ln = launch_wide_split_backward(
            q, k, v, bp, ln_w, ln_b, coef, chunks[:4], reads, anchor_cot, grads, d_state, meta, c0, nc, split
        )
        if key_ln is not None:  # the key path's and the reads' LayerNorm dγ, db of every chunk
            D = constants["D"]
            parts = key_ln + reads.ln_parts.sum(1)[:, :, :D].reshape(B, H, 2, D)
            dln[0].copy_(parts[:, :, 0])
            dln[1].copy_(parts[:, :, 1])
        return d_state
    scratch = q.new_empty(B * H, 3, constants["BK"], constants["NB"] * constants["BHB"], dtype=torch.float32)
    _wide_backward_kernel[(B * H,)](
        q, k, v, *or_empty(empty, bp, ln_w, ln_b), dy, *coef, *chunks, *(end or (empty, empty)),
        *(token_powers or (empty, empty)), *anchor_cot, *grads[:4], *dln, *grads[4:], *d_state, scratch,
        T, k.shape[1] - T, c0, nc, coef[0].shape[2], *scalars, config.end_q, config.end_floor, **constants,
        HAS_MOM=carry[2].numel() > 0, END_MAP=config.end_map, TOKEN_MAP=config.token_map,
    )  # fmt: skip
    return d_state
