"""The backward of :mod:`.muon_forward` (Atlas with Muon once per chunk, ATLAS arXiv 2505.23735 §5): the
chunks of a recompute segment in reverse, one program per (sequence, head), from each chunk's stored
start state (W, S, O) and the cotangents (dW, dS, dO) of its end state, updated in place to those of
its start state. Per chunk:

1. recompute (pass A over the key blocks, then whole rows): the key path (Z1, A, Δ, δ1), the momentum
   S' = m S − Xᵀ (s ⊙ δ) (pass B: ‖S1'‖²) and its NS, layer 1's iterated on x_k in a scratch buffer
   (x_0 = S1'/‖S1'‖, then two passes per step: x_kᵀ x_k, and x_{k+1} = x_k M_k written), the reads'
   Q W1, Q O1, Q N1 and their hidden and output layers;
2. the reads backward from dy: dẐ2 (through the LayerNorm), the coefficients' shares (β, d, l per
   token), the cotangents of W2, O2, N2 and of Ẑ1;
3. layer 2's state: dN2 = l_last dW2' + r dO2' + (the reads'), through NS (:func:`ns_factor_backward`)
   to dS2'; dS2 = m dS2', dO2 = d_last dW2' + (1 − r) dO2' + (the reads'), and the momentum's cotangents
   of A and Δ (its update's −Aᵀ (s ⊙ Δ));
4. layer 1's state: B1 writes dN1 into a scratch buffer (and sums the update coefficients' cotangents
   and writes dq); NS's steps in reverse, two passes each (dM_k = x_kᵀ dx, then dx ← dx M_k + x_k 2
   sym(dG_k) in place: :mod:`.newton_schulz`); B2 forms dS1'_i from dx_0, writes dS1, dO1 and the reads'
   and the update's share of dW1, and sums K dS1' (the cotangent of δ1, with s) and the momentum
   update's share of dk;
5. the key path backward (second order, as :mod:`.wide_backward`): δ1 = (Δ W2ᵀ) ⊙ σ'(Z1) and Δ =
   [LN backward of] 2R back to Z2, A, Z1, W2, dv (and the residual's keys, summed by the caller);
   dW2 written; pass C adds Kᵀ dZ1 to dW1 and dZ1 W1ᵀ to dk over the key blocks.

Key rows overlap between chunks (the Omega window), so dk and dv are written per chunk ``[B, H, NCT, P + L,
...]`` for the caller to fold. The coefficient gradients are per token (β, d, l, with the chunk-end
update's share at the last token) and per chunk (m_end, s); the LayerNorm's are summed per program.
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
    key_delta,
    ln_params,
    read_ln_backward,
)
from .config import SEGMENT_INTS
from .muon_forward import muon_coefficients_of
from .newton_schulz import ns_poly, ns_scale, ns_tile, ns_tile_backward
from .wide_blocks import chunk_rows, key_z2, w1_block, w2_block


@triton.jit
def chunk_key_rows(x, cc, c0, R: tl.constexpr, W: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """Offsets and mask of columns c0 .. c0 + BC of the R rows of chunk ``cc`` in a ``[.., R, W]`` tensor."""
    r = tl.arange(0, BR)
    c = c0 + tl.arange(0, BC)
    return x + (cc * R + r[:, None]) * W + c[None, :], (r < R)[:, None] & (c < W)[None, :]


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _muon_backward_kernel(
    q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef, dy,
    w1c, w2c, s1c, s2c, o1c, o2c,  # the segment's chunk-start states [B, H, NC, ...]
    xs, dxs,  # scratch: layer 1's NS iterates x_0 .. x_STEPS [B·H, STEPS + 1, DI, DH] and their cotangent
    dw1, dw2, ds1, ds2, do1, do2, dw1a, dw2a,  # the state's cotangents (in place), the anchor's
    dq, dk, dv, dbeta, ddc, dlc, dm, ds, dln_w, dln_b,  # gradients
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
    cols = tl.arange(0, BD)
    cmask = cols < D
    li = tl.arange(0, BL)
    lk = tl.arange(0, BK)
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    d_gamma = tl.zeros([BD], dtype=tl.float32)
    d_shift = tl.zeros([BD], dtype=tl.float32)
    o2_, m2 = w2_block(0, D, DH, BD, BHB)
    xbase = bh * (STEPS + 1) * n1
    for cr in range(NC):
        c = NC - 1 - cr
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
        b_beta, b_d, b_l, beta_last, d_last, l_last, b_m, b_s = muon_coefficients_of(
            beta, dc, lc, m_end, s_coef, cc, last, L, P, BL, BK
        )
        # 1. recompute: the key path, the momentum and its NS factors, the reads
        Z2 = key_z2(k, krow, kvalid, w1c, w2c, sc1, sc2, 0, 1.0, D, DI, DH, BK, BD, KB, NI, BHB, 1, ACT, DOT)
        dd, dout, r, xk, rk = key_delta(
            Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, 2.0, 0.0, 0.0, ln_eps, D, 0, LN, RES
        )
        Z1T = tl.zeros([BHB, BK], dtype=tl.float32)
        qw1T = tl.zeros([BHB, BL], dtype=tl.float32)
        qo1T = tl.zeros([BHB, BL], dtype=tl.float32)
        for i in range(NI):  # pass A
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            W1 = tl.load(w1c + sc1 + o1_, mask=m1, other=0.0)
            O1 = tl.load(o1c + sc1 + o1_, mask=m1, other=0.0)
            qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
            Z1T += dot(tl.trans(W1), key_cols_t(k, krow, kvalid, i, DI, KB), DOT)
            qw1T += dot(tl.trans(W1), qT, DOT)
            qo1T += dot(tl.trans(O1), qT, DOT)
        AT = act(Z1T, ACT)
        gZ1 = act_grad(Z1T, ACT)
        W2 = tl.load(w2c + sc2 + o2_, mask=m2, other=0.0)
        O2 = tl.load(o2c + sc2 + o2_, mask=m2, other=0.0)
        S2 = tl.load(s2c + sc2 + o2_, mask=m2, other=0.0)
        wdT = dot(W2, tl.trans(dd), DOT)  # (Δ W2ᵀ)ᵀ
        d1T = wdT * gZ1  # δ1ᵀ
        d1s = tl.trans(d1T * b_s[None, :])  # s ⊙ δ1
        S2n = b_m * S2 - dot(AT * b_s[None, :], dd, DOT)
        N2 = ns_tile(S2n, na, nb, nc, ns_eps, STEPS, BD, NSD)
        sq = tl.sum(tl.zeros([BHB], dtype=tl.float32), 0)
        for i in range(NI):  # pass B: ‖S1'‖²
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            S1n = b_m * tl.load(s1c + sc1 + o1_, mask=m1, other=0.0)
            S1n -= dot(key_cols_t(k, krow, kvalid, i, DI, KB), d1s, DOT)
            sq += tl.sum(tl.sum(S1n * S1n, 1), 0)
        # NS(S1') iterated on x_k = x_{k-1} M_{k-1} (x_0 = s S1'), every x_k kept in xs for the backward
        s1_scale = ns_scale(sq, ns_eps)
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            S1n = b_m * tl.load(s1c + sc1 + o1_, mask=m1, other=0.0)
            S1n -= dot(key_cols_t(k, krow, kvalid, i, DI, KB), d1s, DOT)
            tl.store(xs + xbase + o1_, s1_scale * S1n, mask=m1)
        qn1T = tl.zeros([BHB, BL], dtype=tl.float32)  # (Q NS(S1'))ᵀ
        for k_ in range(STEPS):
            tl.debug_barrier()  # x_k is read back
            xptr = xs + xbase + k_ * n1
            G1 = tl.zeros([BHB, BHB], dtype=tl.float32)
            for i in range(NI):
                o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
                x = tl.load(xptr + o1_, mask=m1, other=0.0)
                G1 += dot(tl.trans(x), x, NSD)
            M1 = ns_poly(G1, na, nb, nc, BHB, NSD)
            for i in range(NI):
                o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
                x = dot(tl.load(xptr + o1_, mask=m1, other=0.0), M1, NSD)
                tl.store(xptr + n1 + o1_, x, mask=m1)
                if k_ == STEPS - 1:
                    qn1T += dot(tl.trans(x), key_cols_t(q, qrow, qvalid, i, DI, KB), DOT)
        tl.debug_barrier()
        xn = xs + xbase + STEPS * n1  # NS(S1')
        z1T = b_beta[None, :] * qw1T + b_d[None, :] * qo1T + b_l[None, :] * qn1T
        a1T = act(z1T, ACT)
        aw2 = tl.trans(dot(tl.trans(W2), a1T, DOT))  # Â W2 [BL, BD]
        ao2 = tl.trans(dot(tl.trans(O2), a1T, DOT))
        an2 = tl.trans(dot(tl.trans(N2), a1T, DOT))
        # 2. the reads backward
        dz2 = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        if LN:
            z2 = b_beta[:, None] * aw2 + b_d[:, None] * ao2 + b_l[:, None] * an2
            dz2, dg, db = read_ln_backward(z2, dz2, gamma, cmask, D, ln_eps)
            d_gamma += dg
            d_shift += db
        dz2 = tl.where(mask, dz2, 0.0)
        g_beta = tl.sum(dz2 * aw2, 1)
        g_d = tl.sum(dz2 * ao2, 1)
        g_l = tl.sum(dz2 * an2, 1)
        gW2 = dot(a1T * b_beta[None, :], dz2, DOT)
        gO2 = dot(a1T * b_d[None, :], dz2, DOT)
        gN2 = dot(a1T * b_l[None, :], dz2, DOT)
        da1T = dot(W2, tl.trans(dz2 * b_beta[:, None]), DOT) + dot(O2, tl.trans(dz2 * b_d[:, None]), DOT)
        da1T += dot(N2, tl.trans(dz2 * b_l[:, None]), DOT)
        dz1T = da1T * act_grad(z1T, ACT)
        g_beta += tl.sum(dz1T * qw1T, 0)
        g_d += tl.sum(dz1T * qo1T, 0)
        g_l += tl.sum(dz1T * qn1T, 0)
        # 3. layer 2's state: W2' = β W2 + d O2 + l N2, O2' = r N2 + (1 − r) O2, N2 = NS(S2')
        dW2n = tl.load(dw2 + base2 + o2_, mask=m2, other=0.0)
        dO2n = tl.load(do2 + base2 + o2_, mask=m2, other=0.0)
        dS2n = tl.load(ds2 + base2 + o2_, mask=m2, other=0.0)
        g_betaL = inner(dW2n, W2)
        g_dL = inner(dW2n, O2)
        g_lL = inner(dW2n, N2)
        dN2 = l_last * dW2n + refresh * dO2n + gN2
        dS2t = dS2n + ns_tile_backward(S2n, dN2, na, nb, nc, ns_eps, STEPS, BD, NSD)
        g_m = inner(dS2t, S2)
        adS2 = dot(tl.trans(AT), dS2t, DOT)  # A dS2' [BK, BD]
        d_dd = -b_s[:, None] * adS2
        g_s = -tl.sum(adS2 * dd, 1)
        dAT = -dot(dS2t, tl.trans(dd * b_s[:, None]), DOT)
        # 4. layer 1's state; B1: dN1 into dxs, the update coefficients' shares, dq
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
            W1 = tl.load(w1c + sc1 + o1_, mask=m1, other=0.0)
            O1 = tl.load(o1c + sc1 + o1_, mask=m1, other=0.0)
            N1 = tl.load(xn + o1_, mask=m1, other=0.0)
            dW1n = tl.load(dw1 + base1 + o1_, mask=m1, other=0.0)
            dN1 = l_last * dW1n + refresh * tl.load(do1 + base1 + o1_, mask=m1, other=0.0)
            dN1 += dot(qT * b_l[None, :], tl.trans(dz1T), DOT)
            tl.store(dxs + bh * n1 + o1_, dN1, mask=m1)
            g_betaL += inner(dW1n, W1)
            g_dL += inner(dW1n, O1)
            g_lL += inner(dW1n, N1)
            dqT = dot(W1, dz1T * b_beta[None, :], DOT) + dot(O1, dz1T * b_d[None, :], DOT)
            dqT += dot(N1, dz1T * b_l[None, :], DOT)
            qoffs, qmask = col_block(qrow, qvalid, i * KB, DI, DI, KB)
            tl.store(dq + qoffs, tl.trans(dqT), mask=qmask)
        # NS backward on x: dx_k = dx_{k+1} M_k + x_k 2 sym(dG_k), dM_k = x_kᵀ dx_{k+1}, in place in dxs
        ip = sq * 0.0  # ⟨dx_0, x_0⟩, from the last step walked (k = 0)
        for kk in range(STEPS):
            tl.debug_barrier()  # dx is read back
            ip = sq * 0.0
            xptr = xs + xbase + (STEPS - 1 - kk) * n1
            G1 = tl.zeros([BHB, BHB], dtype=tl.float32)
            dM1 = tl.zeros([BHB, BHB], dtype=tl.float32)
            for i in range(NI):
                o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
                x = tl.load(xptr + o1_, mask=m1, other=0.0)
                G1 += dot(tl.trans(x), x, NSD)
                dM1 += dot(tl.trans(x), tl.load(dxs + bh * n1 + o1_, mask=m1, other=0.0), NSD)
            dG1 = nb * dM1 + nc * (dot(dM1, G1, NSD) + dot(G1, dM1, NSD))
            dG1 = dG1 + tl.trans(dG1)
            M1 = ns_poly(G1, na, nb, nc, BHB, NSD)
            tl.debug_barrier()
            for i in range(NI):
                o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
                x = tl.load(xptr + o1_, mask=m1, other=0.0)
                dx = dot(tl.load(dxs + bh * n1 + o1_, mask=m1, other=0.0), M1, NSD) + dot(x, dG1, NSD)
                ip += tl.sum(tl.sum(dx * x, 1), 0)
                tl.debug_barrier()
                tl.store(dxs + bh * n1 + o1_, dx, mask=m1)
        tl.debug_barrier()
        # B2: dS1' (with NS's share), the state's new cotangents, K dS1' and the update's share of dk
        kdS1 = tl.zeros([BK, BHB], dtype=tl.float32)
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
            S1 = tl.load(s1c + sc1 + o1_, mask=m1, other=0.0)
            S1n = b_m * S1 - dot(kT, d1s, DOT)
            dW1n = tl.load(dw1 + base1 + o1_, mask=m1, other=0.0)
            dO1n = tl.load(do1 + base1 + o1_, mask=m1, other=0.0)
            dS1n = tl.load(ds1 + base1 + o1_, mask=m1, other=0.0)
            dN1 = l_last * dW1n + refresh * dO1n + dot(qT * b_l[None, :], tl.trans(dz1T), DOT)
            # x_0 = s S1', s = (‖S1'‖² + eps²)^(−1/2): dS1' = s dx_0 − s² ⟨dx_0, x_0⟩ S1'
            dx0 = tl.load(dxs + bh * n1 + o1_, mask=m1, other=0.0)
            dS1t = dS1n + s1_scale * dx0 - (s1_scale * s1_scale * ip) * S1n
            g_m += inner(dS1t, S1)
            kdS1 += dot(tl.trans(kT), dS1t, DOT)
            kptr, kmask1 = chunk_key_rows(dk, cc, i * KB, P + L, DI, BK, KB)
            tl.store(kptr, -dot(d1s, tl.trans(dS1t), DOT), mask=kmask1)
            new_dW1 = beta_last * dW1n + dot(qT * b_beta[None, :], tl.trans(dz1T), DOT)
            new_dO1 = d_last * dW1n + (1.0 - refresh) * dO1n + dot(qT * b_d[None, :], tl.trans(dz1T), DOT)
            tl.debug_barrier()  # every thread has read block i of the cotangents before they are overwritten
            tl.store(dw1 + base1 + o1_, new_dW1, mask=m1)
            tl.store(do1 + base1 + o1_, new_dO1, mask=m1)
            tl.store(ds1 + base1 + o1_, b_m * dS1t, mask=m1)
        # 5. the key path backward
        d_d1T = tl.trans(-b_s[:, None] * kdS1)  # the cotangent of δ1ᵀ
        g_s -= tl.sum(kdS1 * tl.trans(d1T), 1)
        eT = d_d1T * gZ1  # of (Δ W2ᵀ)ᵀ
        d_dd += dot(tl.trans(eT), W2, DOT)
        dZ1T = d_d1T * wdT * act_grad2(Z1T, ACT)
        dZ2, dr, d_gamma, d_shift = delta_backward(
            d_dd, dd, dout, r, delta, xk, rk, gamma, d_gamma, d_shift, dv, offs, kmask, krow, kvalid, cmask,
            2.0, 0.0, 0.0, D, 0, LN,
        )  # fmt: skip
        dAT += dot(W2, tl.trans(dZ2), DOT)
        dZ1T += dAT * gZ1
        vptr, vmask = chunk_key_rows(dv, cc, 0, P + L, D, BK, BD)
        tl.store(vptr, -dr, mask=vmask)
        new_dW2 = beta_last * dW2n + gW2 + dot(eT, dd, DOT) + dot(AT, dZ2, DOT)
        if is_last:  # the anchor is the last chunk's start weights
            new_dW2 += tl.load(dw2a + base2 + o2_, mask=m2, other=0.0)
        tl.debug_barrier()
        tl.store(dw2 + base2 + o2_, new_dW2, mask=m2)
        tl.store(do2 + base2 + o2_, d_last * dW2n + (1.0 - refresh) * dO2n + gO2, mask=m2)
        tl.store(ds2 + base2 + o2_, b_m * dS2t, mask=m2)
        # pass C: Kᵀ dZ1 into dW1, dZ1 W1ᵀ into dk
        dZ1 = tl.trans(dZ1T)
        tl.debug_barrier()  # pass B2's writes are read back
        for i in range(NI):
            o1_, m1 = w1_block(i, 0, DI, DH, KB, BHB)
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            W1 = tl.load(w1c + sc1 + o1_, mask=m1, other=0.0)
            cur = tl.load(dw1 + base1 + o1_, mask=m1, other=0.0)
            cur += dot(kT, dZ1, DOT)
            if is_last:
                cur += tl.load(dw1a + base1 + o1_, mask=m1, other=0.0)
            kptr, kmask1 = chunk_key_rows(dk, cc, i * KB, P + L, DI, BK, KB)
            dki = tl.load(kptr, mask=kmask1, other=0.0) + dot(dZ1, tl.trans(W1), DOT)
            tl.debug_barrier()
            tl.store(dw1 + base1 + o1_, cur, mask=m1)
            tl.store(kptr, dki, mask=kmask1)
        lmask = li < L
        at = li == last
        tl.store(dbeta + cc * L + li, g_beta + tl.where(at, g_betaL, 0.0), mask=lmask)
        tl.store(ddc + cc * L + li, g_d + tl.where(at, g_dL, 0.0), mask=lmask)
        tl.store(dlc + cc * L + li, g_l + tl.where(at, g_lL, 0.0), mask=lmask)
        tl.store(dm + cc, g_m)
        tl.store(ds + cc * (P + L) + lk, g_s, mask=lk < P + L)
        tl.debug_barrier()  # the next chunk reads the updated cotangents
    if LN:
        tl.store(dln_w + bh * D + cols, tl.load(dln_w + bh * D + cols, mask=cmask) + d_gamma, mask=cmask)
        tl.store(dln_b + bh * D + cols, tl.load(dln_b + bh * D + cols, mask=cmask) + d_shift, mask=cmask)
