"""The backward of :mod:`.token_muon_forward` (Atlas with Muon on every token, ATLAS arXiv 2505.23735 §5
Eq. 40): the chunks of a recompute segment in reverse, one program per (sequence, head), from each
chunk's stored start state (W, S) and the cotangents (dW, dS) of its end state, updated in place to those
of its start state. Per chunk:

1. recompute: the pass over the key blocks (:func:`.token_muon_forward.chunk_products`), the key path,
   and the tokens forward, each token's orthogonalised momenta N_t and sums Z_t written to a scratch
   buffer (``[L, 2, ·]`` per program: the backward walks them in reverse), its layer-1 pre-activation and
   output kept on chip; the reads' LayerNorm backward on the whole chunk;
2. the end state's cotangents over the key blocks: S1ᵀ dW1' and K dW1' (those of Z1_L's coordinates),
   K dS1' (that of E_L) and the coefficients' ⟨dW1', W1⟩, ⟨dS1', S1⟩;
3. the tokens in reverse: the read's backward (into Z_t, the coefficients β_t, and the queries' products
   Q W1, Q S1, Q Kᵀ), then Z_t = keep_t Z_{t−1} + lr_t N_t (lr_t, keep_t and dN_t), then Newton–Schulz
   backward: layer 2's on chip (:func:`.newton_schulz.ns_tile_backward`) to A, Δ, S2, m_t and Q[t];
   layer 1's on coordinates (:func:`ns_in_basis_backward`) to the Gram blocks of U = [S1 | Kᵀ], δ1, m_t
   and Q[t];
4. the end update's share (W' = β W + U Z_L, S' = m S − Kᵀ E_L and layer 2's) and the key path backward
   (second order, as :mod:`.muon_backward`): Δ, δ1 and A back to Z2, Z1, W2 and dv;
5. two passes over the key blocks: one writing dk and dq, then one writing dW1 (β dW1', Qᵀ d(Q W1),
   Kᵀ dZ1, the anchor's) and dS1 (m dS1', dW1' Zsᵀ, Qᵀ d(Q S1) and the Gram blocks' S1 (dGss + dGssᵀ)
   + Kᵀ dGskᵀ) in place.

Shared memory is what bounds the hidden width: Triton keeps a product's operands in shared memory from
where they are made to their last product, so operands held across a loop add up (a TF32x3 operand
twice: its high and low parts). Hence layer 1's Newton–Schulz backward keeps its iterates in the scratch
(one forward sweep, then each reverse step loads its iterate) rather than on chip or recomputed, each
reverse step finishes dx before the Gram blocks' terms, and step 5 is two loops, not one: at
(D, Dh, L, Dk, P) = (64, 64, 16, 2144, 7), Atlas at 340M/760M, the backward's shared memory fell from
308 to 140 KiB with bfloat16 operands and from 352 to 168 KiB with TF32x3 (sm_90 has 227); with plain TF32
operands it stays above (252 KiB), so that mode is refused past hidden width 32. Layer 2's Newton–Schulz
backward (:func:`.newton_schulz.ns_tile_backward`) still recomputes its iterates from the start. Key rows overlap
between chunks (the Omega window), so dk and dv are written per chunk ``[B, H, NCT, P + L, ...]`` for the
caller to fold. The coefficient gradients are per token; the LayerNorm's are summed per program.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..dual_form import inner
from ..precision import dot
from .common import (
    act,
    act_grad,
    act_grad2,
    col_block,
    delta_backward,
    key_cols_t,
    ln_params,
    read_ln_backward,
)
from .config import SEGMENT_INTS
from .muon_backward import chunk_key_rows
from .newton_schulz import eye, ns_poly, ns_scale, ns_tile_backward
from .token_muon_forward import chunk_products, key_path_t, token_coefficients, token_directions, token_read
from .wide_blocks import chunk_rows, w1_block, w2_block


@triton.jit
def _ns_basis_step(xs, xk, Gss, Gsk, Gkk, na, nb, nc, BC: tl.constexpr, DOT: tl.constexpr):
    """One Newton–Schulz step on coordinates (:func:`.token_muon_forward.ns_in_basis`)."""
    ys = dot(Gss, xs, DOT) + dot(Gsk, xk, DOT)
    yk = dot(tl.trans(Gsk), xs, DOT) + dot(Gkk, xk, DOT)
    M = ns_poly(dot(tl.trans(xs), ys, DOT) + dot(tl.trans(xk), yk, DOT), na, nb, nc, BC, DOT)
    return dot(xs, M, DOT), dot(xk, M, DOT)


@triton.jit
def _coordinates(p, BHB: tl.constexpr, BK: tl.constexpr):
    """Pointers of layer-1 coordinates [xs; xk] stored from ``p``: ``[BHB, BHB]`` (S1's), then
    ``[BK, BHB]`` (the key rows')."""
    h = tl.arange(0, BHB)
    kr = tl.arange(0, BK)
    return p + h[:, None] * BHB + h[None, :], p + BHB * BHB + kr[:, None] * BHB + h[None, :]


@triton.jit
def ns_in_basis_backward(Xs, Xk, dxs, dxk, Gss, Gsk, Gkk, dGss, dGsk, dGkk, xp, na, nb, nc, eps,
                         STEPS: tl.constexpr, BHB: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr):  # fmt: skip
    """The cotangents of the coordinates X = [Xs; Xk] and of the Gram blocks (added to dGss, dGsk,
    dGkk) from those of :func:`.token_muon_forward.ns_in_basis`'s result. Each step x_{k+1} = x_k M_k,
    M_k = a I + b G_k + c G_k², G_k = x_kᵀ G x_k gives dx_k = dx_{k+1} M_k + (G x_k)(dG_k + dG_kᵀ) and
    d(Uᵀ U) += x_k dG_k x_kᵀ (with dM_k = x_kᵀ dx_{k+1}, dG_k = b dM_k + c (dM_k G_k + G_k dM_k)); the
    scale s = (⟨X, G X⟩ + eps²)^(−1/2) gives dX = s dx_0 − s³ ⟨dx_0, X⟩ G X and d(Uᵀ U) += −s³/2 ⟨dx_0,
    X⟩ X Xᵀ. As blocks: Gsk stands for both off-diagonal blocks, so it takes x_s (P + Pᵀ) x_kᵀ.
    The iterates x_0 .. x_{STEPS−1} are kept in the scratch at ``xp`` by one forward sweep and loaded
    where each reverse step uses them (rather than recomputed per step, or held on chip across the
    steps: held, their shared-memory operand copies outgrew sm_90 at hidden width 64)."""
    ys0 = dot(Gss, Xs, DOT) + dot(Gsk, Xk, DOT)
    yk0 = dot(tl.trans(Gsk), Xs, DOT) + dot(Gkk, Xk, DOT)
    raw = tl.sum(tl.sum(Xs * ys0, 1), 0) + tl.sum(tl.sum(Xk * yk0, 1), 0)
    s = ns_scale(tl.maximum(raw, 0.0), eps)
    xs = Xs * s
    xk = Xk * s
    tl.debug_barrier()  # the previous token's reverse steps have read the scratch
    for k in range(STEPS):
        ps, pk = _coordinates(xp + k * (BHB * BHB + BK * BHB), BHB, BK)
        tl.store(ps, xs)
        tl.store(pk, xk)
        if k < STEPS - 1:
            xs, xk = _ns_basis_step(xs, xk, Gss, Gsk, Gkk, na, nb, nc, BHB, DOT)
    tl.debug_barrier()  # every thread's iterates are in the scratch
    for kk in range(STEPS):
        ps, pk = _coordinates(xp + (STEPS - 1 - kk) * (BHB * BHB + BK * BHB), BHB, BK)
        xs = tl.load(ps)
        xk = tl.load(pk)
        ys = dot(Gss, xs, DOT) + dot(Gsk, xk, DOT)
        yk = dot(tl.trans(Gsk), xs, DOT) + dot(Gkk, xk, DOT)
        Gk = dot(tl.trans(xs), ys, DOT) + dot(tl.trans(xk), yk, DOT)
        M = ns_poly(Gk, na, nb, nc, BHB, DOT)
        dM = dot(tl.trans(xs), dxs, DOT) + dot(tl.trans(xk), dxk, DOT)
        dG = nb * dM + nc * (dot(dM, Gk, DOT) + dot(Gk, dM, DOT))
        Pk = dG + tl.trans(dG)
        dxs = dot(dxs, M, DOT) + dot(ys, Pk, DOT)
        dxk = dot(dxk, M, DOT) + dot(yk, Pk, DOT)
        dGss += dot(xs, dot(dG, tl.trans(xs), DOT), DOT)
        dGsk += dot(xs, dot(Pk, tl.trans(xk), DOT), DOT)
        dGkk += dot(xk, dot(dG, tl.trans(xk), DOT), DOT)
    ip = (tl.sum(tl.sum(dxs * Xs, 1), 0) + tl.sum(tl.sum(dxk * Xk, 1), 0)) * (raw > 0.0).to(tl.float32)
    c3 = s * s * s * ip
    dGss -= 0.5 * c3 * dot(Xs, tl.trans(Xs), DOT)
    dGsk -= c3 * dot(Xs, tl.trans(Xk), DOT)
    dGkk -= 0.5 * c3 * dot(Xk, tl.trans(Xk), DOT)
    return s * dxs - c3 * ys0, s * dxk - c3 * yk0, dGss, dGsk, dGkk


@triton.jit
def _tiles(scr, base, BHB: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):
    """Pointers of one token's three tiles in the scratch buffer from ``base``: ``[BHB, BHB]`` (S1's
    coordinates), ``[BK, BHB]`` (the key rows'), ``[BHB, BD]`` (layer 2)."""
    ps, pk = _coordinates(scr + base, BHB, BK)
    h = tl.arange(0, BHB)
    d = tl.arange(0, BD)
    p2 = scr + base + BHB * BHB + BK * BHB + h[:, None] * BD + d[None, :]
    return ps, pk, p2


@triton.jit
def _key_block(i, q, k, qrow, qvalid, krow, kvalid, s1c, dw1, ds1, sc1, base1,
               DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr):  # fmt: skip
    """Key block i of the final passes (step 5): its offsets and mask in the layer-1 matrices, the keys'
    and queries' columns ``[BK, KB]``ᵀ, and its tiles of the start momentum S1 and of the end state's
    cotangents dW1', dS1'."""
    o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
    kT = key_cols_t(k, krow, kvalid, i, DI, KB)
    qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
    S1 = tl.load(s1c + sc1 + o1_, mask=m1, other=0.0)
    dW1n = tl.load(dw1 + base1 + o1_, mask=m1, other=0.0)
    dS1n = tl.load(ds1 + base1 + o1_, mask=m1, other=0.0)
    return o1_, m1, kT, qT, S1, dW1n, dS1n


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _token_muon_backward_kernel(
    q, k, v, ln_w, ln_b, beta, keep, lr, mom, qm, dy,
    w1c, w2c, s1c, s2c,  # the segment's chunk-start states [B, H, NC, ...]
    scr,  # scratch per program: every token's N_t and Z_t [L, 2, NT], then STEPS iterates [NX]
    dw1, dw2, ds1, ds2, dw1a, dw2a,  # the state's cotangents (in place), the anchor's
    dq, dk, dv, dbeta, dkeep, dlr, dmom, dqm, dln_w, dln_b,  # gradients
    T, P0, C0, NC, NCT, ln_eps, na, nb, nc, ns_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, LN: tl.constexpr,
    RES: tl.constexpr, STEPS: tl.constexpr, NSD: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n1 = DI * DH
    n2 = DH * D
    base1 = bh * n1
    base2 = bh * n2
    NT = BHB * BHB + BK * BHB + BHB * BD
    NX = BHB * BHB + BK * BHB  # one Newton–Schulz iterate's coordinates
    sb = bh * (L * 2 * NT + STEPS * NX)  # this program's scratch: N_t, Z_t per token, then the iterates
    cols = tl.arange(0, BD)
    cmask = cols < D
    li = tl.arange(0, BL)
    lk = tl.arange(0, BK)
    lmask = li < L
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    o2_, m2 = w2_block(0, D, DH, BD, BHB)
    for cr in range(NC):
        c = NC - 1 - cr
        g = C0 + c
        cc = bh * NCT + g
        is_last = g == NCT - 1
        sc1 = (bh * NC + c) * n1
        sc2 = (bh * NC + c) * n2
        offs, mask, qvalid, qrow, _koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, k, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, 0, RES
        )
        b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
        # 1. recompute
        Z1T, qw1, qs1, qk, Gss, Gsk, Gkk = chunk_products(
            q, k, qrow, qvalid, krow, kvalid, w1c, s1c, sc1, DI, DH, KB, NI, BHB, BL, BK, DOT, NSD
        )
        W2 = tl.load(w2c + sc2 + o2_, mask=m2, other=0.0)
        S2 = tl.load(s2c + sc2 + o2_, mask=m2, other=0.0)
        AT, dd, dout, r, xk, rk, wdT, d1T = key_path_t(
            Z1T, W2, b_kr, b_v, delta, gamma, shift, kmask, cmask, ln_eps, D, LN, RES, ACT, DOT
        )
        gZ1 = act_grad(Z1T, ACT)
        Zs = tl.zeros([BHB, BHB], dtype=tl.float32)
        Zk = tl.zeros([BK, BHB], dtype=tl.float32)
        Z2 = tl.zeros([BHB, BD], dtype=tl.float32)
        z1T = tl.zeros([BHB, BL], dtype=tl.float32)
        out = tl.zeros([BL, BD], dtype=tl.float32)
        for t in range(L):
            m_t, keep_t, lr_t, beta_t, q_t = token_coefficients(beta, keep, lr, mom, qm, cc * L + t, lk, L, P)
            xs, xk1, N2 = token_directions(
                m_t, q_t, d1T, AT, dd, S2, Gss, Gsk, Gkk, na, nb, nc, ns_eps, STEPS, BHB, BD, DOT, NSD
            )
            Zs = keep_t * Zs + lr_t * xs
            Zk = keep_t * Zk + lr_t * xk1
            Z2 = keep_t * Z2 + lr_t * N2
            at = li == t
            z1, z2 = token_read(at, beta_t, qw1, qs1, qk, Zs, Zk, Z2, W2, ACT)
            z1T = tl.where(at[None, :], z1[:, None], z1T)
            out = tl.where(at[:, None], z2[None, :], out)
            ps, pk, p2 = _tiles(scr, sb + t * 2 * NT, BHB, BK, BD)
            tl.store(ps, xs)
            tl.store(pk, xk1)
            tl.store(p2, N2)
            tl.store(ps + NT, Zs)
            tl.store(pk + NT, Zk)
            tl.store(p2 + NT, Z2)
        dO = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        if LN:
            dO, dg, db = read_ln_backward(out, dO, gamma, cmask, D, ln_eps)
            d_gamma += dg
            d_shift += db
        dO = tl.where(mask, dO, 0.0)
        # 2. the end state's cotangents
        dZs = tl.zeros([BHB, BHB], dtype=tl.float32)  # S1ᵀ dW1'
        dZk = tl.zeros([BK, BHB], dtype=tl.float32)  # K dW1'
        kdS1 = tl.zeros([BK, BHB], dtype=tl.float32)  # K dS1'
        g_beta_e = tl.sum(tl.zeros([BD], dtype=tl.float32), 0)
        g_m_e = g_beta_e
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            dW1n = tl.load(dw1 + base1 + o1_, mask=m1, other=0.0)
            dS1n = tl.load(ds1 + base1 + o1_, mask=m1, other=0.0)
            S1 = tl.load(s1c + sc1 + o1_, mask=m1, other=0.0)
            dZs += dot(tl.trans(S1), dW1n, DOT)
            dZk += dot(tl.trans(kT), dW1n, DOT)
            kdS1 += dot(tl.trans(kT), dS1n, DOT)
            g_beta_e += inner(dW1n, tl.load(w1c + sc1 + o1_, mask=m1, other=0.0))
            g_m_e += inner(dS1n, S1)
        dW2n = tl.load(dw2 + base2 + o2_, mask=m2, other=0.0)
        dS2n = tl.load(ds2 + base2 + o2_, mask=m2, other=0.0)
        dZ2 = dW2n
        # 3. the tokens in reverse
        dGss = tl.zeros([BHB, BHB], dtype=tl.float32)
        dGsk = tl.zeros([BHB, BK], dtype=tl.float32)
        dGkk = tl.zeros([BK, BK], dtype=tl.float32)
        d_dd = tl.zeros([BK, BD], dtype=tl.float32)  # of Δ
        d_d1 = tl.zeros([BK, BHB], dtype=tl.float32)  # of δ1
        dAT = tl.zeros([BHB, BK], dtype=tl.float32)
        dS2s = tl.zeros([BHB, BD], dtype=tl.float32)  # Σ_t m_t dS2_t
        dz1T = tl.zeros([BHB, BL], dtype=tl.float32)
        dqs1T = tl.zeros([BHB, BL], dtype=tl.float32)
        dqk = tl.zeros([BL, BK], dtype=tl.float32)
        g_beta = tl.zeros([BL], dtype=tl.float32)
        g_keep = tl.zeros([BL], dtype=tl.float32)
        g_lr = tl.zeros([BL], dtype=tl.float32)
        g_m = tl.zeros([BL], dtype=tl.float32)
        g_q = tl.zeros([BL, BK], dtype=tl.float32)
        for tr in range(L):
            t = L - 1 - tr
            m_t, keep_t, lr_t, beta_t, q_t = token_coefficients(beta, keep, lr, mom, qm, cc * L + t, lk, L, P)
            at = li == t
            ps, pk, p2 = _tiles(scr, sb + t * 2 * NT, BHB, BK, BD)
            Zs = tl.load(ps + NT)
            Zk = tl.load(pk + NT)
            Z2 = tl.load(p2 + NT)
            # the read: z1 = β_t q W1 + (q S1) Zs + (q Kᵀ) Zk, out = σ(z1) (β_t W2 + Z2)
            z1 = tl.sum(tl.where(at[None, :], z1T, 0.0), 1)
            a1 = act(z1, ACT)
            do = tl.sum(tl.where(at[:, None], dO, 0.0), 0)
            w2do = tl.sum(W2 * do[None, :], 1)
            gb = tl.sum(a1 * w2do, 0)
            dz1 = (beta_t * w2do + tl.sum(Z2 * do[None, :], 1)) * act_grad(z1, ACT)
            dZ2 += a1[:, None] * do[None, :]
            gb += tl.sum(dz1 * tl.sum(tl.where(at[None, :], qw1, 0.0), 1), 0)
            dz1T = tl.where(at[None, :], dz1[:, None], dz1T)
            dqs1T = tl.where(at[None, :], tl.sum(Zs * dz1[None, :], 1)[:, None], dqs1T)
            dqk = tl.where(at[:, None], tl.sum(Zk * dz1[None, :], 1)[None, :], dqk)
            dZs += tl.sum(tl.where(at[None, :], qs1, 0.0), 1)[:, None] * dz1[None, :]
            dZk += tl.sum(tl.where(at[:, None], qk, 0.0), 0)[:, None] * dz1[None, :]
            # Z_t = keep_t Z_{t−1} + lr_t N_t
            Ns = tl.load(ps)
            Nk = tl.load(pk)
            N2 = tl.load(p2)
            gl = inner(dZs, Ns) + inner(dZk, Nk) + inner(dZ2, N2)
            pps, ppk, pp2 = _tiles(scr, sb + tl.maximum(t - 1, 0) * 2 * NT + NT, BHB, BK, BD)
            first = t == 0
            gk = inner(dZs, tl.load(pps)) + inner(dZk, tl.load(ppk)) + inner(dZ2, tl.load(pp2))
            gk = tl.where(first, 0.0, gk)
            dNs = lr_t * dZs
            dNk = lr_t * dZk
            dN2 = lr_t * dZ2
            dZs = keep_t * dZs
            dZk = keep_t * dZk
            dZ2 = keep_t * dZ2
            # layer 2: N2 = NS(m_t S2 − Aᵀ (Q[t] ⊙ Δ))
            qdd = dd * q_t[:, None]
            dS2t = ns_tile_backward(m_t * S2 - dot(AT, qdd, DOT), dN2, na, nb, nc, ns_eps, STEPS, BD, NSD)
            gm = inner(dS2t, S2)
            dS2s += m_t * dS2t
            adS2 = dot(tl.trans(AT), dS2t, DOT)  # A dS2_t [BK, BD]
            d_dd -= q_t[:, None] * adS2
            gq = -tl.sum(adS2 * dd, 1)
            dAT -= dot(dS2t, tl.trans(qdd), DOT)
            # layer 1: coordinates [m_t I; −E_t], E_t = Q[t] ⊙ δ1
            d1 = tl.trans(d1T)
            dXs, dXk, dGss, dGsk, dGkk = ns_in_basis_backward(
                m_t * eye(BHB), -(d1 * q_t[:, None]), dNs, dNk, Gss, Gsk, Gkk, dGss, dGsk, dGkk,
                scr + sb + L * 2 * NT, na, nb, nc, ns_eps, STEPS, BHB, BK, NSD,
            )  # fmt: skip
            gm += inner(dXs, eye(BHB))
            gq -= tl.sum(dXk * d1, 1)
            d_d1 -= q_t[:, None] * dXk
            g_beta = tl.where(at, gb, g_beta)
            g_keep = tl.where(at, gk, g_keep)
            g_lr = tl.where(at, gl, g_lr)
            g_m = tl.where(at, gm, g_m)
            g_q = tl.where(at[:, None], gq[None, :], g_q)
        # 4. the end update: W' = β_e W + U Z_L, S1' = m_e S1 − Kᵀ E_L, S2' = m_e S2 − Aᵀ (Q[e] ⊙ Δ)
        m_e, _, _, beta_e, q_e = token_coefficients(beta, keep, lr, mom, qm, cc * L + L - 1, lk, L, P)
        d1 = tl.trans(d1T)
        gq = tl.sum(-kdS1 * d1, 1)
        d_d1 -= q_e[:, None] * kdS1
        adS2 = dot(tl.trans(AT), dS2n, DOT)
        d_dd -= q_e[:, None] * adS2
        gq -= tl.sum(adS2 * dd, 1)
        dAT -= dot(dS2n, tl.trans(dd * q_e[:, None]), DOT)
        end = li == L - 1
        g_beta += tl.where(end, g_beta_e + inner(dW2n, W2), 0.0)
        g_m += tl.where(end, g_m_e + inner(dS2n, S2), 0.0)
        g_q += tl.where(end[:, None], gq[None, :], 0.0)
        # the key path backward: δ1 = (Δ W2ᵀ) ⊙ σ'(Z1), Δ = [LN backward of] 2R, A = σ(Z1)
        d_d1T = tl.trans(d_d1)
        eT = d_d1T * gZ1
        d_dd += dot(tl.trans(eT), W2, DOT)
        dZ1T = d_d1T * wdT * act_grad2(Z1T, ACT)
        dZ2k, dr, d_gamma, d_shift = delta_backward(
            d_dd, dd, dout, r, delta, xk, rk, gamma, d_gamma, d_shift, dv, offs, kmask, krow, kvalid, cmask,
            2.0, 0.0, 0.0, D, 0, LN,
        )  # fmt: skip
        dAT += dot(W2, tl.trans(dZ2k), DOT)
        dZ1T += dAT * gZ1
        vptr, vmask = chunk_key_rows(dv, cc, 0, P + L, D, BK, BD)
        tl.store(vptr, -dr, mask=vmask)
        a1T = act(z1T, ACT)
        new_dW2 = beta_e * dW2n + dot(a1T * b_beta[None, :], dO, DOT) + dot(eT, dd, DOT) + dot(AT, dZ2k, DOT)
        if is_last:  # the anchor is the last chunk's start weights
            new_dW2 += tl.load(dw2a + base2 + o2_, mask=m2, other=0.0)
        tl.debug_barrier()
        tl.store(dw2 + base2 + o2_, new_dW2, mask=m2)
        tl.store(ds2 + base2 + o2_, m_e * dS2n + dS2s, mask=m2)
        # 5. the passes over the key blocks: dk and dq, then dW1 and dS1 in place (two loops, not one:
        # one loop's loop-invariant operands, held in shared memory, outgrew sm_90 at hidden width 64)
        pls, plk, _ = _tiles(scr, sb + (L * 2 - 1) * NT, BHB, BK, BD)
        Zs_e = tl.load(pls)
        Zk_e = tl.load(plk)
        dqw1T = dz1T * b_beta[None, :]
        dZ1 = tl.trans(dZ1T)
        dGss_sym = dGss + tl.trans(dGss)
        dGkk_sym = dGkk + tl.trans(dGkk)
        E_e = d1 * q_e[:, None]
        for i in range(NI):
            o1_, m1, kT, qT, S1, dW1n, dS1n = _key_block(
                i, q, k, qrow, qvalid, krow, kvalid, s1c, dw1, ds1, sc1, base1, DI, DH, KB, BHB
            )
            W1 = tl.load(w1c + sc1 + o1_, mask=m1, other=0.0)
            dki = dot(tl.trans(dqk), tl.trans(qT), DOT) + dot(Zk_e, tl.trans(dW1n), DOT)
            dki += dot(tl.trans(dGsk), tl.trans(S1), DOT) + dot(dGkk_sym, tl.trans(kT), DOT)
            dki += dot(dZ1, tl.trans(W1), DOT) - dot(E_e, tl.trans(dS1n), DOT)
            kptr, kmask1 = chunk_key_rows(dk, cc, i * KB, P + L, DI, BK, KB)
            tl.store(kptr, dki, mask=kmask1)
            dqi = dot(tl.trans(dqw1T), tl.trans(W1), DOT) + dot(tl.trans(dqs1T), tl.trans(S1), DOT)
            dqi += dot(dqk, tl.trans(kT), DOT)
            qoffs, qmask = col_block(qrow, qvalid, i * KB, DI, DI, KB)
            tl.store(dq + qoffs, dqi, mask=qmask)
        for i in range(NI):
            o1_, m1, kT, qT, S1, dW1n, dS1n = _key_block(
                i, q, k, qrow, qvalid, krow, kvalid, s1c, dw1, ds1, sc1, base1, DI, DH, KB, BHB
            )
            new_dW1 = beta_e * dW1n + dot(qT, tl.trans(dqw1T), DOT) + dot(kT, dZ1, DOT)
            if is_last:
                new_dW1 += tl.load(dw1a + base1 + o1_, mask=m1, other=0.0)
            new_dS1 = m_e * dS1n + dot(dW1n, tl.trans(Zs_e), DOT) + dot(qT, tl.trans(dqs1T), DOT)
            new_dS1 += dot(S1, dGss_sym, DOT) + dot(kT, tl.trans(dGsk), DOT)
            tl.debug_barrier()  # every thread has read block i of the cotangents before they are overwritten
            tl.store(dw1 + base1 + o1_, new_dW1, mask=m1)
            tl.store(ds1 + base1 + o1_, new_dS1, mask=m1)
        tl.store(dbeta + cc * L + li, g_beta, mask=lmask)
        tl.store(dkeep + cc * L + li, g_keep, mask=lmask)
        tl.store(dlr + cc * L + li, g_lr, mask=lmask)
        tl.store(dmom + cc * L + li, g_m, mask=lmask)
        qm_ptr = dqm + (cc * L + li[:, None]) * (P + L) + lk[None, :]
        tl.store(qm_ptr, g_q, mask=lmask[:, None] & (lk < P + L)[None, :])
        tl.debug_barrier()  # the next chunk reads the updated cotangents
    if LN:
        tl.store(dln_w + bh * D + cols, tl.load(dln_w + bh * D + cols, mask=cmask) + d_gamma, mask=cmask)
        tl.store(dln_b + bh * D + cols, tl.load(dln_b + bh * D + cols, mask=cmask) + d_shift, mask=cmask)
