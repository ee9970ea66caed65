"""The wide-state forward kernel of the Omega rule with Muon refreshed once per chunk (Atlas, ATLAS arXiv
2505.23735 §5 Eq. 32–33 with ``muon="chunk"``; the schedule and its equations are
:mod:`memnets.memory.omega`'s). Per chunk of L tokens of one (sequence, head), with chunk-start weights
W (W1 ``[Dk, Dh]``, W2 ``[Dh, D]``), momentum S and orthogonalised direction O of the same shapes::

    key path   Z1 = K W1, A = σ(Z1), Z2 = A W2, Δ = [LN backward of] 2(M(K) − V), δ1 = (Δ W2ᵀ) ⊙ σ'(Z1)
               over the chunk's rows and the P = c − 1 before them (the Omega window, as the plain
               wide-state kernels: :mod:`.wide_forward`)
    momentum   S1' = m_end S1 − Kᵀ (s ⊙ δ1),  S2' = m_end S2 − Aᵀ (s ⊙ Δ)       (no step size: Eq. 32)
    Muon       N = NS(S') per matrix (:mod:`.newton_schulz`: layer 2's on chip, layer 1's as S1' F)
    reads      W_t = β_t W + d_t O + l_t N,  y_t = [LN](σ(Q_t W1_t) W2_t)        (every token its own W_t)
    chunk end  W' = W_{last},  O' = N if the chunk is complete (a refresh) else O

with the per-token coefficients β_t = Π keep, d_t = Σ_{i≤t} (β_t/β_i) lr_i − l_t, l_t = lr_t at the
chunk's last token (0 elsewhere and in a chunk the sequence ends inside), and s (the window's band
applied to the momentum's decays) and m_end per chunk: :func:`memnets.memory.kernel_bridge.muon_coefficients`
computes them in PyTorch, whose autograd takes their gradients to the gates. There is no G term: a
token's own gradient reaches the weights only through the momentum, and the momentum only at the
chunk's end (the price of the per-chunk schedule).

Scope (``muon_supports``): the whole hidden width in one block of at most 64 columns (the Gram matrices
Dh × Dh and D × D stay on chip), head dims up to 64, the L2 bias, per-head gates, dense batches. Grid:
one program per (sequence, head), the state in global memory (float32 working copies, updated in
place; barriers as in :mod:`.wide_forward`). Per chunk: pass 1 the key path's Z2 and Δ; pass 2 over the
key blocks, Z1 and the reads' β and d terms at W1 and O1; then δ1, the layer-2 momentum and its NS; pass 3
over the key blocks, S1' written with its squared norm and the reads' Q S1'; one pass per Newton–Schulz
step for the Gram matrix of S1' F_k (the factor F on chip); pass 4 over the key blocks, N1 = S1' F and
the new W1 and O1; then layer 2's reads and update, y. With ``STORE`` (the backward's recompute) every
chunk's start state (W, S, O) is written and the reads are skipped.

Cost: layer 1's Newton–Schulz reads the ``[Dk, Dh]`` momentum once per step and runs two ``[Dk, Dh] ×
[Dh, Dh]``-sized products per step, 2.5× the FLOP of the rest of a chunk at Atlas's 760M widths
(Dk = 2,144, Dh = 64, chunk 16); the static report's figures are in benchmarks/RESULTS.md §37.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..precision import dot
from .common import act, act_grad, key_cols_t, key_delta, ln_params, ln_rows
from .config import SEGMENT_INTS
from .newton_schulz import eye, ns_poly, ns_scale, ns_tile
from .wide_blocks import chunk_rows, key_z2, w1_block, w2_block


@triton.jit
def muon_coefficients_of(beta, dc, lc, m_end, s_coef, cc, last, L: tl.constexpr, P: tl.constexpr,
                         BL: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """Chunk ``cc``'s coefficients: β, d, l ``[BL]``, their values at token ``last`` (the chunk-end
    update's), m_end and s ``[BK]``."""
    li = tl.arange(0, BL)
    lmask = li < L
    b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
    b_d = tl.load(dc + cc * L + li, mask=lmask, other=0.0)
    b_l = tl.load(lc + cc * L + li, mask=lmask, other=0.0)
    lk = tl.arange(0, BK)
    b_s = tl.load(s_coef + cc * (P + L) + lk, mask=lk < P + L, other=0.0)
    b_m = tl.load(m_end + cc)
    at = li == last
    beta_last = tl.sum(tl.where(at, b_beta, 0.0), 0)
    d_last = tl.sum(tl.where(at, b_d, 0.0), 0)
    l_last = tl.sum(tl.where(at, b_l, 0.0), 0)
    return b_beta, b_d, b_l, beta_last, d_last, l_last, b_m, b_s


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _muon_forward_kernel(
    q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef,  # inputs, coefficients
    y, w1, w2, s1, s2, o1, o2, w1_anchor, w2_anchor,  # w1 .. o2: the state, updated in place
    w1_chunks, w2_chunks, s1_chunks, s2_chunks, o1_chunks, o2_chunks,  # with STORE: chunk-start states
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
    n1 = DI * DH
    n2 = DH * D
    base1 = bh * n1
    base2 = bh * n2
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    o2_, m2 = w2_block(0, D, DH, BD, BHB)
    for c in range(NC):
        g = C0 + c
        cc = bh * NCT + g
        last = tl.minimum(T - g * L, L) - 1
        refresh = ((g + 1) * L <= T).to(tl.float32)
        is_last = g == NCT - 1
        sc1 = (bh * NC + c) * n1
        sc2 = (bh * NC + c) * n2
        offs, mask, qvalid, qrow, _koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, k, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, 0, RES
        )
        # pass 1: Z2 at the chunk-start weights, Δ on whole rows
        Z2 = key_z2(
            k, krow, kvalid, w1, w2, base1, base2, 0, 1.0, D, DI, DH, BK, BD, KB, NI, BHB, 1, ACT, DOT
        )
        dd, _, _, _, _ = key_delta(
            Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, 2.0, 0.0, 0.0, ln_eps, D, 0, LN, RES
        )
        b_beta, b_d, b_l, beta_last, d_last, l_last, b_m, b_s = muon_coefficients_of(
            beta, dc, lc, m_end, s_coef, cc, last, L, P, BL, BK
        )
        # pass 2: Z1ᵀ and the reads' (β ⊙ Q W1 + d ⊙ Q O1)ᵀ at the chunk start
        Z1T = tl.zeros([BHB, BK], dtype=tl.float32)
        zq = tl.zeros([BHB, BL], dtype=tl.float32)
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            W1 = tl.load(w1 + base1 + o1_, mask=m1, other=0.0)
            Z1T += dot(tl.trans(W1), key_cols_t(k, krow, kvalid, i, DI, KB), DOT)
            if STORE:
                tl.store(w1_chunks + sc1 + o1_, W1, mask=m1)
                tl.store(o1_chunks + sc1 + o1_, tl.load(o1 + base1 + o1_, mask=m1, other=0.0), mask=m1)
            else:
                qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
                O1 = tl.load(o1 + base1 + o1_, mask=m1, other=0.0)
                zq += dot(tl.trans(W1), qT * b_beta[None, :], DOT) + dot(tl.trans(O1), qT * b_d[None, :], DOT)
            if is_last:
                tl.store(w1_anchor + base1 + o1_, W1, mask=m1)
        AT = act(Z1T, ACT)
        W2 = tl.load(w2 + base2 + o2_, mask=m2, other=0.0)
        O2 = tl.load(o2 + base2 + o2_, mask=m2, other=0.0)
        S2 = tl.load(s2 + base2 + o2_, mask=m2, other=0.0)
        d1s = tl.trans(dot(W2, tl.trans(dd), DOT) * act_grad(Z1T, ACT) * b_s[None, :])  # s ⊙ δ1 [BK, BHB]
        S2n = b_m * S2 - dot(AT * b_s[None, :], dd, DOT)
        N2 = ns_tile(S2n, na, nb, nc, ns_eps, STEPS, BD, NSD)
        # pass 3: S1' = m S1 − Kᵀ (s ⊙ δ1) in place, its squared norm and (Q S1')ᵀ
        sq = tl.sum(tl.zeros([BHB], dtype=tl.float32), 0)
        zs = tl.zeros([BHB, BL], dtype=tl.float32)
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            S1 = tl.load(s1 + base1 + o1_, mask=m1, other=0.0)
            if STORE:
                tl.store(s1_chunks + sc1 + o1_, S1, mask=m1)
            S1n = b_m * S1 - dot(key_cols_t(k, krow, kvalid, i, DI, KB), d1s, DOT)
            sq += tl.sum(tl.sum(S1n * S1n, 1), 0)
            if not STORE:
                zs += dot(tl.trans(S1n), key_cols_t(q, qrow, qvalid, i, DI, KB), DOT)
            tl.debug_barrier()  # every thread has read block i of S1 before it is overwritten
            tl.store(s1 + base1 + o1_, S1n, mask=m1)
        tl.debug_barrier()  # the NS passes read S1'
        F1 = ns_scale(sq, ns_eps) * eye(BHB)
        for _ in range(STEPS):  # NS(S1') = S1' F1, one pass over S1' per step for its Gram matrix
            G1 = tl.zeros([BHB, BHB], dtype=tl.float32)
            for i in range(NI):
                o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
                x = dot(tl.load(s1 + base1 + o1_, mask=m1, other=0.0), F1, NSD)
                G1 += dot(tl.trans(x), x, NSD)
            F1 = dot(F1, ns_poly(G1, na, nb, nc, BHB, NSD), NSD)
        # pass 4: N1 = S1' F1, W1' = β W1 + d O1 + l N1, O1' = N1 on a refresh
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            N1 = dot(tl.load(s1 + base1 + o1_, mask=m1, other=0.0), F1, NSD)
            W1 = tl.load(w1 + base1 + o1_, mask=m1, other=0.0)
            O1 = tl.load(o1 + base1 + o1_, mask=m1, other=0.0)
            tl.debug_barrier()
            tl.store(w1 + base1 + o1_, beta_last * W1 + d_last * O1 + l_last * N1, mask=m1)
            tl.store(o1 + base1 + o1_, refresh * N1 + (1.0 - refresh) * O1, mask=m1)
        # layer 2: the reads, then the state
        if STORE:
            tl.store(w2_chunks + sc2 + o2_, W2, mask=m2)
            tl.store(s2_chunks + sc2 + o2_, S2, mask=m2)
            tl.store(o2_chunks + sc2 + o2_, O2, mask=m2)
        else:
            a1T = act(zq + dot(tl.trans(F1), zs, NSD) * b_l[None, :], ACT)
            z2T = b_beta[None, :] * dot(tl.trans(W2), a1T, DOT)
            z2T += b_d[None, :] * dot(tl.trans(O2), a1T, DOT) + b_l[None, :] * dot(tl.trans(N2), a1T, DOT)
            z2 = tl.trans(z2T)
            if LN:
                xq, _ = ln_rows(z2, cmask, D, ln_eps)
                z2 = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, z2.to(y.dtype.element_ty), mask=mask)
        if is_last:
            tl.store(w2_anchor + base2 + o2_, W2, mask=m2)
        tl.debug_barrier()
        tl.store(w2 + base2 + o2_, beta_last * W2 + d_last * O2 + l_last * N2, mask=m2)
        tl.store(s2 + base2 + o2_, S2n, mask=m2)
        tl.store(o2 + base2 + o2_, refresh * N2 + (1.0 - refresh) * O2, mask=m2)
        tl.debug_barrier()  # the next chunk reads the updated state
