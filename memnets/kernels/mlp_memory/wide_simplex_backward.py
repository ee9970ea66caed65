"""The backward kernel of Memora's softmax retention in the wide-state layout (:mod:`.wide_simplex`): the
chunks of a recompute segment in reverse from their stored start states (logits and momenta), as
:mod:`.wide_backward`, the state cotangents updated in place block by block.

Per chunk, after the forward's passes 0-1 again (both key paths' Z2 and Δ):

R0. every token's read statistics over the blocks (its layer-2 running column maximum, sum and
    numerator, as the forward's pass 2): the pre-LayerNorm reads y_t, then the read's LayerNorm backward;
R1. per block j: the chunk-end update's backward from the chunk-end cotangents, then every token's read
    backward through its own weights c·Softmax(A_t) (layer 1's softmax is block-local; layer 2's needs per
    column Σ_h W2_t ⊙ dW2_t = y_t ⊙ dy_t, the read itself) and its accumulator A_t to the block's
    chunk-start logits and momenta, the key path's rows of the block (δ1_j, A_j: to scratch) and the
    whole-row sums (Δ, K, G, β, f, q);
KP. each key path backward: a pass over the blocks for dΔ's share (dE_j K2_j) and the LayerNorm and bias
    backward on whole rows (:func:`path_rows_backward`), then a pass for the rest (:func:`path_block`),
    ending in Softmax's backward of the path's weights. Layer 2's softmax crosses the blocks,
    but its per-column sum Σ_h K2 ⊙ gK2 is known before the second pass without a pass of its own:
    gK2 = dEᵀ Δ + Aᵀ dZ2 (+ the anchor's), so Σ_h K2 ⊙ gK2 = Σ_s Δ ⊙ (dE K2) + Σ_s dZ2 ⊙ Z2, both whole-row
    sums the first pass and the rows' backward give.
    With the lag token the second key path (rows 1..) goes first: its weights' cotangent, through the lag
    token's accumulator, reaches the logits, the momenta, and row 0 of the first key path (scratch column
    0, the whole-row sums), whose backward follows. Without it one key path covers every row.

Scratch per program: two ``[BHB, BK]`` tiles per block (the cotangents of δ1_jᵀ and A_jᵀ), written by R1."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dual_form import inner
from ..optional import or_empty
from ..precision import dot
from .common import (
    act,
    act_grad,
    act_grad2,
    delta_backward,
    key_cols_t,
    ln_params,
    read_ln_backward,
    store_ln_grads,
)
from .config import SEGMENT_INTS, LaunchConfig
from .simplex import simplex, simplex_backward
from .token_state import row_of
from .wide_blocks import chunk_rows, token_layer1_shares, token_layer2_shares
from .wide_forward import read_coefficients, update_coefficients
from .wide_simplex import (
    block_rows,
    key_paths,
    load_block,
    read_block,
    simplex_wide_meta,
    soft_block,
    token_block,
)


@triton.jit
def accumulator_backward(C1, C2, g, X1, X2, kT, AT, d1T, ddT, DOT: tl.constexpr):
    """Block j of an accumulator X1' = b X1 [+ f S1] − Kᵀ (g ⊙ δ1_j), X2' = b X2 [+ f S2] − A_jᵀ (g ⊙ Δ)
    (a token's, the lag token's, the chunk-end update's) backward from the cotangents C1 ``[KB, BHB]``, C2
    ``[BHB, BD]`` of X1', X2': the shares of δ1_jᵀ and A_jᵀ ``[BHB, BK]``, of Δᵀ and Kᵀ ``[BD, BK]`` (sums
    over the blocks), of g ``[BK]``, and ⟨C1, X1⟩ + ⟨C2, X2⟩ (b's)."""
    d_d1T, dkT, dg1 = token_layer1_shares(C1, kT, d1T, g, DOT)
    d_ddT, dAT, dg2 = token_layer2_shares(C2, AT, ddT, g, DOT)
    return d_d1T, d_ddT, dAT, dkT, dg1 + dg2, inner(C1, X1) + inner(C2, X2)


@triton.jit
def path_block_backward(Kw1, Kw2, Z1T, ET, kT, dd, dZ2T, d_d1T, dAT, colsum, a1, a2, scale,
                        ACT: tl.constexpr, DOT: tl.constexpr):  # fmt: skip
    """Block j of a key path (weights Kw1, Kw2 = c·Softmax of their logits, Z1_jᵀ, E_jᵀ = Kw2 Δᵀ) backward
    from the cotangents of its rows' δ1_jᵀ and A_jᵀ (zero outside the path's rows), of its Z2ᵀ ``[BD, BK]``
    (from the rows' backward) and of the weights themselves (``a1``, ``a2``: the anchor's, or zeros): the
    keys' share ``[BD, BK]`` and the cotangents of the logits through Softmax, layer 2's with its column
    sums Σ_h Kw2 ⊙ gK2 given (``colsum``)."""
    sg = act_grad(Z1T, ACT)
    dET = d_d1T * sg
    dAT = dAT + dot(Kw2, dZ2T, DOT)
    gK2 = dot(dET, dd, DOT) + dot(act(Z1T, ACT), tl.trans(dZ2T), DOT) + a2
    dZ1T = d_d1T * ET * act_grad2(Z1T, ACT) + dAT * sg
    gK1 = dot(kT, tl.trans(dZ1T), DOT) + a1
    C1 = simplex_backward(Kw1, gK1, scale)
    C2 = Kw2 * (gK2 - colsum[None, :] / scale)
    return dot(Kw1, dZ1T, DOT), C1, C2


@triton.jit
def path_rows_backward(
    w1c, w2c, s1c, s2c, cb1, cb2, dw2_anchor, base2, scratch, so, kT, dd, ddT, ddlT, top2, sum2, ml, sl, scale,
    beta0, f0, g0, d_ddT, rows, on_anchor, dd_p, dout_p, r_p, xk_p, rk_p, Z2_p, delta, gamma, d_gamma, d_shift,
    dbp, koffs, kmask, krow, kvalid, cmask, p, eps, sharp,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NB: tl.constexpr,
    BD: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr,
    LN: tl.constexpr, HAS_MOM: tl.constexpr, LAG: tl.constexpr, SECOND: tl.constexpr,
):  # fmt: skip
    """A key path's backward on whole rows (the second path's with ``SECOND``, else the first's; its
    ``rows``, its Δ, ℓ'(R), R, LayerNorm statistics and Z2 given): a pass over the blocks for dΔ's share
    dE K2 (dE_j = dδ1_j ⊙ σ'(Z1_j), from the scratch) and the anchor's Σ_h K2 ⊙ a2 (where ``on_anchor``),
    then the bias and LayerNorm backward. Returns dZ2ᵀ, dR, the LayerNorm's sums and layer 2's column
    sums Σ_h K2 ⊙ gK2 = Σ_s Δ ⊙ (dE K2) + Σ_s dZ2 ⊙ Z2 (+ the anchor's)."""
    dEK2T = tl.zeros([BD, BK], dtype=tl.float32)
    a_sum = tl.zeros([BD], dtype=tl.float32)
    for j in range(NB):
        _o1, mk1, o2, mk2, W1, W2, S1, S2 = load_block(w1c, w2c, s1c, s2c, cb1, cb2, j, D, DI, DH, KB, BHB, BD,
                                                       HAS_MOM)  # fmt: skip
        _k1, K2, Z1T, _e, _l1, L2, Z1lT, _el, _at, _d1 = block_rows(
            W1, W2, S1, S2, kT, dd, ddT, ddlT, top2, sum2, ml, sl, mk1, mk2, scale, beta0, f0, g0,
            ACT, DOT, HAS_MOM, LAG,
        )  # fmt: skip
        if SECOND:
            K2 = L2
            Z1T = Z1lT
        dET = tl.where(rows[None, :], tl.load(scratch + so + j * BHB), 0.0) * act_grad(Z1T, ACT)
        dEK2T += dot(tl.trans(K2), dET, DOT)
        a2 = tl.where(on_anchor, tl.load(dw2_anchor + base2 + o2, mask=mk2, other=0.0), 0.0)
        a_sum += tl.sum(K2 * a2, 0)
    keep = rows[:, None]
    dZ2, dr, d_gamma, d_shift = delta_backward(
        tl.where(keep, tl.trans(d_ddT + dEK2T), 0.0), dd_p, dout_p, r_p, delta, xk_p, rk_p, gamma, d_gamma,
        d_shift, dbp, koffs, kmask & keep, krow, kvalid & rows, cmask, p, eps, sharp, D, BIAS, LN,
    )  # fmt: skip
    colsum = tl.sum(dd_p * tl.trans(dEK2T), 0) + tl.sum(dZ2 * Z2_p, 0) + a_sum
    return tl.trans(dZ2), dr, d_gamma, d_shift, colsum


@triton.jit
def path_block(
    w1c, w2c, s1c, s2c, cb1, cb2, dw1_anchor, dw2_anchor, base1, base2, scratch, so, sw, j, kT, dd, ddT, ddl,
    ddlT, top2, sum2, ml, sl, scale, beta0, f0, g0, dZ2T, rows, on_anchor, colsum,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, BD: tl.constexpr,
    BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr, LAG: tl.constexpr,
    SECOND: tl.constexpr,
):  # fmt: skip
    """Block j of a key path's second pass (the second path's with ``SECOND``): :func:`path_block_backward`
    at the path's weights, from the scratch's cotangents on the path's ``rows`` and the anchor's where
    ``on_anchor``. Returns the block's layout and chunk-start state, the first path's Z1_jᵀ and E_jᵀ, the
    scratch tiles, the keys' share and the cotangents C1, C2 of the path's logits."""
    o1, mk1, o2, mk2, W1, W2, S1, S2 = load_block(
        w1c, w2c, s1c, s2c, cb1, cb2, j, D, DI, DH, KB, BHB, BD, HAS_MOM
    )
    K1, K2, Z1T, ET, L1, L2, Z1lT, ElT, _at, _d1 = block_rows(
        W1, W2, S1, S2, kT, dd, ddT, ddlT, top2, sum2, ml, sl, mk1, mk2, scale, beta0, f0, g0, ACT, DOT, HAS_MOM, LAG
    )  # fmt: skip
    s_d1T = tl.load(scratch + so + j * BHB)
    s_dAT = tl.load(scratch + so + BK * sw + j * BHB)
    a1 = tl.where(on_anchor, tl.load(dw1_anchor + base1 + o1, mask=mk1, other=0.0), 0.0)
    a2 = tl.where(on_anchor, tl.load(dw2_anchor + base2 + o2, mask=mk2, other=0.0), 0.0)
    P1, P2, PZ, PE, Pdd = K1, K2, Z1T, ET, dd
    if SECOND:
        P1, P2, PZ, PE, Pdd = L1, L2, Z1lT, ElT, ddl
    dk_j, C1, C2 = path_block_backward(
        P1, P2, PZ, PE, kT, Pdd, dZ2T, tl.where(rows[None, :], s_d1T, 0.0), tl.where(rows[None, :], s_dAT, 0.0),
        colsum, a1, a2, scale, ACT, DOT,
    )  # fmt: skip
    return o1, mk1, o2, mk2, W1, W2, S1, S2, Z1T, ET, s_d1T, s_dAT, dk_j, C1, C2


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_simplex_backward_kernel(
    q, k, v, bp, ln_w, ln_b, dy, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # the chunks' start states (logits, momenta)
    dw1_anchor, dw2_anchor,  # the anchor's cotangents
    dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef,
    dw1, dw2, ds1, ds2, scratch,  # dw1 .. ds2: the state's cotangents, updated in place
    T, C0, NC, NCT, p, eps, sharp, ln_eps, scale,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NB: tl.constexpr,
    BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr,
    RES: tl.constexpr, HAS_MOM: tl.constexpr, LAG: tl.constexpr,
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
    lkmask = lk < L
    cols = tl.arange(0, BD)
    cmask = cols < D
    sw = NB * BHB  # scratch: the cotangents of δ1_jᵀ and A_jᵀ, [BHB, BK] tiles per block
    so = bh * 2 * BK * sw + lk[None, :] * sw + tl.arange(0, BHB)[:, None]
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    for ic in range(NC):
        c = NC - 1 - ic
        g = C0 + c  # the chunk's index in the sequence
        cc = bh * NCT + g  # index of this (batch, head, chunk) in the coefficients
        cb1 = (bh * NC + c) * n1  # this chunk's start state in w1_chunks, s1_chunks
        cb2 = (bh * NC + c) * n2  # and in w2_chunks, s2_chunks
        last = tl.minimum(T - g * L, L) - 1  # the chunk's last token (the tail chunk is short)
        is_last = li == last
        offs, mask, _qvalid, _qrow, koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, bp, b, g, h, T, 0, H, D, DI, L, 0, BL, BK, BD, BIAS, RES
        )
        kT = key_cols_t(k, krow, kvalid, 0, DI, KB)
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        b_beta, b_f, b_G = read_coefficients(beta, f, G, cc, L, 0, BL, BK, HAS_MOM)
        beta0 = row_of(b_beta, li == 0)
        f0 = row_of(b_f, li == 0)
        g0 = row_of(b_G, (li == 0)[:, None])
        g_last, beta_last, f_last, b_s, b_m = update_coefficients(beta, f, G, m_end, s_coef, cc, last, L, 0, BK,
                                                                  HAS_MOM)  # fmt: skip
        top2, sum2, Z2, dd, dout, r, xk, rk, ml, sl, Z2l, ddl, doutl, rl, xkl, rkl = key_paths(
            k, kT, krow, kvalid, w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2, b_kr, b_v, delta, kmask,
            cmask, gamma, shift, p, eps, sharp, ln_eps, scale, beta0, f0, g0,
            D, DI, DH, KB, BHB, NB, BD, BK, ACT, DOT, BIAS, LN, RES, HAS_MOM, LAG,
        )  # fmt: skip
        ddT = tl.trans(dd)
        ddlT = tl.trans(ddl)
        lag_row = lk == 0
        dd_mix = tl.where(lag_row[:, None], dd, ddl)  # the rows the update and the reads take
        ddT_mix = tl.trans(dd_mix)

        # R0: every token's read statistics, the pre-LayerNorm reads, the read's LayerNorm backward
        top = tl.full([BL, BD], float("-inf"), tl.float32)
        total = tl.zeros([BL, BD], dtype=tl.float32)
        num = tl.zeros([BL, BD], dtype=tl.float32)
        for j in range(NB):
            _o1, mk1, _o2, mk2, W1, W2, S1, S2 = load_block(w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2,
                                                          j, D, DI, DH, KB, BHB, BD, HAS_MOM)  # fmt: skip
            _k1, _k2, _z1, _e, _l1, _l2, _z1l, _el, AT, d1T = block_rows(
                W1, W2, S1, S2, kT, dd, ddT, ddlT, top2, sum2, ml, sl, mk1, mk2, scale, beta0, f0, g0,
                ACT, DOT, HAS_MOM, LAG,
            )  # fmt: skip
            top, total, num = read_block(
                W1, W2, S1, S2, kT, AT, d1T, dd_mix, b_beta, b_f, b_G, b_q, top, total, num, mk1, mk2, scale,
                L, BL, ACT, DOT, HAS_MOM,
            )  # fmt: skip
        y_pre = scale * num / tl.where(total > 0, total, 1.0)
        if LN:
            b_dy, dgm, dsh = read_ln_backward(y_pre, b_dy, gamma, cmask, D, ln_eps)
            d_gamma += dgm
            d_shift += dsh

        # R1: per block, the chunk-end update's and the reads' backward
        b_dq = tl.zeros([BL, BD], dtype=tl.float32)
        d_ddT = tl.zeros([BD, BK], dtype=tl.float32)  # the cotangents of the (mixed) rows' Δᵀ and Kᵀ
        dkT = tl.zeros([BD, BK], dtype=tl.float32)
        b_dG = tl.zeros([BL, BK], dtype=tl.float32)
        b_dbeta = tl.zeros([BL], dtype=tl.float32)
        b_df = tl.zeros([BL], dtype=tl.float32)
        b_ds = tl.zeros([BK], dtype=tl.float32)
        dm = tl.sum(b_ds, 0)
        for j in range(NB):
            o1, mk1, o2, mk2, W1, W2, S1, S2 = load_block(w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2, j,
                                                          D, DI, DH, KB, BHB, BD, HAS_MOM)  # fmt: skip
            _k1, _k2, _z1, _e, _l1, _l2, _z1l, _el, AT, d1T = block_rows(
                W1, W2, S1, S2, kT, dd, ddT, ddlT, top2, sum2, ml, sl, mk1, mk2, scale, beta0, f0, g0,
                ACT, DOT, HAS_MOM, LAG,
            )  # fmt: skip
            _o1, _m1, _o2, _m2, cW1, cW2, cS1, cS2 = load_block(dw1, dw2, ds1, ds2, base1, base2, j,
                                                              D, DI, DH, KB, BHB, BD, HAS_MOM)  # fmt: skip
            # the chunk-end update W' = β_L W [+ f_L S] − ..., S' = m S − ... (coefficients G[last, :], s)
            d_d1T, e2, dAT, e4, dgl, dbl = accumulator_backward(cW1, cW2, g_last, W1, W2, kT, AT, d1T,
                                                                ddT_mix, DOT)  # fmt: skip
            d_ddT += e2
            dkT += e4
            b_dG = tl.where(is_last[:, None], b_dG + dgl[None, :], b_dG)
            b_dbeta = tl.where(is_last, b_dbeta + dbl, b_dbeta)
            gW1 = beta_last * cW1
            gW2 = beta_last * cW2
            gS1 = gW1
            gS2 = gW2
            if HAS_MOM:
                b_df = tl.where(is_last, b_df + inner(cW1, S1) + inner(cW2, S2), b_df)
                e1, e2, e3, e4, dgs, dms = accumulator_backward(cS1, cS2, b_s, S1, S2, kT, AT, d1T, ddT_mix,
                                                                DOT)  # fmt: skip
                d_d1T += e1
                d_ddT += e2
                dAT += e3
                dkT += e4
                b_ds += dgs
                dm += dms
                gS1 = f_last * cW1 + b_m * cS1
                gS2 = f_last * cW2 + b_m * cS2
            for t in range(L):  # the reads: y_t = σ(q_t W1_t) W2_t, W_t = c·Softmax(A_t)
                at = li == t
                beta_t = row_of(b_beta, at)
                f_t = row_of(b_f, at)
                g_t = row_of(b_G, at[:, None])
                A1t, A2t = token_block(W1, W2, S1, S2, kT, AT, d1T, dd_mix, beta_t, f_t, g_t, DOT, HAS_MOM)
                W1t = simplex(A1t, mk1, scale)
                W2t = soft_block(A2t, mk2, row_of(top, at[:, None]), row_of(total, at[:, None]), scale)
                q_t = row_of(b_q, at[:, None])
                dy_t = row_of(b_dy, at[:, None])
                z = tl.sum(q_t[:, None] * W1t, 0)
                dz = tl.sum(W2t * dy_t[None, :], 1) * act_grad(z, ACT)
                b_dq = tl.where(at[:, None], b_dq + tl.sum(W1t * dz[None, :], 1)[None, :], b_dq)
                C1 = simplex_backward(W1t, q_t[:, None] * dz[None, :], scale)
                # layer 2's column sums Σ_h W2_t ⊙ (σ(z) ⊗ dy_t) = y_t ⊙ dy_t: the read itself
                C2 = W2t * (
                    act(z, ACT)[:, None] * dy_t[None, :]
                    - (row_of(y_pre, at[:, None]) * dy_t / scale)[None, :]
                )
                e1, e2, e3, e4, dgt, dbt = accumulator_backward(C1, C2, g_t, W1, W2, kT, AT, d1T, ddT_mix,
                                                                DOT)  # fmt: skip
                d_d1T += e1
                d_ddT += e2
                dAT += e3
                dkT += e4
                b_dG = tl.where(at[:, None], b_dG + dgt[None, :], b_dG)
                b_dbeta = tl.where(at, b_dbeta + dbt, b_dbeta)
                gW1 += beta_t * C1
                gW2 += beta_t * C2
                if HAS_MOM:
                    b_df = tl.where(at, b_df + inner(C1, S1) + inner(C2, S2), b_df)
                    gS1 += f_t * C1
                    gS2 += f_t * C2
            tl.store(scratch + so + j * BHB, d_d1T)
            tl.store(scratch + so + BK * sw + j * BHB, dAT)
            tl.debug_barrier()  # every thread has read block j's chunk-end cotangents before they are overwritten
            _store_cotangents(dw1, dw2, ds1, ds2, base1, base2, o1, mk1, o2, mk2, gW1, gW2, gS1, gS2, HAS_MOM)
        tl.debug_barrier()  # the key paths' passes read the scratch and the cotangents in other threads

        # KP: the key paths' backward; the anchor's cotangent joins the path whose weights it holds
        anchor_here = (last * 0 + g) == NCT - 1  # (a tensor: a mask in the interpreter too)
        on_lag = anchor_here & (last > 0)
        dr = tl.zeros([BK, BD], dtype=tl.float32)
        if LAG:
            rest = lkmask & (lk > 0)
            dz2lT, drl, d_gamma, d_shift, colsum = path_rows_backward(
                w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2, dw2_anchor, base2,
                scratch, so, kT, dd, ddT, ddlT, top2, sum2, ml, sl, scale, beta0, f0, g0, d_ddT, rest,
                on_lag, ddl, doutl, rl, xkl, rkl, Z2l, delta, gamma, d_gamma, d_shift, dbp, koffs, kmask, krow,
                kvalid, cmask, p, eps, sharp, D, DI, DH, KB, BHB, NB, BD, BK, ACT, DOT, BIAS, LN, HAS_MOM, LAG, True,
            )  # fmt: skip
            dr = tl.where(rest[:, None], drl, dr)
            # the second path's weights: through the lag token's accumulator (row 0 of the first path)
            for j in range(NB):
                o1, mk1, o2, mk2, W1, W2, S1, S2, Z1T, ET, s_d1T, s_dAT, dk_j, CL1, CL2 = path_block(
                    w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2, dw1_anchor, dw2_anchor, base1, base2,
                    scratch, so, sw, j, kT, dd, ddT, ddl, ddlT, top2, sum2, ml, sl, scale, beta0, f0, g0, dz2lT,
                    rest, on_lag, colsum, D, DI, DH, KB, BHB, BD, BK, ACT, DOT, HAS_MOM, LAG, True,
                )  # fmt: skip
                dkT += dk_j
                AT1 = act(Z1T, ACT)
                d1T1 = ET * act_grad(Z1T, ACT)
                e1, e2, e3, e4, dg0, db0 = accumulator_backward(CL1, CL2, g0, W1, W2, kT, AT1, d1T1, ddT, DOT)
                d_ddT += e2
                dkT += e4
                b_dG = tl.where((li == 0)[:, None], b_dG + dg0[None, :], b_dG)
                b_dbeta = tl.where(li == 0, b_dbeta + db0, b_dbeta)
                if HAS_MOM:
                    b_df = tl.where(li == 0, b_df + inner(CL1, S1) + inner(CL2, S2), b_df)
                _o1, _m1, _o2, _m2, cW1, cW2, cS1, cS2 = load_block(dw1, dw2, ds1, ds2, base1, base2, j,
                                                                  D, DI, DH, KB, BHB, BD, HAS_MOM)  # fmt: skip
                tl.debug_barrier()  # every thread has read what it rewrites below
                tl.store(scratch + so + j * BHB, s_d1T + tl.where(lag_row[None, :], e1, 0.0))
                tl.store(scratch + so + BK * sw + j * BHB, s_dAT + tl.where(lag_row[None, :], e3, 0.0))
                _store_cotangents(dw1, dw2, ds1, ds2, base1, base2, o1, mk1, o2, mk2, cW1 + beta0 * CL1,
                                  cW2 + beta0 * CL2, cS1 + f0 * CL1, cS2 + f0 * CL2, HAS_MOM)  # fmt: skip
            tl.debug_barrier()  # the first path reads row 0's scratch and the cotangents
            first_rows = lag_row
            on_first = anchor_here & (last == 0)
        else:
            first_rows = lkmask
            on_first = anchor_here
        dz2T, dr1, d_gamma, d_shift, colsum = path_rows_backward(
            w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2, dw2_anchor, base2,
            scratch, so, kT, dd, ddT, ddlT, top2, sum2, ml, sl, scale, beta0, f0, g0, d_ddT, first_rows,
            on_first, dd, dout, r, xk, rk, Z2, delta, gamma, d_gamma, d_shift, dbp, koffs, kmask, krow,
            kvalid, cmask, p, eps, sharp, D, DI, DH, KB, BHB, NB, BD, BK, ACT, DOT, BIAS, LN, HAS_MOM, LAG, False,
        )  # fmt: skip
        dr = tl.where(first_rows[:, None], dr1, dr)
        for j in range(NB):  # the first path's weights: Softmax's backward to the chunk-start logits
            o1, mk1, o2, mk2, _w1, _w2, _s1, _s2, _z1, _e, _sd, _sa, dk_j, C1, C2 = path_block(
                w1_chunks, w2_chunks, s1_chunks, s2_chunks, cb1, cb2, dw1_anchor, dw2_anchor, base1, base2,
                scratch, so, sw, j, kT, dd, ddT, ddl, ddlT, top2, sum2, ml, sl, scale, beta0, f0, g0, dz2T,
                first_rows, on_first, colsum, D, DI, DH, KB, BHB, BD, BK, ACT, DOT, HAS_MOM, LAG, False,
            )  # fmt: skip
            dkT += dk_j
            cW1 = tl.load(dw1 + base1 + o1, mask=mk1, other=0.0)
            cW2 = tl.load(dw2 + base2 + o2, mask=mk2, other=0.0)
            tl.debug_barrier()  # every thread has read the blocks it rewrites
            tl.store(dw1 + base1 + o1, cW1 + C1, mask=mk1)
            tl.store(dw2 + base2 + o2, cW2 + C2, mask=mk2)
        tl.debug_barrier()  # the next chunk's passes read the cotangents and the scratch

        b_dk = tl.trans(dkT)
        if RES:
            b_dk += dr  # M(k) = k + ...: the residual's direct path
        tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        tl.store(dk + koffs, b_dk.to(dk.dtype.element_ty), mask=kmask)
        tl.store(dv + koffs, (-dr).to(dv.dtype.element_ty), mask=kmask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        tl.store(dG + cc * L * L + li[:, None] * L + lk[None, :], b_dG, mask=lmask[:, None] & lkmask[None, :])
        if HAS_MOM:
            tl.store(df + cc * L + li, b_df, mask=lmask)
            tl.store(dm_end + cc, dm)
            tl.store(ds_coef + cc * L + lk, b_ds, mask=lkmask)
    store_ln_grads(dln_w, dln_b, bh, cols, cmask, d_gamma, d_shift, D, LN)


@triton.jit
def _store_cotangents(dw1, dw2, ds1, ds2, base1, base2, o1, mk1, o2, mk2, gW1, gW2, gS1, gS2,
                      HAS_MOM: tl.constexpr):  # fmt: skip
    tl.store(dw1 + base1 + o1, gW1, mask=mk1)
    tl.store(dw2 + base2 + o2, gW2, mask=mk2)
    if HAS_MOM:
        tl.store(ds1 + base1 + o1, gS1, mask=mk1)
        tl.store(ds2 + base2 + o2, gS2, mask=mk2)


def launch_wide_simplex_backward(
    q, k, v, bp, ln_w, ln_b, dy, coef, packing, chunks, carry, anchor_cot, grads, dln, config: LaunchConfig, c0, nc
) -> tuple[Tensor, ...]:  # fmt: skip
    """:func:`~.wide_backward.launch_wide_backward` for Memora's softmax retention (same arguments and
    results; ``chunks``: the STORE recompute's four start-state tensors)."""
    B, T, H = q.shape[:3]
    d_state = tuple(t.float().clone(memory_format=torch.contiguous_format) for t in carry)
    scalars, constants = simplex_wide_meta(q, carry[0], carry[1], ln_w, config)
    scratch = q.new_empty(B * H, 2, constants["BK"], constants["NB"] * constants["BHB"], dtype=torch.float32)
    empty = q.new_empty(0)
    _wide_simplex_backward_kernel[(B * H,)](
        q, k, v, *or_empty(empty, bp, ln_w, ln_b), dy, *coef, *chunks[:4], *anchor_cot, *grads[:4], *dln,
        *grads[4:], *d_state, scratch, T, c0, nc, coef[0].shape[2], *scalars, config.simplex_scale, **constants,
        HAS_MOM=carry[2].numel() > 0, LAG=config.lag,
    )  # fmt: skip
    return d_state
