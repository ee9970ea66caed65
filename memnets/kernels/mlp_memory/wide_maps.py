"""Moneta's ℓ_q maps (Miras arXiv 2504.13173 Eq. 24, :mod:`.end_map`) in the wide-state kernels, whose
state lives in global memory in blocks: every sum over a whole weight matrix (its power sum P = Σ |W|^q,
or ⟨C, W⟩ for the map's VJP) is a pass over the blocks before the pass that uses it.

* At chunk ends (``END_MAP``): :func:`end_map_state` maps the state in place after a complete chunk;
  :func:`end_map_cotangent` takes the chunk-end cotangents back through the map.
* Per token (``TOKEN_MAP``): :func:`power_sums` gives the chunk start's scales (the key path's),
  :func:`token_powers` every token's accumulators' power sums (the reads' scales), and the backward
  takes the scales' cotangents back through every token's accumulators block by block
  (:func:`token_layer1_backward`, :func:`token_layer2_backward`).

The passes and their order in the kernels are in :mod:`.wide_forward`'s docstring."""

from __future__ import annotations

import triton
import triton.language as tl

from ..dual_form import inner
from ..precision import dot
from .common import act, act_grad, key_cols_t, load_f32
from .end_map import lq_grad_coef, lq_grad_dir, lq_power, lq_scale_of
from .token_state import row_of
from .wide_blocks import (
    layer1_block,
    layer1_t,
    token_layer1,
    token_layer1_shares,
    token_layer2,
    token_layer2_shares,
    w1_block,
    w2_block,
)


