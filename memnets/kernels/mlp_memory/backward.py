"""The MLP-memory backward kernel (whole state on chip) and its host side: checkpoint segments in
reverse, each re-running the forward from its checkpoint with ``STORE`` to recompute its tiles' start
states, then taking the gradients back through them (the equations are in the package's docstring,
:mod:`memnets.kernels.mlp_memory`)."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..optional import or_empty
from ..precision import dot
from .common import (
    act,
    act_grad,
    key_base,
    key_path,
    key_path_backward,
    ln_params,
    load_matrices,
    mat_block,
    read_hidden_backward,
    read_input_backward,
    read_layer2_backward,
    read_ln_backward,
    sequence_bounds,
    store_ln_grads,
    store_matrices,
    tile_end_backward,
    tile_rows,
)
from .config import SEGMENT_INTS, LaunchConfig, whole_state_meta
from .end_map import ends_chunk, lq_grad_coef, lq_grad_dir, lq_map_backward, lq_scale, lq_scale_of
from .forward import carried_rows, launch_forward, segments, spans
from .simplex import launch_simplex_forward
from .simplex_backward import launch_simplex_backward
from .token_state import row_of, token_accumulators, token_accumulators_backward
from .wide_backward import launch_wide_backward
from .wide_simplex import launch_wide_simplex_forward
from .wide_simplex_backward import launch_wide_simplex_backward
from .wide_split import launch_wide


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _backward_kernel(
    q, k, v, bp, ln_w, ln_b, dy, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # every tile's start state
    tok_p1, tok_p2,  # Moneta per token: every token's power sums (the forward's)
    dw1_final, dw2_final, ds1_final, ds2_final, dw1_anchor, dw2_anchor,  # the outputs' cotangents
    dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef, dw1_init, dw2_init, ds1_init, ds2_init,
    cu, toff, T, P0, C0, NC, NCT, p, eps, sharp, ln_eps, end_q, end_floor,
    H: tl.constexpr, D: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    BH: tl.constexpr, KE: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr,
    DOT: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
    READ_START: tl.constexpr, VARLEN: tl.constexpr, END_MAP: tl.constexpr, TOKEN_MAP: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b, bos, Tn, t_first, n_tiles, crow = sequence_bounds(i_bh, cu, toff, T, NCT, H, VARLEN)
    kb = key_base(i_bh, bos, P0, H, VARLEN)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n = D * DH
    o1, m1 = mat_block(D, DH, BD, BH)
    o2, m2 = mat_block(DH, D, BH, BD)
    # cotangents of the state at the end of the current chunk
    cW1, cW2 = load_matrices(dw1_final, dw2_final, bh * n, o1, m1, o2, m2, BD, BH, True)
    cS1, cS2 = load_matrices(ds1_final, ds2_final, bh * n, o1, m1, o2, m2, BD, BH, HAS_MOM)
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
        W1, W2 = load_matrices(w1_chunks, w2_chunks, sc * n, o1, m1, o2, m2, BD, BH, True)
        if KE == 1:
            K1 = W1
            K2 = W2
        else:
            kc = sc - g % KE
            K1, K2 = load_matrices(w1_chunks, w2_chunks, kc * n, o1, m1, o2, m2, BD, BH, True)
        KA1 = K1  # the chunk-start accumulators (Moneta: the key path reads their mapped weights)
        KA2 = K2
        if TOKEN_MAP != 0:
            K1 = KA1 * lq_scale(KA1, end_q, end_floor, TOKEN_MAP)
            K2 = KA2 * lq_scale(KA2, end_q, end_floor, TOKEN_MAP)
        offs, mask, koffs, kmask, kvalid, krow, b_k, b_v, delta = tile_rows(
            k, v, bp, b, bos, kb, g, h, Tn, P0, H, D, L, P, BL, BK, BD, BIAS
        )
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
        g_last = tl.load(G + cc * L * (P + L) + last * (P + L) + lk, mask=lkmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)

        # recompute the key path
        Z1, A, dd, dout, r, xk, rk, E, sg, d1 = key_path(
            b_k, b_v, delta, K1, K2, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps,
            D, ACT, DOT, BIAS, LN, RES,
        )  # fmt: skip
        if READ_START:
            # reads at the chunk-start weights: Y = [LN](σ(Q K1) K2)
            z1 = dot(b_q, K1, DOT)
            a1 = act(z1, ACT)
            if LN:
                b_dy, dg, db = read_ln_backward(dot(a1, K2, DOT), b_dy, gamma, cmask, D, ln_eps)
                d_gamma += dg
                d_shift += db
            dz1 = dot(b_dy, tl.trans(K2), DOT) * act_grad(z1, ACT)
            b_dq = dot(dz1, tl.trans(K1), DOT)
            rK1 = dot(tl.trans(b_q), dz1, DOT)
            rK2 = dot(tl.trans(a1), b_dy, DOT)
            b_dk = tl.zeros([BK, BD], dtype=tl.float32)
            dA = tl.zeros([BK, BH], dtype=tl.float32)
            d_d1 = tl.zeros([BK, BH], dtype=tl.float32)
            d_dd = tl.zeros([BK, BD], dtype=tl.float32)
            b_dbeta = tl.zeros([BL], dtype=tl.float32)
            b_dG = tl.zeros([BL, BK], dtype=tl.float32)
            gW1 = tl.zeros([BD, BH], dtype=tl.float32)
            gW2 = tl.zeros([BH, BD], dtype=tl.float32)
            S1, S2, gS1, gS2, b_df = W1, W2, gW1, gW2, b_dbeta  # unread: chunk-start reads take no momentum
        else:
            b_G = tl.load(G + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :], mask=gmask, other=0.0)
            S1, S2 = load_matrices(s1_chunks, s2_chunks, sc * n, o1, m1, o2, m2, BD, BH, HAS_MOM)
            b_f = b_beta  # f with momentum (unread without)
            if HAS_MOM:
                b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
            # each layer's read coefficients: with Moneta's per-token map, token t reads s(A_t) A_t, so
            # its row of the dual form is scaled by s_t (per layer): β, f and G's row times s_t
            bb1, bf1, bG1, bb2, bf2, bG2 = b_beta, b_f, b_G, b_beta, b_f, b_G
            if TOKEN_MAP != 0:
                p1 = tl.load(tok_p1 + cc * L + li, mask=lmask, other=0.0)
                p2 = tl.load(tok_p2 + cc * L + li, mask=lmask, other=0.0)
                s1 = lq_scale_of(p1, end_q, end_floor, TOKEN_MAP)
                s2 = lq_scale_of(p2, end_q, end_floor, TOKEN_MAP)
                bb1, bf1, bG1 = s1 * b_beta, s1 * b_f, s1[:, None] * b_G
                bb2, bf2, bG2 = s2 * b_beta, s2 * b_f, s2[:, None] * b_G
            # recompute the query path
            qw1 = dot(b_q, W1, DOT)
            qk = dot(b_q, tl.trans(b_k), DOT)
            z1 = bb1[:, None] * qw1 - dot(qk * bG1, d1, DOT)
            qs1 = qw1  # Q S1 with momentum (unread without)
            if HAS_MOM:
                qs1 = dot(b_q, S1, DOT)
                z1 += bf1[:, None] * qs1
            a1 = act(z1, ACT)
            aa = dot(a1, tl.trans(A), DOT)
            a1w2 = dot(a1, W2, DOT)
            a1s2 = a1w2  # Â S2 with momentum (unread without)
            if HAS_MOM:
                a1s2 = dot(a1, S2, DOT)
            # layer 2 of the reads: Ẑ2 = β ⊙ (Â W2) [+ f ⊙ (Â S2)] − (Â Aᵀ ⊙ G) Δ
            b_dy, d_gamma, d_shift, dbeta2, df2, dG2, dP, d_dd = read_layer2_backward(
                b_dy, a1w2, a1s2, aa, bG2, dd, bb2, bf2, gamma, d_gamma, d_shift, cmask, ln_eps,
                D, DOT, LN, HAS_MOM,
            )  # fmt: skip
            dz1, dA, gW2 = read_hidden_backward(b_dy, dP, A, a1, z1, W2, S2, bb2, bf2, ACT, DOT, HAS_MOM)
            # layer 1 of the reads: Ẑ1 = β ⊙ (Q W1) [+ f ⊙ (Q S1)] − (Q Kᵀ ⊙ G) δ1
            dbeta1 = tl.sum(dz1 * qw1, 1)
            dP = -dot(dz1, tl.trans(d1), DOT)
            dG1 = dP * qk
            dP = dP * bG1
            d_d1 = -dot(tl.trans(qk * bG1), dz1, DOT)  # dδ1
            b_dq = bb1[:, None] * dot(dz1, tl.trans(W1), DOT) + dot(dP, b_k, DOT)
            b_dk = dot(tl.trans(dP), b_q, DOT)
            gW1, df1, b_dq = read_input_backward(
                dz1, b_q, qs1, S1, bb1, bf1, dbeta1 * 0.0, b_dq, DOT, HAS_MOM
            )
            gS1 = dot(tl.trans(b_q), bf1[:, None] * dz1, DOT)  # the reads' share of S's cotangent
            gS2 = dot(tl.trans(a1), bf2[:, None] * b_dy, DOT)
            if TOKEN_MAP != 0:
                ds1 = b_beta * dbeta1 + b_f * df1 + tl.sum(b_G * dG1, 1)
                ds2 = b_beta * dbeta2 + b_f * df2 + tl.sum(b_G * dG2, 1)
                b_dbeta = s1 * dbeta1 + s2 * dbeta2
                b_df = s1 * df1 + s2 * df2
                b_dG = s1[:, None] * dG1 + s2[:, None] * dG2
                # the scales' own cotangents, through every token's accumulator A_t
                for t in range(L):
                    at = li == t
                    A1t, A2t, beta_t, f_t, g_t = token_accumulators(
                        t, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT, HAS_MOM
                    )
                    # ds_t ∂s/∂A_t from the forward's power sum P_t (no reduction over A_t again)
                    C1 = lq_grad_coef(row_of(p1, at), row_of(ds1, at), end_q, end_floor, TOKEN_MAP)
                    C2 = lq_grad_coef(row_of(p2, at), row_of(ds2, at), end_q, end_floor, TOKEN_MAP)
                    C1 = C1 * lq_grad_dir(A1t, end_q)
                    C2 = C2 * lq_grad_dir(A2t, end_q)
                    gW1, gW2, gS1, gS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG = token_accumulators_backward(
                        at, C1, C2, beta_t, f_t, g_t, W1, W2, S1, S2, b_k, A, d1, dd,
                        gW1, gW2, gS1, gS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG, DOT, HAS_MOM,
                    )  # fmt: skip
            else:
                b_dbeta = dbeta1 + dbeta2
                b_df = df1 + df2
                b_dG = dG1 + dG2

        if END_MAP != 0:  # noqa: SIM102 (a compile-time branch: compiled out without the map)
            if ends_chunk(g, Tn, L, KE):
                # the cotangent of the mapped chunk-end weights back through the map, at the weights
                # before it: the last token's accumulators (the update below, recomputed)
                W1_end, W2_end, _b, _f, _g = token_accumulators(
                    last, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT, HAS_MOM
                )
                cW1 = lq_map_backward(W1_end, cW1, end_q, end_floor, END_MAP)
                cW2 = lq_map_backward(W2_end, cW2, end_q, end_floor, END_MAP)
        # chunk end: W' = β_L W [+ f_L S] − Xᵀ (g_last ⊙ δ),  S' = m_end S − Xᵀ (s_coef ⊙ δ)
        d_d1, d_dd, b_dk, dA, gW1, gW2, b_dbeta, b_df, b_dG, cS1, cS2 = tile_end_backward(
            f, m_end, s_coef, df, dm_end, ds_coef, cc, li, lmask, lk, lkmask, is_last, last, g_last, beta_last,
            b_k, A, d1, dd, W1, W2, S1, S2, cW1, cW2, cS1, cS2, gW1, gW2, gS1, gS2,
            d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG, L, P, DOT, HAS_MOM,
        )  # fmt: skip

        # key path backward (second order): δ1 = (Δ K2ᵀ) ⊙ σ'(Z1), Δ = ℓ'(A K2 − V), A = σ(K K1)
        if KE == 1 and TOKEN_MAP == 0:  # the key path reads the tile-start weights themselves
            gK1 = gW1
            gK2 = gW2
        elif KE == 1:
            gK1 = tl.zeros([BD, BH], dtype=tl.float32)
            gK2 = tl.zeros([BH, BD], dtype=tl.float32)
        else:
            gK1 = acc1
            gK2 = acc2
        if READ_START:
            gK1 += rK1
            gK2 += rK2
        gK1, gK2, b_dk, dr, d_gamma, d_shift = key_path_backward(
            d_d1, d_dd, dA, b_dk, gK1, gK2, Z1, E, sg, A, dd, dout, r, xk, rk, delta, b_k, K1, K2, gamma,
            d_gamma, d_shift, dbp, koffs, kmask, krow, kvalid, cmask, p, eps, sharp, D, ACT, DOT, BIAS, LN,
        )  # fmt: skip
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
        if TOKEN_MAP != 0 and g % KE == 0:  # K = s(A) A of the chunk-start accumulator
            gK1 = lq_map_backward(KA1, gK1, end_q, end_floor, TOKEN_MAP)
            gK2 = lq_map_backward(KA2, gK2, end_q, end_floor, TOKEN_MAP)
        if KE == 1 and TOKEN_MAP == 0:
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
    store_matrices(dw1_init, dw2_init, bh * n, cW1, cW2, o1, m1, o2, m2, True)
    store_matrices(ds1_init, ds2_init, bh * n, cS1, cS2, o1, m1, o2, m2, HAS_MOM)
    store_ln_grads(dln_w, dln_b, bh, cols, cmask, d_gamma, d_shift, D, LN)


def launch_backward(
    q, k, v, bp, ln_w, ln_b, dy, coef, packing, chunks, carry, anchor_cot, grads, dln, config: LaunchConfig, c0, nc,
    token_powers=(),
) -> tuple[Tensor, ...]:  # fmt: skip
    """One backward launch over tiles c0 .. c0 + nc (in reverse) from their start states ``chunks`` (the
    STORE recompute's) and the cotangents ``carry`` of the state after them; writes the inputs' gradients
    into ``grads`` (dq, dk, dv, dbp, dbeta, df, dG, dm_end, ds_coef) and the LayerNorm's per-(batch, head)
    partial sums into ``dln``. Returns the cotangents of the state at tile c0."""
    has_mom = carry[2].numel() > 0
    cu, toff = packing
    T, H = q.shape[1:3]
    d_init = tuple(torch.empty_like(t) for t in carry)
    scalars, constants = whole_state_meta(q, carry[0], ln_w, config)
    _backward_kernel[(carry[0].shape[0] * H,)](
        q, k, v, *or_empty(q.new_empty(0), bp, ln_w, ln_b), dy, *coef, *chunks,
        *(token_powers or (q.new_empty(0), q.new_empty(0))), *carry, *anchor_cot,
        *grads[:4], *dln, *grads[4:], *d_init, *or_empty(q.new_empty(0), cu, toff),
        T, carried_rows(k, T, cu), c0, nc, coef[0].shape[2], *scalars, **constants,
        HAS_MOM=has_mom, VARLEN=cu is not None,
    )  # fmt: skip
    return d_init


def run_backward(
    q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, cu_seqlens, tile_offsets,
    ckpt_w1, ckpt_w2, ckpt_s1, ckpt_s2, tok_p1, tok_p2, dy, dw1_final, dw2_final, ds1_final, ds2_final, dw1_anchor, dw2_anchor,
    config: LaunchConfig,
) -> list[Tensor]:  # fmt: skip
    """The backward ops' work (``memnets::mlp_memory_bwd`` and ``_wide_bwd``): gradients (q, k, v,
    bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2) of the forward (empty for absent
    inputs) from the checkpoints and the cotangents of (y, W1, W2, S1, S2 final, W1, W2 anchor): the
    segments in reverse, each recomputed from its checkpoint (storing every tile's start state) and
    then walked backward, in inner segments of ``config.recompute_every`` tiles where that is
    shorter."""
    wide = bool(config.hidden_block)
    launch_fwd, launch_bwd = (
        (launch_wide, launch_wide_backward) if wide else (launch_forward, launch_backward)
    )
    if config.simplex_scale:
        launch_fwd, launch_bwd = launch_simplex_forward, launch_simplex_backward
        if wide:
            launch_fwd, launch_bwd = launch_wide_simplex_forward, launch_wide_simplex_backward
    extra = {"token_powers": (tok_p1, tok_p2)} if config.token_map else {}  # Moneta's, from the forward
    B, T, H = q.shape[:3]
    has_mom = s1 is not None
    coef = (beta, f, G, m_end, s_coef)

    def like(t: Tensor | None) -> Tensor:
        return w1.new_empty(0) if t is None else torch.empty_like(t)

    dq, dk, dv, dbp = like(q), like(k), like(v), like(bias_params)
    NT, rows = beta.shape[2], config.prefix + config.tile
    if (
        config.prefix
    ):  # each tile's key rows (they overlap), summed by _fold_key_rows; rows never written stay 0
        dk, dv = (w1.new_zeros(B, H, NT, rows, x.shape[3]) for x in (k, v))
    grads = (dq, dk, dv, dbp, like(beta), like(f), like(G), like(m_end), like(s_coef))
    # the LayerNorm's outer parameters: one partial sum per (batch, head) and segment, reduced below
    dln_w, dln_b = (
        w1.new_zeros(*w1.shape[:2], v.shape[3]) if ln_w is not None else w1.new_empty(0) for _ in range(2)
    )
    carry = (dw1_final, dw2_final, ds1_final, ds2_final)
    scratch = (torch.empty_like(w1), torch.empty_like(w2))  # the recompute's anchor, unused
    empty = w1.new_empty(0)
    tiles = segments(config)
    packing = (cu_seqlens, tile_offsets)

    def recompute(state: tuple, c0: int, nc: int) -> tuple[tuple, tuple]:
        """STORE pass over tiles c0 .. c0 + nc: the state after them and every tile's start state."""
        return launch_fwd(
            q, k, v, bias_params, ln_w, ln_b, coef, packing, state, config, c0, nc, scratch, empty, True
        )

    for s in reversed(range(len(tiles))):
        c0, nc = tiles[s]
        state = (ckpt_w1[s], ckpt_w2[s]) + ((ckpt_s1[s], ckpt_s2[s]) if has_mom else (None, None))
        # a third level where recompute_every < checkpoint_every: the segment's inner segments' start
        # states first (their tile states dropped), then each inner segment recomputed and walked back
        inner = spans(c0, nc, config.recompute_every)
        starts = [state]
        for i0, ni in inner[:-1]:
            starts.append(recompute(starts[-1], i0, ni)[0])
        for (i0, ni), start in zip(reversed(inner), reversed(starts)):
            end, chunks = recompute(start, i0, ni)
            if wide and config.end_map:  # the chunk-end map's VJP takes the last chunk's end weights
                extra = {"end": end[:2]}
            dln = (like(dln_w), like(dln_b)) if ln_w is not None else (empty, empty)
            carry = launch_bwd(
                q, k, v, bias_params, ln_w, ln_b, dy, coef, packing, chunks, carry, (dw1_anchor, dw2_anchor),
                grads, dln, config, i0, ni, **extra,
            )  # fmt: skip
            if ln_w is not None:
                dln_w, dln_b = dln_w + dln[0], dln_b + dln[1]
    if ln_w is not None:
        dln_w, dln_b = dln_w.sum(0), dln_b.sum(0)
    if config.prefix:
        dk, dv = (
            _fold_key_rows(d, x, T, config.tile, config.prefix, cu_seqlens, tile_offsets)
            for d, x in ((dk, k), (dv, v))
        )
    D = v.shape[3]
    if config.residual and k.shape[3] != D:
        # M(φ(k)) = k + ...: the residual's direct path to the keys' first D columns (φ(x) starts with
        # x), which the kernel leaves out when the keys are wider: its cotangent is that of v, negated
        dk = dk.float()
        dk[..., :D] -= dv.float()
        dk = dk.to(k.dtype)
    return [dq, dk, dv, dbp, dln_w, dln_b, *grads[4:], *carry]


def _fold_key_rows(
    per_tile: Tensor, like: Tensor, T: int, tile: int, prefix: int, cu: Tensor | None, toff: Tensor | None
) -> Tensor:
    """Sum per-tile key-row gradients ``[B, H, NT, prefix + tile, D]`` into ``like``'s ``[B, Tk, H, D]``:
    tile g of a sequence whose key rows start at kb (0, or packed cu[n] + n·P0) has row e at
    kb + P0 + g·tile − prefix + e, P0 the carried window's rows; rows outside the sequence's
    kb .. kb + P0 + length − 1 (before its first carried row, in its last tile's padding) are absent."""
    B, H, NT, rows, D = per_tile.shape
    P0 = carried_rows(like, T, cu)
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
