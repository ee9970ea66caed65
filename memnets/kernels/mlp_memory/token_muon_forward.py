"""The forward kernel of the Omega rule with Muon on every token (Atlas, ATLAS arXiv 2505.23735 §5
Eq. 32–33 with ``muon="token"``, Eq. 40; the schedule and its equations are :mod:`memnets.memory.omega`'s).
Per chunk of L tokens of one (sequence, head), with chunk-start weights W (W1 ``[Dk, Dh]``, W2
``[Dh, D]``) and momentum S of the same shapes::

    key path   Z1 = K W1, A = σ(Z1), Z2 = A W2, Δ = [LN backward of] 2(M(K) − V), δ1 = (Δ W2ᵀ) ⊙ σ'(Z1)
               over the chunk's rows and the P = c − 1 before them (the Omega window)
    momentum   S_t = m_t S − Σ_j Q[t, j] x_jᵀ δ_j                (no step size: Eq. 32)
    Muon       N_t = NS(S_t)
    weights    W_t = β_t W + Σ_{i≤t} (β_t/β_i) lr_i N_i = β_t W + Z_t,   Z_t = keep_t Z_{t−1} + lr_t N_t
    reads      y_t = [LN](σ(q_t W1_t) W2_t)

with m_t = Π_{i≤t} mom_i, β_t = Π_{i≤t} keep_i and Q[t, j] the momentum's decays applied to the window's
band (:func:`memnets.memory.muon_kernel.token_muon_coefficients`, computed in PyTorch).

Layer 1 works on coordinates, as :func:`memnets.memory.omega._token_layer` does: every S1_t lies in
the column space of U = [S1 | Kᵀ] (``[Dk, Dh + P + L]``) with coordinates C_t = [m_t I; −E_t],
E_t[j] = Q[t, j] δ1_j, and every Newton–Schulz iterate of U C_t is U times an iterate of C_t taken
through the Gram matrix Uᵀ U (:func:`ns_in_basis`). So one pass over W1 and S1's key blocks per chunk
forms that Gram matrix, K W1 and the queries' Q W1, Q S1 and Q Kᵀ; the tokens then run on chip, each
its Newton–Schulz on ``[Dh + P + L, Dh]`` coordinates and on layer 2's ``[Dh, D]`` momentum, with
Z1_t (coordinates in U) and Z2_t accumulated token by token; a second pass writes W1 + U Z1_L and
S1_L = U C_L. Nothing of size Dk × Dh is formed per token: with degree-2 features (Dk = 560 at head dim
32) a token's Newton–Schulz costs (Dh + P + L)² Dh + … instead of 2 Dk Dh² per step.

Scope (:func:`.muon_launch.muon_supports` with ``token``): hidden width and head dim ≤ 64 (hidden ≤ 32
with one TF32 product per matmul: the backward's shared memory, :mod:`.token_muon_backward`), per-head
gates, the L2 bias, dense batches. Grid: one program per (sequence, head), the state in
global memory (float32 working copies, updated in place, barriers as in :mod:`.wide_forward`). With
``STORE`` (the backward's recompute, :mod:`.token_muon_backward`) every chunk's start state (W, S) is
written and the reads are not.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..precision import dot
from .common import act, act_grad, key_cols_t, key_delta, ln_params, ln_rows
from .config import SEGMENT_INTS
from .newton_schulz import eye, ns_poly, ns_scale, ns_tile
from .wide_blocks import chunk_rows, w1_block, w2_block


@triton.jit
def ns_in_basis(xs, xk, Gss, Gsk, Gkk, na, nb, nc, eps, STEPS: tl.constexpr, BC: tl.constexpr,
                DOT: tl.constexpr):  # fmt: skip
    """Newton–Schulz of U X from its coordinates X = [xs; xk] (``[BC, BC]`` on U's first columns, S1,
    ``[BK, BC]`` on the key rows) and the Gram blocks of U: Uᵀ U = [[Gss, Gsk], [Gskᵀ, Gkk]]. Returns the
    coordinates of NS(U X) (:func:`memnets.memory.muon.newton_schulz_in_basis`; the squared norm read
    through the Gram matrix clamped at 0, as there)."""
    ys = dot(Gss, xs, DOT) + dot(Gsk, xk, DOT)
    yk = dot(tl.trans(Gsk), xs, DOT) + dot(Gkk, xk, DOT)
    sq = tl.maximum(tl.sum(tl.sum(xs * ys, 1), 0) + tl.sum(tl.sum(xk * yk, 1), 0), 0.0)
    s = ns_scale(sq, eps)
    xs = xs * s
    xk = xk * s
    for _ in range(STEPS):
        ys = dot(Gss, xs, DOT) + dot(Gsk, xk, DOT)
        yk = dot(tl.trans(Gsk), xs, DOT) + dot(Gkk, xk, DOT)
        M = ns_poly(dot(tl.trans(xs), ys, DOT) + dot(tl.trans(xk), yk, DOT), na, nb, nc, BC, DOT)
        xs = dot(xs, M, DOT)
        xk = dot(xk, M, DOT)
    return xs, xk


@triton.jit
def chunk_products(
    q, k, qrow, qvalid, krow, kvalid, w1, s1, base1,
    DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr, NSD: tl.constexpr,
):  # fmt: skip
    """One pass over the key blocks of W1 and S1 (stored from ``base1``): Z1ᵀ = (K W1)ᵀ, the queries'
    (Q W1)ᵀ, (Q S1)ᵀ and Q Kᵀ, and the Gram blocks of U = [S1 | Kᵀ]: S1ᵀ S1, S1ᵀ Kᵀ, K Kᵀ."""
    Z1T = tl.zeros([BHB, BK], dtype=tl.float32)
    qw1 = tl.zeros([BHB, BL], dtype=tl.float32)
    qs1 = tl.zeros([BHB, BL], dtype=tl.float32)
    qk = tl.zeros([BL, BK], dtype=tl.float32)
    Gss = tl.zeros([BHB, BHB], dtype=tl.float32)
    Gsk = tl.zeros([BHB, BK], dtype=tl.float32)
    Gkk = tl.zeros([BK, BK], dtype=tl.float32)
    for i in range(NI):
        o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
        W1 = tl.load(w1 + base1 + o1_, mask=m1, other=0.0)
        S1 = tl.load(s1 + base1 + o1_, mask=m1, other=0.0)
        kT = key_cols_t(k, krow, kvalid, i, DI, KB)
        qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
        Z1T += dot(tl.trans(W1), kT, DOT)
        qw1 += dot(tl.trans(W1), qT, DOT)
        qs1 += dot(tl.trans(S1), qT, DOT)
        qk += dot(tl.trans(qT), kT, DOT)
        Gss += dot(tl.trans(S1), S1, NSD)
        Gsk += dot(tl.trans(S1), kT, NSD)
        Gkk += dot(tl.trans(kT), kT, NSD)
    return Z1T, qw1, qs1, qk, Gss, Gsk, Gkk


@triton.jit
def token_coefficients(beta, keep, lr, mom, qm, ct, lk, L: tl.constexpr, P: tl.constexpr):
    """Token ``ct``'s (flat index of its chunk slot) m_t, keep_t, lr_t, β_t and Q[t] ``[BK]``."""
    q_t = tl.load(qm + ct * (P + L) + lk, mask=lk < P + L, other=0.0)
    return tl.load(mom + ct), tl.load(keep + ct), tl.load(lr + ct), tl.load(beta + ct), q_t


