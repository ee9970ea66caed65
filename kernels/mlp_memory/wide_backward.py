"""The wide-state variant of the MLP-memory backward kernel (the hidden width in blocks, the state and
its cotangents in global memory; the passes are described in
:mod:`memnets.kernels.mlp_memory.wide_forward`)."""

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
    key_delta,
    key_value_rows,
    layers_update_backward,
    ln_params,
    load_matrices,
    read_hidden_backward,
    read_input_backward,
    read_layer2_backward,
    row_block,
    store_ln_grads,
    store_matrices,
)
from .config import LaunchConfig
from .wide_forward import hidden_block, key_z2, wide_meta


@triton.jit
def _wide_backward_kernel(
    q, k, v, bp, ln_w, ln_b, dy, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_chunks, w2_chunks, s1_chunks, s2_chunks, dw1_anchor, dw2_anchor,  # start states, anchor cotangents
    dq, dk, dv, dbp, dln_w, dln_b, dbeta, df, dG, dm_end, ds_coef,
    dw1, dw2, ds1, ds2, scratch,  # dw1 .. ds2: the state's cotangents, updated in place
    T, C0, NC, NCT, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    BHB: tl.constexpr, NB: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr,
    LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
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
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    for i in range(NC):
        c = NC - 1 - i
        g = C0 + c  # the chunk's index in the sequence
        cc = bh * NCT + g  # index of this (batch, head, chunk) in the coefficients
        cb = (bh * NC + c) * n  # this chunk's start state in w1_chunks, ...
        last = tl.minimum(T - g * L, L) - 1  # the chunk's last token (the tail chunk is short)
        is_last = li == last
        offs, mask, valid, row_idx = row_block(b, g * L, h, T, H, D, L, BL, BD)
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        b_k, b_v, delta = key_value_rows(k, v, bp, offs, mask, row_idx, valid, BL, BIAS)
        b_dy = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
        b_G = tl.load(G + cc * L * L + li[:, None] * L + li[None, :], mask=gmask, other=0.0)
        g_last = tl.load(G + cc * L * L + last * L + li, mask=lmask, other=0.0)
        beta_last = tl.load(beta + cc * L + last)
        b_f = b_beta  # f with momentum (unread without)
        if HAS_MOM:
            b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
            f_last = tl.load(f + cc * L + last)
            b_m = tl.load(m_end + cc)
            b_s = tl.load(s_coef + cc * L + li, mask=lmask, other=0.0)
        qk = dot(b_q, tl.trans(b_k), DOT)
        qkG = qk * b_G

        # pass 1: the key path
        Z2 = key_z2(b_k, w1_chunks, w2_chunks, cb, D, DH, BL, BD, BHB, NB, ACT, DOT)
        dd, dout, r, xk, rk = key_delta(
            Z2, b_k, b_v, delta, gamma, shift, mask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )

        # pass 2: the reads' layer-2 inputs summed over the hidden blocks
        a1w2 = tl.zeros([BL, BD], dtype=tl.float32)
        a1s2 = tl.zeros([BL, BD], dtype=tl.float32)
        aa = tl.zeros([BL, BL], dtype=tl.float32)
        for j in range(NB):
            o1, m1, o2, m2 = hidden_block(j, D, DH, BD, BHB)
            W1, W2 = load_matrices(w1_chunks, w2_chunks, cb, o1, m1, o2, m2, BD, BHB, True)
            Z1 = dot(b_k, W1, DOT)
            A = act(Z1, ACT)
            d1 = dot(dd, tl.trans(W2), DOT) * act_grad(Z1, ACT)
            z1 = b_beta[:, None] * dot(b_q, W1, DOT) - dot(qkG, d1, DOT)
            if HAS_MOM:
                S1, S2 = load_matrices(s1_chunks, s2_chunks, cb, o1, m1, o2, m2, BD, BHB, True)
                z1 += b_f[:, None] * dot(b_q, S1, DOT)
            a1 = act(z1, ACT)
            a1w2 += dot(a1, W2, DOT)
            aa += dot(a1, tl.trans(A), DOT)
            if HAS_MOM:
                a1s2 += dot(a1, S2, DOT)
        # Ẑ2's terms on whole rows (dΔ completed over the blocks in pass 3)
        b_dy, d_gamma, d_shift, b_dbeta, b_df, b_dG, dP, d_dd = read_layer2_backward(
            b_dy, a1w2, a1s2, aa, b_G, dd, b_beta, b_f, gamma, d_gamma, d_shift, cmask, ln_eps,
            D, DOT, LN, HAS_MOM,
        )  # fmt: skip
        if HAS_MOM:
            b_ds = tl.zeros([BL], dtype=tl.float32)
            dm = tl.sum(tl.zeros([BL], dtype=tl.float32), 0)

        # pass 3: per block, the reads' layer 1, the chunk-end update and δ1_j's second-order terms
        dPq = tl.zeros([BL, BL], dtype=tl.float32)  # cotangent of Q Kᵀ ⊙ G, summed over the blocks
        b_dq = tl.zeros([BL, BD], dtype=tl.float32)
        b_dk = tl.zeros([BL, BD], dtype=tl.float32)
        dg_last = tl.zeros([BL], dtype=tl.float32)
        for j in range(NB):
            o1, m1, o2, m2 = hidden_block(j, D, DH, BD, BHB)
            W1, W2 = load_matrices(w1_chunks, w2_chunks, cb, o1, m1, o2, m2, BD, BHB, True)
            cW1, cW2 = load_matrices(dw1, dw2, base, o1, m1, o2, m2, BD, BHB, True)  # of the chunk-end state
            Z1 = dot(b_k, W1, DOT)
            A = act(Z1, ACT)
            sg = act_grad(Z1, ACT)
            E = dot(dd, tl.trans(W2), DOT)
            d1 = E * sg
            qw1 = dot(b_q, W1, DOT)
            z1 = b_beta[:, None] * qw1 - dot(qkG, d1, DOT)
            S1, S2 = load_matrices(s1_chunks, s2_chunks, cb, o1, m1, o2, m2, BD, BHB, HAS_MOM)
            qs1 = qw1  # Q S1 with momentum (unread without)
            if HAS_MOM:
                cS1, cS2 = load_matrices(ds1, ds2, base, o1, m1, o2, m2, BD, BHB, True)
                qs1 = dot(b_q, S1, DOT)
                z1 += b_f[:, None] * qs1
            a1 = act(z1, ACT)
            # layer 2 of the reads, block j
            dz1, dA, gW2 = read_hidden_backward(b_dy, dP, A, a1, z1, W2, S2, b_beta, b_f, ACT, DOT, HAS_MOM)
            # layer 1 of the reads: Ẑ1_j = β ⊙ (Q W1_j) [+ f ⊙ (Q S1_j)] − (Q Kᵀ ⊙ G) δ1_j
            b_dbeta += tl.sum(dz1 * qw1, 1)
            dPq -= dot(dz1, tl.trans(d1), DOT)
            d_d1 = -dot(tl.trans(qkG), dz1, DOT)  # dδ1_j
            b_dq += b_beta[:, None] * dot(dz1, tl.trans(W1), DOT)
            gW1, b_df, b_dq = read_input_backward(dz1, b_q, qs1, S1, b_beta, b_f, b_df, b_dq, DOT, HAS_MOM)
            # chunk end: W' = β_L W [+ f_L S] − Xᵀ (g_last ⊙ δ),  S' = m_end S − Xᵀ (s_coef ⊙ δ)
            d_d1, d_dd, b_dk, dA, s1, s2, dbeta_last = layers_update_backward(
                d_d1, d_dd, b_dk, dA, b_k, A, d1, dd, g_last, cW1, cW2, W1, W2, DOT
            )
            dg_last -= s1 + s2
            b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
            gW1 += beta_last * cW1
            gW2 += beta_last * cW2
            if HAS_MOM:
                df_last = inner(cW1, S1) + inner(cW2, S2)
                b_df = tl.where(is_last, b_df + df_last, b_df)
                d_d1, d_dd, b_dk, dA, s1, s2, dm_j = layers_update_backward(
                    d_d1, d_dd, b_dk, dA, b_k, A, d1, dd, b_s, cS1, cS2, S1, S2, DOT
                )
                b_ds -= s1 + s2
                dm += dm_j
                cS1 = f_last * cW1 + b_m * cS1 + dot(tl.trans(b_q), b_f[:, None] * dz1, DOT)
                cS2 = f_last * cW2 + b_m * cS2 + dot(tl.trans(a1), b_f[:, None] * b_dy, DOT)
            # δ1_j = (Δ W2_jᵀ) ⊙ σ'(Z1_j): its cotangent reaches Δ, W2_j and Z1_j (second order)
            dE = d_d1 * sg
            dZ1 = d_d1 * E * act_grad2(Z1, ACT)
            d_dd += dot(dE, W2, DOT)
            gW2 += dot(tl.trans(dE), dd, DOT)
            if g == NCT - 1:
                gW1 += tl.load(dw1_anchor + base + o1, mask=m1, other=0.0)
                gW2 += tl.load(dw2_anchor + base + o2, mask=m2, other=0.0)
            tl.debug_barrier()  # every thread has read block j's cotangents before they are overwritten
            tl.store(scratch + so + j * BHB, dZ1 + dA * sg)
            store_matrices(dw1, dw2, base, gW1, gW2, o1, m1, o2, m2, True)
            if HAS_MOM:
                store_matrices(ds1, ds2, base, cS1, cS2, o1, m1, o2, m2, True)
        b_dG += dPq * qk
        dPq = dPq * b_G
        b_dq += dot(dPq, b_k, DOT)
        b_dk += dot(tl.trans(dPq), b_q, DOT)
        b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
        if HAS_MOM:
            tl.store(dm_end + cc, dm)
            tl.store(df + cc * L + li, b_df, mask=lmask)
            tl.store(ds_coef + cc * L + li, b_ds, mask=lmask)

        # pass 4 (whole rows): Δ = [LN backward of] ℓ'(R) back to R and Z2
        dZ2, dr, d_gamma, d_shift = delta_backward(
            d_dd, dd, dout, r, delta, xk, rk, gamma, d_gamma, d_shift, dbp, offs, mask, row_idx, valid, cmask,
            p, eps, sharp, D, BIAS, LN,
        )  # fmt: skip
        tl.debug_barrier()  # pass 3's writes (scratch, dW1, dW2) are read back by other threads

        # pass 5: Z2 = Σ_j A_j W2_j back to W1_j, W2_j and K
        for j in range(NB):
            o1, m1, o2, m2 = hidden_block(j, D, DH, BD, BHB)
            W1, W2 = load_matrices(w1_chunks, w2_chunks, cb, o1, m1, o2, m2, BD, BHB, True)
            Z1 = dot(b_k, W1, DOT)
            A = act(Z1, ACT)
            dZ1 = tl.load(scratch + so + j * BHB) + dot(dZ2, tl.trans(W2), DOT) * act_grad(Z1, ACT)
            gW1 = tl.load(dw1 + base + o1, mask=m1, other=0.0) + dot(tl.trans(b_k), dZ1, DOT)
            gW2 = tl.load(dw2 + base + o2, mask=m2, other=0.0) + dot(tl.trans(A), dZ2, DOT)
            b_dk += dot(dZ1, tl.trans(W1), DOT)
            tl.debug_barrier()  # every thread has read block j before it is overwritten
            store_matrices(dw1, dw2, base, gW1, gW2, o1, m1, o2, m2, True)
        tl.debug_barrier()  # the previous chunk's pass 3 reads these cotangents and rewrites scratch
        tl.store(dq + offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        if RES:
            b_dk += dr  # M(k) = k + ...: the residual's direct path
        tl.store(dk + offs, b_dk.to(dk.dtype.element_ty), mask=mask)
        tl.store(dv + offs, (-dr).to(dv.dtype.element_ty), mask=mask)
        tl.store(dbeta + cc * L + li, b_dbeta, mask=lmask)
        tl.store(dG + cc * L * L + li[:, None] * L + li[None, :], b_dG, mask=gmask)
    store_ln_grads(dln_w, dln_b, bh, cols, cmask, d_gamma, d_shift, D, LN)


def launch_wide_backward(
    q, k, v, bp, ln_w, ln_b, dy, coef, packing, chunks, carry, anchor_cot, grads, dln, config: LaunchConfig, c0, nc
) -> tuple[Tensor, ...]:  # fmt: skip
    """:func:`~memnets.kernels.mlp_memory.backward.launch_backward` for the wide-state kernel (a dense
    batch; the state cotangents are updated in place in a copy of ``carry``)."""
    B, T, H = q.shape[:3]
    d_state = tuple(t.float().clone(memory_format=torch.contiguous_format) for t in carry)
    scalars, constants = wide_meta(q, carry[0], ln_w, config)
    scratch = q.new_empty(B * H, constants["BL"], constants["NB"] * constants["BHB"], dtype=torch.float32)
    _wide_backward_kernel[(B * H,)](
        q, k, v, *or_empty(q.new_empty(0), bp, ln_w, ln_b), dy, *coef, *chunks, *anchor_cot,
        *grads[:4], *dln, *grads[4:], *d_state, scratch,
        T, c0, nc, coef[0].shape[2], *scalars, **constants, HAS_MOM=carry[2].numel() > 0,
    )  # fmt: skip
    return d_state