@triton.jit
def power_sums(
    w1, w2, base1, base2, end_q,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr,
    BHB: tl.constexpr, NB: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    """P = Σ |W|^q of W1 and of W2 (blocks from ``base1``, ``base2``), one pass over the blocks."""
    p1 = tl.sum(tl.zeros([BD], dtype=tl.float32), 0)
    p2 = p1
    for j in range(NB):
        for i in range(NI):
            o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
            p1 += lq_power(tl.load(w1 + base1 + o1, mask=m1, other=0.0), end_q)
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        p2 += lq_power(tl.load(w2 + base2 + o2, mask=m2, other=0.0), end_q)
    return p1, p2


@triton.jit
def token_powers(
    k, krow, kvalid, w1, w2, s1, s2, base1, base2, dd, ddT, b_beta, b_f, b_G, ks1, ks2, end_q,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr,
    BHB: tl.constexpr, NB: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Moneta's per-token map: the power sums P1_t = Σ |A1_t|^q, P2_t = Σ |A2_t|^q ``[BL]`` of every
    token's accumulators, A1_t = β_t W1 [+ f_t S1] − Kᵀ (G[t, :] ⊙ δ1) and A2_t = β_t W2 [+ f_t S2]
    − Aᵀ (G[t, :] ⊙ Δ) (the dual form's weights, formed block by block: L products per block and
    layer), with the key path's rows (A, δ1) at the chunk start's mapped weights (scales ``ks1``,
    ``ks2``). Each block of the state is read once; the tokens loop inside."""
    li = tl.arange(0, BL)
    p1 = tl.zeros([BL], dtype=tl.float32)
    p2 = tl.zeros([BL], dtype=tl.float32)
    for j in range(NB):
        Z1T = ks1 * layer1_t(w1, base1, j, k, krow, kvalid, DI, DH, KB, BHB, NI, BK, DOT)
        AT = act(Z1T, ACT)
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        W2 = tl.load(w2 + base2 + o2, mask=m2, other=0.0)
        S2 = W2
        if HAS_MOM:
            S2 = tl.load(s2 + base2 + o2, mask=m2, other=0.0)
        d1T = ks2 * dot(W2, ddT, DOT) * act_grad(Z1T, ACT)  # δ1_jᵀ
        for t in range(L):
            at = li == t
            A2 = token_layer2(W2, S2, AT, dd, row_of(b_beta, at), row_of(b_f, at), row_of(b_G, at[:, None]), DOT,
                              HAS_MOM)  # fmt: skip
            p2 = tl.where(at, p2 + lq_power(A2, end_q), p2)
        for i in range(NI):
            _, _, W1, S1 = layer1_block(w1, s1, base1, i, j, DI, DH, KB, BHB, HAS_MOM)
            kT = key_cols_t(k, krow, kvalid, i, DI, KB)
            for t in range(L):
                at = li == t
                A1 = token_layer1(W1, S1, kT, d1T, row_of(b_beta, at), row_of(b_f, at), row_of(b_G, at[:, None]),
                                  DOT, HAS_MOM)  # fmt: skip
                p1 = tl.where(at, p1 + lq_power(A1, end_q), p1)
    return p1, p2


@triton.jit
def end_map_state(
    w1, w2, base1, base2, powers, pc, end_q, end_floor,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr,
    BHB: tl.constexpr, NB: tl.constexpr, BD: tl.constexpr, MAP: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    """Moneta's chunk-end map (:mod:`.end_map`) of the state's weights: W1 and W2 (blocks from ``base1``,
    ``base2``) become s(W)·W in place, one pass over the blocks for each power sum P = Σ|W|^q and one
    to rescale them; with ``STORE`` the two sums go to ``powers[pc]``, ``powers[pc + 1]`` (the backward
    takes the map's VJP at W = s(W)·W / s, the next chunk's start state over its scale)."""
    p1, p2 = power_sums(w1, w2, base1, base2, end_q, D, DI, DH, KB, NI, BHB, NB, BD)
    s1 = lq_scale_of(p1, end_q, end_floor, MAP)
    s2 = lq_scale_of(p2, end_q, end_floor, MAP)
    for j in range(NB):  # each thread rescales the elements it loads: no barrier between
        for i in range(NI):
            o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
            tl.store(w1 + base1 + o1, s1 * tl.load(w1 + base1 + o1, mask=m1, other=0.0), mask=m1)
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        tl.store(w2 + base2 + o2, s2 * tl.load(w2 + base2 + o2, mask=m2, other=0.0), mask=m2)
    if STORE:
        tl.store(powers + pc, p1)
        tl.store(powers + pc + 1, p2)


@triton.jit
def _mapped_block(chunks, nb, c, NC, end, base, offs, mask):
    """A block of the next chunk's start state: from the segment's chunk states (``nb``: that chunk's)
    while chunk c is not the segment's last, else from ``end``, the state after the segment."""
    nxt = c + 1 + tl.zeros_like(offs)  # a tensor comparison: a bool mask in the interpreter too
    inside = load_f32(chunks + nb + offs, mask & (nxt < NC))
    return inside + tl.load(end + base + offs, mask=mask & (nxt >= NC), other=0.0)


@triton.jit
def end_map_cotangent(
    dw1, dw2, base1, base2, w1_chunks, w2_chunks, nb1, nb2, c, NC, w1_end, w2_end, powers, pc, end_q, end_floor,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr,
    BHB: tl.constexpr, NB: tl.constexpr, BD: tl.constexpr, MAP: tl.constexpr,
):  # fmt: skip
    """The chunk-end cotangents C of Moneta's mapped weights s(W)·W (dW1, dW2 from ``base1``, ``base2``,
    rewritten in place) back through the map (:mod:`.end_map`): s C + coef · W |W|^(q−2) with coef from
    ⟨C, W⟩ (a pass over the blocks before the one that rewrites them), at the weights before the map,
    W = s(W)·W / s: the next chunk's start state (:func:`_mapped_block`) over the scale of the power
    sums ``powers[pc]``, ``powers[pc + 1]`` that the STORE recompute kept."""
    p1 = tl.load(powers + pc)
    p2 = tl.load(powers + pc + 1)
    s1 = lq_scale_of(p1, end_q, end_floor, MAP)
    s2 = lq_scale_of(p2, end_q, end_floor, MAP)
    ip1 = tl.sum(tl.zeros([BD], dtype=tl.float32), 0)
    ip2 = ip1
    for j in range(NB):
        for i in range(NI):
            o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
            W1 = _mapped_block(w1_chunks, nb1, c, NC, w1_end, base1, o1, m1) / s1
            ip1 += inner(tl.load(dw1 + base1 + o1, mask=m1, other=0.0), W1)
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        W2 = _mapped_block(w2_chunks, nb2, c, NC, w2_end, base2, o2, m2) / s2
        ip2 += inner(tl.load(dw2 + base2 + o2, mask=m2, other=0.0), W2)
    k1 = lq_grad_coef(p1, ip1, end_q, end_floor, MAP)
    k2 = lq_grad_coef(p2, ip2, end_q, end_floor, MAP)
    for j in range(NB):  # each thread rewrites the elements it loads: no barrier between
        for i in range(NI):
            o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
            W1 = _mapped_block(w1_chunks, nb1, c, NC, w1_end, base1, o1, m1) / s1
            C1 = tl.load(dw1 + base1 + o1, mask=m1, other=0.0)
            tl.store(dw1 + base1 + o1, s1 * C1 + k1 * lq_grad_dir(W1, end_q), mask=m1)
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        W2 = _mapped_block(w2_chunks, nb2, c, NC, w2_end, base2, o2, m2) / s2
        C2 = tl.load(dw2 + base2 + o2, mask=m2, other=0.0)
        tl.store(dw2 + base2 + o2, s2 * C2 + k2 * lq_grad_dir(W2, end_q), mask=m2)


@triton.jit
def token_layer1_backward(
    W1, S1, kT, d1T, coef1, b_beta, b_f, b_G, end_q,
    L: tl.constexpr, BL: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, BK: tl.constexpr,
    DOT: tl.constexpr, HAS_MOM: tl.constexpr, STATE: tl.constexpr,
):  # fmt: skip
    """Moneta's per-token map, layer 1, block (i, j): every token's A1_t = β_t W1 [+ f_t S1] − K_iᵀ (G[t, :] ⊙
    δ1_j) and the cotangent that its scale s1_t = s(A1_t) gives it, C1_t = ``coef1[t]`` · A1_t |A1_t|^(q−2)
    (:mod:`.end_map`), taken back through A1_t. Without ``STATE`` (pass 3): its shares of δ1_j's cotangent
    ``[BHB, BK]`` (−G[t, s] (K C1_t)ᵀ), of G ``[BL, BK]`` and of β, f ``[BL]``; with ``STATE`` (pass 5): of
    W1, S1 ``[KB, BHB]`` (β_t C1_t, f_t C1_t) and of the key block ``[KB, BK]`` (−C1_t δ1_jᵀ ⊙ G[t, :])."""
    li = tl.arange(0, BL)
    d_d1T = tl.zeros([BHB, BK], dtype=tl.float32)
    dG = tl.zeros([BL, BK], dtype=tl.float32)
    dbeta = tl.zeros([BL], dtype=tl.float32)
    df = tl.zeros([BL], dtype=tl.float32)
    gW1 = tl.zeros([KB, BHB], dtype=tl.float32)
    gS1 = tl.zeros([KB, BHB], dtype=tl.float32)
    dkT = tl.zeros([KB, BK], dtype=tl.float32)
    for t in range(L):
        at = li == t
        beta_t = row_of(b_beta, at)
        f_t = row_of(b_f, at)
        g_t = row_of(b_G, at[:, None])
        A1 = token_layer1(W1, S1, kT, d1T, beta_t, f_t, g_t, DOT, HAS_MOM)
        C1 = row_of(coef1, at) * lq_grad_dir(A1, end_q)
        # each pass uses its own shares (the compiler drops the other's product)
        d1_share, k_share, g_share = token_layer1_shares(C1, kT, d1T, g_t, DOT)
        if STATE:
            gW1 += beta_t * C1
            gS1 += f_t * C1
            dkT += k_share
        else:
            d_d1T += d1_share
            dG = tl.where(at[:, None], dG + g_share[None, :], dG)
            dbeta = tl.where(at, dbeta + inner(C1, W1), dbeta)
            if HAS_MOM:
                df = tl.where(at, df + inner(C1, S1), df)
    return d_d1T, dG, dbeta, df, gW1, gS1, dkT


@triton.jit
def token_layer2_backward(
    W2, S2, AT, dd, ddT, coef2, b_beta, b_f, b_G, end_q,
    L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, BHB: tl.constexpr, BK: tl.constexpr,
    DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Moneta's per-token map, layer 2, block j: every token's A2_t = β_t W2 [+ f_t S2] − A_jᵀ (G[t, :] ⊙
    Δ) and C2_t = ``coef2[t]`` · A2_t |A2_t|^(q−2) taken back through A2_t: its shares of W2, S2
    ``[BHB, BD]``, of Δ's cotangent ``[BD, BK]``, of A_j's ``[BHB, BK]``, of G ``[BL, BK]`` and of β,
    f ``[BL]``."""
    li = tl.arange(0, BL)
    gW2 = tl.zeros([BHB, BD], dtype=tl.float32)
    gS2 = tl.zeros([BHB, BD], dtype=tl.float32)
    d_ddT = tl.zeros([BD, BK], dtype=tl.float32)
    dAT = tl.zeros([BHB, BK], dtype=tl.float32)
    dG = tl.zeros([BL, BK], dtype=tl.float32)
    dbeta = tl.zeros([BL], dtype=tl.float32)
    df = tl.zeros([BL], dtype=tl.float32)
    for t in range(L):
        at = li == t
        beta_t = row_of(b_beta, at)
        f_t = row_of(b_f, at)
        g_t = row_of(b_G, at[:, None])
        A2 = token_layer2(W2, S2, AT, dd, beta_t, f_t, g_t, DOT, HAS_MOM)
        C2 = row_of(coef2, at) * lq_grad_dir(A2, end_q)
        gW2 += beta_t * C2
        gS2 += f_t * C2
        dd_share, a_share, g_share = token_layer2_shares(C2, AT, ddT, g_t, DOT)
        d_ddT += dd_share
        dAT += a_share
        dG = tl.where(at[:, None], dG + g_share[None, :], dG)
        dbeta = tl.where(at, dbeta + inner(C2, W2), dbeta)
        if HAS_MOM:
            df = tl.where(at, df + inner(C2, S2), df)
    return gW2, gS2, d_ddT, dAT, dG, dbeta, df