@triton.jit
def token_directions(m_t, q_t, d1T, AT, dd, S2, Gss, Gsk, Gkk, na, nb, nc, eps, STEPS: tl.constexpr,
                     BHB: tl.constexpr, BD: tl.constexpr, DOT: tl.constexpr, NSD: tl.constexpr):  # fmt: skip
    """A token's orthogonalised momenta: layer 1's coordinates (NS of [m_t I; −E_t], E_t = Q[t] ⊙ δ1)
    and layer 2's NS(m_t S2 − Aᵀ (Q[t] ⊙ Δ))."""
    xs, xk = ns_in_basis(
        m_t * eye(BHB), -tl.trans(d1T * q_t[None, :]), Gss, Gsk, Gkk, na, nb, nc, eps, STEPS, BHB, NSD
    )
    N2 = ns_tile(m_t * S2 - dot(AT * q_t[None, :], dd, DOT), na, nb, nc, eps, STEPS, BD, NSD)
    return xs, xk, N2


@triton.jit
def token_read(at, beta_t, qw1, qs1, qk, Zs, Zk, Z2, W2, ACT: tl.constexpr):
    """Token t's (``at``: the chunk slot's mask) layer-1 pre-activation z1 = β_t q W1 + (q S1) Zs +
    (q Kᵀ) Zk and output σ(z1) (β_t W2 + Z2) before the LayerNorm."""
    z1 = beta_t * tl.sum(tl.where(at[None, :], qw1, 0.0), 1)
    z1 += tl.sum(tl.sum(tl.where(at[None, :], qs1, 0.0), 1)[:, None] * Zs, 0)
    z1 += tl.sum(tl.sum(tl.where(at[:, None], qk, 0.0), 0)[:, None] * Zk, 0)
    return z1, tl.sum(act(z1, ACT)[:, None] * (beta_t * W2 + Z2), 0)


