"""The backward kernel of Memora's softmax retention (:mod:`.simplex`): the tiles of a checkpoint segment
in reverse from their stored start states, as :mod:`.backward`, with every token's read taken back
through its own weights c·Softmax(A_t) to its accumulator A_t and from there (:mod:`.token_state`) to
the tile-start state, the key path's rows and the coefficients. With the lag token the key path's rows
come from two weight sets, the chunk start's (row 0 of its first tile) and those after the lag token
(the rest): their backward runs in that order, the second set's cotangent reaching the first through
the lag token's accumulator."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..optional import or_empty
from .common import (
    act,
    act_grad,
    key_base,
    key_path,
    key_path_backward,
    ln_params,
    load_matrices,
    mat_block,
    read_ln_backward,
    sequence_bounds,
    store_ln_grads,
    store_matrices,
    tile_end_backward,
    tile_rows,
)
from .config import SEGMENT_INTS, LaunchConfig
from .simplex import coefficient_rows, lag_weights, simplex, simplex_backward, simplex_meta, simplex_reads
from .token_state import row_of, token_accumulators, token_accumulators_backward


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _simplex_backward_kernel(
    q, k, v, bp, ln_w, ln_b, dy, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # every tile's start state
    dw1_final, dw2_final, ds1_final, ds2_final, dw1_anchor, dw2_anchor,  # the outputs' cotangents
    dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef, dw1_init, dw2_init, ds1_init, ds2_init,
    cu, toff, T, C0, NC, NCT, p, eps, sharp, ln_eps, scale,
    H: tl.constexpr, D: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    BH: tl.constexpr, KE: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr,
    LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr, VARLEN: tl.constexpr, LAG: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b, bos, Tn, t_first, n_tiles, crow = sequence_bounds(i_bh, cu, toff, T, NCT, H, VARLEN)
    kb = key_base(i_bh, bos, 0, H, VARLEN)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n = D * DH
    o1, m1 = mat_block(D, DH, BD, BH)
    o2, m2 = mat_block(DH, D, BH, BD)
    cW1, cW2 = load_matrices(dw1_final, dw2_final, bh * n, o1, m1, o2, m2, BD, BH, True)
    cS1, cS2 = load_matrices(ds1_final, ds2_final, bh * n, o1, m1, o2, m2, BD, BH, HAS_MOM)
    li = tl.arange(0, BL)
    lmask = li < L
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    # the cotangent of the key path's weights (the chunk start's, or after the lag token) from the
    # chunk's later tiles: it joins at the chunk's first tile
    acc1 = tl.zeros([BD, BH], dtype=tl.float32)
    acc2 = tl.zeros([BH, BD], dtype=tl.float32)
    n_here = tl.minimum(NC, n_tiles - C0)
    for i in range(n_here):
        c = n_here - 1 - i
        g = C0 + c
        cc = crow * NCT + t_first + g
        sc = bh * NC + c
        last = tl.minimum(Tn - g * L, L) - 1
        is_last = li == last
        first = g % KE == 0
        W1, W2 = load_matrices(w1_chunks, w2_chunks, sc * n, o1, m1, o2, m2, BD, BH, True)
        S1, S2 = load_matrices(s1_chunks, s2_chunks, sc * n, o1, m1, o2, m2, BD, BH, HAS_MOM)
        if KE == 1:
            KA1 = W1
            KA2 = W2
            KS1 = S1
            KS2 = S2
        else:
            kc = (sc - g % KE) * n
            KA1, KA2 = load_matrices(w1_chunks, w2_chunks, kc, o1, m1, o2, m2, BD, BH, True)
            KS1, KS2 = load_matrices(s1_chunks, s2_chunks, kc, o1, m1, o2, m2, BD, BH, HAS_MOM and LAG)
        K1 = simplex(KA1, m1, scale)
        K2 = simplex(KA2, m2, scale)
        offs, mask, koffs, kmask, kvalid, krow, b_k, b_v, delta = tile_rows(
            k, v, bp, b, bos, kb, g, h, Tn, 0, H, D, L, 0, BL, BL, BD, BIAS
        )
        b_beta, b_f, b_G = coefficient_rows(beta, f, G, cc, li, lmask, L, HAS_MOM)
        # the key path at K: of this tile's rows without the lag token; with it, of the chunk's first
        # tile's (row 0 is the lag token's; loaded where that tile is an earlier one, whose key path
        # then serves only the lag token's weights)
        b_k0, b_v0, delta0, kmask0 = b_k, b_v, delta, kmask
        b_beta0, b_f0, b_G0 = b_beta, b_f, b_G
        if LAG and KE != 1:
            g0 = g - g % KE
            _o, _m, _ko, kmask0, _kv, _kr, b_k0, b_v0, delta0 = tile_rows(
                k, v, bp, b, bos, kb, g0, h, Tn, 0, H, D, L, 0, BL, BL, BD, BIAS
            )
            b_beta0, b_f0, b_G0 = coefficient_rows(beta, f, G, cc - g % KE, li, lmask, L, HAS_MOM)
        Z1, A, dd, dout, r, xk, rk, E, sg, d1 = key_path(
            b_k0, b_v0, delta0, K1, K2, gamma, shift, kmask0, cmask, p, eps, sharp, ln_eps,
            D, ACT, DOT, BIAS, LN, RES,
        )  # fmt: skip
        if LAG:
            A0 = A
            d10 = d1
            dd0 = dd
            KL1, KL2, beta0, f0, g0_row = lag_weights(
                li, KA1, KA2, KS1, KS2, b_k0, A0, d10, dd0, b_beta0, b_f0, b_G0, m1, m2, scale, DOT, HAS_MOM
            )  # fmt: skip
            # the rest of the chunk at the weights after the lag token
            Z1l, Al, ddl, doutl, rl, xkl, rkl, El, sgl, d1l = key_path(
                b_k, b_v, delta, KL1, KL2, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps,
                D, ACT, DOT, BIAS, LN, RES,
            )  # fmt: skip
            lag_row = (li == 0) & first
            rest = (~lag_row)[:, None]
            A = tl.where(rest, Al, A)
            dd = tl.where(rest, ddl, dd)
            d1 = tl.where(rest, d1l, d1)
        else:
            KL1 = K1
            KL2 = K2

        # the reads: token t's y_t = σ(q_t W1_t) W2_t, W_t = c·Softmax(A_t), backward token by token
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        if LN:
            y_pre = simplex_reads(
                li, b_q, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, m1, m2, scale,
                L, BL, BD, ACT, DOT, HAS_MOM,
            )  # fmt: skip
            b_dy, dg, db = read_ln_backward(y_pre, b_dy, gamma, cmask, D, ln_eps)
            d_gamma += dg
            d_shift += db
        gW1 = tl.zeros([BD, BH], dtype=tl.float32)
        gW2 = tl.zeros([BH, BD], dtype=tl.float32)
        gS1 = tl.zeros([BD, BH], dtype=tl.float32)
        gS2 = tl.zeros([BH, BD], dtype=tl.float32)
        d_d1 = tl.zeros([BL, BH], dtype=tl.float32)
        d_dd = tl.zeros([BL, BD], dtype=tl.float32)
        dA = tl.zeros([BL, BH], dtype=tl.float32)
        b_dk = tl.zeros([BL, BD], dtype=tl.float32)
        b_dq = tl.zeros([BL, BD], dtype=tl.float32)
        b_dbeta = tl.zeros([BL], dtype=tl.float32)
        b_df = tl.zeros([BL], dtype=tl.float32)
        b_dG = tl.zeros([BL, BL], dtype=tl.float32)
        for t in range(L):
            at = li == t
            A1t, A2t, beta_t, f_t, g_t = token_accumulators(
                t, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT, HAS_MOM
            )
            W1t = simplex(A1t, m1, scale)
            W2t = simplex(A2t, m2, scale)
            q_t = row_of(b_q, at[:, None])
            dy_t = row_of(b_dy, at[:, None])
            z = tl.sum(q_t[:, None] * W1t, 0)
            dz = tl.sum(W2t * dy_t[None, :], 1) * act_grad(z, ACT)
            b_dq = tl.where(at[:, None], tl.sum(W1t * dz[None, :], 1)[None, :], b_dq)
            C1 = simplex_backward(W1t, q_t[:, None] * dz[None, :], scale)
            C2 = simplex_backward(W2t, act(z, ACT)[:, None] * dy_t[None, :], scale)
            gW1, gW2, gS1, gS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG = token_accumulators_backward(
                at, C1, C2, beta_t, f_t, g_t, W1, W2, S1, S2, b_k, A, d1, dd,
                gW1, gW2, gS1, gS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG, DOT, HAS_MOM,
            )  # fmt: skip

        g_last = tl.load(G + cc * L * L + last * L + li, mask=lmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)
        d_d1, d_dd, b_dk, dA, gW1, gW2, b_dbeta, b_df, b_dG, cS1, cS2 = tile_end_backward(
            f, m_end, s_coef, df, dm_end, ds_coef, cc, li, lmask, li, lmask, is_last, last, g_last, beta_last,
            b_k, A, d1, dd, W1, W2, S1, S2, cW1, cW2, cS1, cS2, gW1, gW2, gS1, gS2,
            d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG, L, 0, DOT, HAS_MOM,
        )  # fmt: skip

        # the key path backward: the cotangent gK of its weights (KL: after the lag token)
        # and the anchor's (of the last tile: the chunk start's weights while only the lag token is in)
        aK1 = tl.zeros([BD, BH], dtype=tl.float32)
        aK2 = tl.zeros([BH, BD], dtype=tl.float32)
        if g == n_tiles - 1:
            aK1 = tl.load(dw1_anchor + bh * n + o1, mask=m1, other=0.0)
            aK2 = tl.load(dw2_anchor + bh * n + o2, mask=m2, other=0.0)
        gK1 = acc1 + aK1
        gK2 = acc2 + aK2
        if LAG:
            at_start = first & (last == 0)
            gK1 = acc1 + tl.where(at_start, 0.0, aK1)
            gK2 = acc2 + tl.where(at_start, 0.0, aK2)
            # the rows at the weights after the lag token, then (at the chunk's first tile) that
            # weight set's cotangent through the lag token's accumulator to row 0 and the chunk start
            rows = lmask & ~lag_row
            keep = rows[:, None]
            gK1, gK2, b_dk, dr, d_gamma, d_shift = key_path_backward(
                tl.where(keep, d_d1, 0.0), tl.where(keep, d_dd, 0.0), tl.where(keep, dA, 0.0), b_dk, gK1, gK2,
                Z1l, El, sgl, Al, ddl, doutl, rl, xkl, rkl, delta, b_k, KL1, KL2, gamma, d_gamma, d_shift,
                dbp, koffs, kmask & keep, krow, kvalid & rows, cmask, p, eps, sharp, D, ACT, DOT, BIAS, LN,
            )  # fmt: skip
            if first:
                Cl1 = simplex_backward(KL1, gK1, scale)
                Cl2 = simplex_backward(KL2, gK2, scale)
                # (after the update's backward: the lag token's momentum share goes to cS directly)
                gW1, gW2, cS1, cS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG = token_accumulators_backward(
                    lag_row, Cl1, Cl2, beta0, f0, g0_row, KA1, KA2, KS1, KS2, b_k, A0, d10, dd0,
                    gW1, gW2, cS1, cS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG, DOT, HAS_MOM,
                )  # fmt: skip
                lag = lag_row[:, None]
                gK1 = tl.where(at_start, aK1, 0.0)
                gK2 = tl.where(at_start, aK2, 0.0)
                gK1, gK2, b_dk, dr0, d_gamma, d_shift = key_path_backward(
                    tl.where(lag, d_d1, 0.0), tl.where(lag, d_dd, 0.0), tl.where(lag, dA, 0.0), b_dk, gK1, gK2,
                    Z1, E, sg, A0, dd0, dout, r, xk, rk, delta, b_k, K1, K2, gamma, d_gamma, d_shift,
                    dbp, koffs, kmask & lag, krow, kvalid & lag_row, cmask, p, eps, sharp, D, ACT, DOT, BIAS, LN,
                )  # fmt: skip
                dr = tl.where(lag, dr0, dr)
        else:
            gK1, gK2, b_dk, dr, d_gamma, d_shift = key_path_backward(
                d_d1, d_dd, dA, b_dk, gK1, gK2, Z1, E, sg, A, dd, dout, r, xk, rk, delta, b_k, K1, K2, gamma,
                d_gamma, d_shift, dbp, koffs, kmask, krow, kvalid, cmask, p, eps, sharp, D, ACT, DOT, BIAS, LN,
            )  # fmt: skip
        if RES:
            b_dk += dr  # M(k) = k + ...: the residual's direct path
        tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        tl.store(dk + koffs, b_dk.to(dk.dtype.element_ty), mask=kmask)
        tl.store(dv + koffs, (-dr).to(dv.dtype.element_ty), mask=kmask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        if HAS_MOM and LAG:  # again: the lag token's backward added its df (stored with the update's)
            tl.store(df + cc * L + li, b_df, mask=lmask)
        tl.store(dG + cc * L * L + li[:, None] * L + li[None, :], b_dG, mask=lmask[:, None] & lmask[None, :])
        if first:  # gK: the cotangent of c·Softmax of the chunk-start logits
            cW1 = gW1 + simplex_backward(K1, gK1, scale)
            cW2 = gW2 + simplex_backward(K2, gK2, scale)
            acc1 = tl.zeros([BD, BH], dtype=tl.float32)
            acc2 = tl.zeros([BH, BD], dtype=tl.float32)
        else:
            cW1 = gW1
            cW2 = gW2
            acc1 = gK1
            acc2 = gK2
    store_matrices(dw1_init, dw2_init, bh * n, cW1, cW2, o1, m1, o2, m2, True)
    store_matrices(ds1_init, ds2_init, bh * n, cS1, cS2, o1, m1, o2, m2, HAS_MOM)
    store_ln_grads(dln_w, dln_b, bh, cols, cmask, d_gamma, d_shift, D, LN)


def launch_simplex_backward(
    q, k, v, bp, ln_w, ln_b, dy, coef, packing, chunks, carry, anchor_cot, grads, dln, config: LaunchConfig, c0, nc
) -> tuple[Tensor, ...]:  # fmt: skip
    """:func:`~.backward.launch_backward` for Memora's softmax retention (same arguments and results)."""
    has_mom = carry[2].numel() > 0
    cu, toff = packing
    T, H = q.shape[1:3]
    d_init = tuple(torch.empty_like(t) for t in carry)
    scalars, constants = simplex_meta(q, carry[0], ln_w, config)
    _simplex_backward_kernel[(carry[0].shape[0] * H,)](
        q, k, v, *or_empty(q.new_empty(0), bp, ln_w, ln_b), dy, *coef, *chunks, *carry, *anchor_cot,
        *grads[:4], *dln, *grads[4:], *d_init, *or_empty(q.new_empty(0), cu, toff),
        T, c0, nc, coef[0].shape[2], *scalars, **constants, HAS_MOM=has_mom, VARLEN=cu is not None,
    )  # fmt: skip
    return d_init