@triton.jit
def key_path_t(Z1T, W2, b_kr, b_v, delta, gamma, shift, kmask, cmask, ln_eps, D: tl.constexpr,
               LN: tl.constexpr, RES: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr):  # fmt: skip
    """The key path after Z1ᵀ: Aᵀ, Δ (and key_delta's ℓ'(R), R, x̂, 1/σ), (Δ W2ᵀ)ᵀ and δ1ᵀ."""
    AT = act(Z1T, ACT)
    dd, dout, r, xk, rk = key_delta(
        tl.trans(dot(tl.trans(W2), AT, DOT)), b_kr, b_v, delta, gamma, shift, kmask, cmask,
        2.0, 0.0, 0.0, ln_eps, D, 0, LN, RES,
    )  # fmt: skip
    wdT = dot(W2, tl.trans(dd), DOT)
    return AT, dd, dout, r, xk, rk, wdT, wdT * act_grad(Z1T, ACT)


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _token_muon_forward_kernel(
    q, k, v, ln_w, ln_b, beta, keep, lr, mom, qm,  # inputs, coefficients
    y, w1, w2, s1, s2, w1_anchor, w2_anchor,  # w1 .. s2: the state, updated in place
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # with STORE: the chunk-start states [B, H, NC, ...]
    T, P0, C0, NC, NCT, ln_eps, na, nb, nc, ns_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, LN: tl.constexpr,
    RES: tl.constexpr, STEPS: tl.constexpr, NSD: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    base1 = bh * DI * DH
    base2 = bh * DH * D
    cols = tl.arange(0, BD)
    cmask = cols < D
    li = tl.arange(0, BL)
    lk = tl.arange(0, BK)
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    o2_, m2 = w2_block(0, D, DH, BD, BHB)
    for c in range(NC):
        g = C0 + c
        cc = bh * NCT + g
        offs, mask, qvalid, qrow, _koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, k, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, 0, RES
        )
        if STORE or g == NCT - 1:  # the chunk's start W1, S1 (the backward's), W1 (the anchor)
            sc1 = (bh * NC + c) * DI * DH
            for i in range(NI):
                o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
                W1 = tl.load(w1 + base1 + o1_, mask=m1, other=0.0)
                if STORE:
                    tl.store(w1_chunks + sc1 + o1_, W1, mask=m1)
                    tl.store(s1_chunks + sc1 + o1_, tl.load(s1 + base1 + o1_, mask=m1, other=0.0), mask=m1)
                if g == NCT - 1:
                    tl.store(w1_anchor + base1 + o1_, W1, mask=m1)
        Z1T, qw1, qs1, qk, Gss, Gsk, Gkk = chunk_products(
            q, k, qrow, qvalid, krow, kvalid, w1, s1, base1, DI, DH, KB, NI, BHB, BL, BK, DOT, NSD
        )
        W2 = tl.load(w2 + base2 + o2_, mask=m2, other=0.0)
        S2 = tl.load(s2 + base2 + o2_, mask=m2, other=0.0)
        AT, dd, _, _, _, _, _, d1T = key_path_t(
            Z1T, W2, b_kr, b_v, delta, gamma, shift, kmask, cmask, ln_eps, D, LN, RES, ACT, DOT
        )
        # the tokens: each one's momentum orthogonalised, accumulated into Z, and its read
        Zs = tl.zeros([BHB, BHB], dtype=tl.float32)
        Zk = tl.zeros([BK, BHB], dtype=tl.float32)
        Z2 = tl.zeros([BHB, BD], dtype=tl.float32)
        out = tl.zeros([BL, BD], dtype=tl.float32)
        for t in range(L):
            m_t, keep_t, lr_t, beta_t, q_t = token_coefficients(beta, keep, lr, mom, qm, cc * L + t, lk, L, P)
            xs, xk, N2 = token_directions(
                m_t, q_t, d1T, AT, dd, S2, Gss, Gsk, Gkk, na, nb, nc, ns_eps, STEPS, BHB, BD, DOT, NSD
            )
            Zs = keep_t * Zs + lr_t * xs
            Zk = keep_t * Zk + lr_t * xk
            Z2 = keep_t * Z2 + lr_t * N2
            at = li == t
            _z1, z2 = token_read(at, beta_t, qw1, qs1, qk, Zs, Zk, Z2, W2, ACT)
            out = tl.where(at[:, None], z2[None, :], out)
        if STORE:
            sc2 = (bh * NC + c) * DH * D
            tl.store(w2_chunks + sc2 + o2_, W2, mask=m2)
            tl.store(s2_chunks + sc2 + o2_, S2, mask=m2)
        else:
            if LN:
                xq, _ = ln_rows(out, cmask, D, ln_eps)
                out = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, out.to(y.dtype.element_ty), mask=mask)
        # the chunk's end (its last slot: a tail chunk's padding has lr 0 and keep = mom = 1, so the same
        # state): W1 ← β W1 + S1 Zs + Kᵀ Zk, S1 ← m S1 − Kᵀ E over the key blocks; layer 2 on chip
        m_e, _, _, beta_e, q_e = token_coefficients(beta, keep, lr, mom, qm, cc * L + L - 1, lk, L, P)
        E = tl.trans(d1T * q_e[None, :])
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            W1 = tl.load(w1 + base1 + o1_, mask=m1, other=0.0)
            S1 = tl.load(s1 + base1 + o1_, mask=m1, other=0.0)
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            W1 = beta_e * W1 + dot(S1, Zs, NSD) + dot(kT, Zk, NSD)
            S1 = m_e * S1 - dot(kT, E, DOT)
            tl.debug_barrier()  # every thread has read block i before it is overwritten
            tl.store(w1 + base1 + o1_, W1, mask=m1)
            tl.store(s1 + base1 + o1_, S1, mask=m1)
        if g == NCT - 1:
            tl.store(w2_anchor + base2 + o2_, W2, mask=m2)
        tl.debug_barrier()
        tl.store(w2 + base2 + o2_, beta_e * W2 + Z2, mask=m2)
        tl.store(s2 + base2 + o2_, m_e * S2 - dot(AT * q_e[None, :], dd, DOT), mask=m2)
        tl.debug_barrier()  # the next chunk reads the updated state
