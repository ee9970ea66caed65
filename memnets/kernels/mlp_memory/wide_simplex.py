"""Memora's softmax retention (Miras arXiv 2504.13173 Eq. 27; the lag token, §5.3 Eq. 30-32) in the
wide-state kernels: the forward, for states too large for the whole-state kernel of :mod:`.simplex`
(memora-340m/760m: head dim 64 / 96, hidden width 256 / 384), in the block layout of
:mod:`.wide_forward` (the hidden width in NB blocks of BHB, the state in global memory).

The state holds the logits A and every weight matrix is read as W = c·Softmax(A) over its input axis,
the same semantics as :mod:`.simplex` (the key path's gradients at the chunk start's weights, or after
the lag token at the weights after it; token t reads with its own accumulator A_t). In the blocks:

* layer 1's softmax runs over the key axis, inside each hidden column: block-local;
* layer 2's runs over the hidden axis, across the blocks. The key path's c·Softmax(A2) takes one pass
  over the blocks first for each column's maximum m and sum s (an online softmax: the running maximum
  rescales the running sum, as flash attention does); then each block is c·exp(A2_j − m) / s;
* token t's read y_t = σ(q_t W1_t) W2_t carries its own running maximum, sum and numerator per output
  column ``[BL, BD]`` through the blocks, so the reads need no pass of their own: y_t = c·num_t / s_t
  after the last block.

Per chunk (one program per (sequence, head), chunks in order):

0. the column statistics of layer 2's chunk-start logits (a pass over the blocks of A2);
1. the key path: Z2 = Σ_j σ(K K1_j) K2_j with K = c·Softmax(A), then Δ on whole rows;
   with the lag token: 1a. the statistics of token 0's layer-2 accumulator
   A2_0 = β_0 A2 [+ f_0 S2] − A_jᵀ (G[0, :] ⊙ Δ), 1b. the second key path at the weights after it,
   c·Softmax(A_0), for the chunk's other rows (its Δ' on whole rows). Row 0 of the chunk keeps the first
   key path's rows (the lag token's gradient at the chunk start), rows 1.. take the second's;
2. per block j: the key path's rows of the block again (layer 1's activations A_j and δ1_j), every
   token's accumulators A1_t, A2_t of the block, their softmaxes and the read's share (L products per
   block and layer, the rest elementwise on block-sized tiles), the anchor's block on the sequence's
   last chunk, and then the block's chunk-end update written in place;
3. y = c·num / s per token, the LayerNorm, y stored.

Each pass recomputes the key path's layer-1 rows of a block from its logits (one ``[BHB, L]`` product)
rather than keeping them in global scratch; with the lag token passes 1a, 1b and 2 also re-form token
0's accumulators. With ``STORE`` (the backward's recompute, :mod:`.wide_simplex_backward`) pass 2 writes
each block's chunk-start logits and momenta and skips the reads.

Not covered: what the wide-state kernels do not cover (packed sequences, keys wider than the values, the
Omega window), and Moneta's maps with it (other retention).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..optional import or_empty
from ..precision import dot
from .common import act, act_grad, key_cols_t, key_delta, ln_params, ln_rows
from .config import SEGMENT_INTS, LaunchConfig
from .simplex import SIMPLEX_NUM_WARPS, simplex
from .token_state import row_of
from .wide_blocks import chunk_rows, token_layer1, token_layer2, w1_block, w2_block
from .wide_forward import read_coefficients, update_coefficients, wide_meta, working_state


@triton.jit
def online_softmax(a, mask, w, m, s, n):
    """Softmax over axis 0 of a matrix in blocks, online: the running column maximum m, sum s = Σ exp(a − m)
    and numerator n = Σ w_row exp(a_row − m) ``[BD]`` of the blocks so far, updated with block ``a``
    (the entries outside ``mask`` left out; ``w`` a ``[rows]`` weight vector); a new maximum rescales
    the sums, as flash attention's."""
    x = tl.where(mask, a, float("-inf"))
    top = tl.maximum(m, tl.max(x, 0))
    safe = tl.where(top == float("-inf"), 0.0, top)  # an empty column so far: nothing to rescale
    rescale = tl.exp(m - safe)
    e = tl.where(mask, tl.exp(x - safe[None, :]), 0.0)
    return top, s * rescale + tl.sum(e, 0), n * rescale + tl.sum(w[:, None] * e, 0)


@triton.jit
def column_stats(a, mask, m, s, BHB: tl.constexpr):
    """:func:`online_softmax`'s maximum and sum alone (block ``a`` of ``BHB`` rows)."""
    top, total, _ = online_softmax(a, mask, tl.zeros([BHB], dtype=tl.float32), m, s, s)
    return top, total


@triton.jit
def soft_block(a, mask, m, s, scale):
    """Block ``a`` of scale·Softmax over axis 0 of a matrix in blocks, from its columns' statistics."""
    safe = tl.where(m == float("-inf"), 0.0, m)
    e = tl.where(mask, tl.exp(a - safe[None, :]), 0.0)
    return scale * e / tl.where(s > 0, s, 1.0)[None, :]


@triton.jit
def z2_share(K1, K2, kT, ACT: tl.constexpr, DOT: tl.constexpr):
    """Block j's share of the key path's Z2ᵀ ``[BD, BK]``: (σ(K K1_j) K2_j)ᵀ at the weights K1_j, K2_j."""
    return dot(tl.trans(K2), act(dot(tl.trans(K1), kT, DOT), ACT), DOT)


@triton.jit
def key_block_rows(W1, W2, kT, ddT, m2, s2, mk1, mk2, scale, ACT: tl.constexpr, DOT: tl.constexpr):
    """Block j's share of the key path at the weights c·Softmax of the logits ``W1``, ``W2`` (layer 2's
    column statistics ``m2``, ``s2``): K1_j, K2_j, Z1_jᵀ, A_jᵀ = σ(Z1_jᵀ) ``[BHB, BK]`` and δ1_jᵀ =
    (K2_j Δᵀ) ⊙ σ'(Z1_jᵀ) (zeros where ``ddT`` is)."""
    K1 = simplex(W1, mk1, scale)
    K2 = soft_block(W2, mk2, m2, s2, scale)
    Z1T = dot(tl.trans(K1), kT, DOT)
    d1T = dot(K2, ddT, DOT) * act_grad(Z1T, ACT)
    return K1, K2, act(Z1T, ACT), d1T


@triton.jit
def token_block(W1, W2, S1, S2, kT, AT, d1T, dd, beta_t, f_t, g_t, DOT: tl.constexpr, HAS_MOM: tl.constexpr):
    """Block j of token t's accumulators: A1_t = β_t W1 [+ f_t S1] − K_iᵀ (G[t, :] ⊙ δ1_j) ``[KB, BHB]``
    and A2_t = β_t W2 [+ f_t S2] − A_jᵀ (G[t, :] ⊙ Δ) ``[BHB, BD]``."""
    return (
        token_layer1(W1, S1, kT, d1T, beta_t, f_t, g_t, DOT, HAS_MOM),
        token_layer2(W2, S2, AT, dd, beta_t, f_t, g_t, DOT, HAS_MOM),
    )


@triton.jit
def load_block(w1, w2, s1, s2, base1, base2, j,
               D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr,
               BD: tl.constexpr, HAS_MOM: tl.constexpr):  # fmt: skip
    """Hidden block j of the state (W1 and S1 ``[KB, BHB]``, W2 and S2 ``[BHB, BD]``; the momenta are the
    weights again without momentum, unread), with its offsets and masks."""
    o1, mk1 = w1_block(0, j, DI, DH, KB, BHB)
    o2, mk2 = w2_block(j, D, DH, BD, BHB)
    W1 = tl.load(w1 + base1 + o1, mask=mk1, other=0.0)
    W2 = tl.load(w2 + base2 + o2, mask=mk2, other=0.0)
    S1 = W1
    S2 = W2
    if HAS_MOM:
        S1 = tl.load(s1 + base1 + o1, mask=mk1, other=0.0)
        S2 = tl.load(s2 + base2 + o2, mask=mk2, other=0.0)
    return o1, mk1, o2, mk2, W1, W2, S1, S2


@triton.jit
def start_stats(w2, base2, D: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BHB: tl.constexpr,
                NB: tl.constexpr):  # fmt: skip
    """Pass 0: the column statistics (maximum, sum) of layer 2's logits over the blocks."""
    m = tl.full([BD], float("-inf"), tl.float32)
    s = tl.zeros([BD], dtype=tl.float32)
    for j in range(NB):
        o2, mk2 = w2_block(j, D, DH, BD, BHB)
        m, s = column_stats(tl.load(w2 + base2 + o2, mask=mk2, other=0.0), mk2, m, s, BHB)
    return m, s


@triton.jit
def key_paths(
    k, kT, krow, kvalid, w1, w2, s1, s2, base1, base2, b_kr, b_v, delta, kmask, cmask, gamma, shift,
    p, eps, sharp, ln_eps, scale, beta0, f0, g0,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NB: tl.constexpr,
    BD: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr,
    LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr, LAG: tl.constexpr,
):  # fmt: skip
    """Passes 0 and 1 of a chunk from its start state at ``base1``, ``base2``: layer 2's column statistics,
    the key path (Z2, then Δ and what the bias and the LayerNorm's backward need); with ``LAG`` the same
    for the second key path at the weights after the lag token (token 0's accumulators β_0, f_0, G[0, :]),
    whose layer-2 statistics take pass 1a (without it, the first path's values again)."""
    top2, sum2 = start_stats(w2, base2, D, DH, BD, BHB, NB)
    Z2T = tl.zeros([BD, BK], dtype=tl.float32)
    for j in range(NB):
        _o1, mk1, _o2, mk2, W1, W2, _s1, _s2 = load_block(w1, w2, s1, s2, base1, base2, j, D, DI, DH, KB, BHB,
                                                       BD, False)  # fmt: skip
        Z2T += z2_share(simplex(W1, mk1, scale), soft_block(W2, mk2, top2, sum2, scale), kT, ACT, DOT)
    Z2 = tl.trans(Z2T)
    dd, dout, r, xk, rk = key_delta(
        Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
    )
    ddT = tl.trans(dd)
    ml, sl, Z2l, ddl, doutl, rl, xkl, rkl = top2, sum2, Z2, dd, dout, r, xk, rk
    if LAG:
        # pass 1a: the statistics of the lag token's layer-2 accumulator over the blocks
        ml = tl.full([BD], float("-inf"), tl.float32)
        sl = tl.zeros([BD], dtype=tl.float32)
        for j in range(NB):
            _o1, mk1, _o2, mk2, W1, W2, S1, S2 = load_block(w1, w2, s1, s2, base1, base2, j, D, DI, DH, KB,
                                                          BHB, BD, HAS_MOM)  # fmt: skip
            _k1, _k2, AT, d1T = key_block_rows(W1, W2, kT, ddT, top2, sum2, mk1, mk2, scale, ACT, DOT)
            _a1, A2 = token_block(W1, W2, S1, S2, kT, AT, d1T, dd, beta0, f0, g0, DOT, HAS_MOM)
            ml, sl = column_stats(A2, mk2, ml, sl, BHB)
        # pass 1b: the second key path, at the weights after the lag token
        Z2T = tl.zeros([BD, BK], dtype=tl.float32)
        for j in range(NB):
            _o1, mk1, _o2, mk2, W1, W2, S1, S2 = load_block(w1, w2, s1, s2, base1, base2, j, D, DI, DH, KB,
                                                          BHB, BD, HAS_MOM)  # fmt: skip
            _k1, _k2, AT, d1T = key_block_rows(W1, W2, kT, ddT, top2, sum2, mk1, mk2, scale, ACT, DOT)
            A1, A2 = token_block(W1, W2, S1, S2, kT, AT, d1T, dd, beta0, f0, g0, DOT, HAS_MOM)
            Z2T += z2_share(simplex(A1, mk1, scale), soft_block(A2, mk2, ml, sl, scale), kT, ACT, DOT)
        Z2l = tl.trans(Z2T)
        ddl, doutl, rl, xkl, rkl = key_delta(
            Z2l, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )
    return top2, sum2, Z2, dd, dout, r, xk, rk, ml, sl, Z2l, ddl, doutl, rl, xkl, rkl


@triton.jit
def block_rows(
    W1, W2, S1, S2, kT, dd, ddT, ddlT, top2, sum2, ml, sl, mk1, mk2, scale, beta0, f0, g0,
    ACT: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr, LAG: tl.constexpr,
):  # fmt: skip
    """Block j's key-path rows from its chunk-start logits and momenta: the first path's weights K1_j, K2_j,
    Z1_jᵀ and E_jᵀ = K2_j Δᵀ ``[BHB, BK]`` (δ1_j = E_j ⊙ σ'(Z1_j)); the second path's (with ``LAG``: at the
    weights after the lag token; else the first's again); and the rows the update and the reads take,
    A_jᵀ and δ1_jᵀ: column 0 (the lag token) from the first path, the others from the second."""
    K1 = simplex(W1, mk1, scale)
    K2 = soft_block(W2, mk2, top2, sum2, scale)
    Z1T = dot(tl.trans(K1), kT, DOT)
    ET = dot(K2, ddT, DOT)
    AT = act(Z1T, ACT)
    d1T = ET * act_grad(Z1T, ACT)
    L1, L2, Z1lT, ElT = K1, K2, Z1T, ET
    if LAG:
        A1, A2 = token_block(W1, W2, S1, S2, kT, AT, d1T, dd, beta0, f0, g0, DOT, HAS_MOM)
        L1 = simplex(A1, mk1, scale)
        L2 = soft_block(A2, mk2, ml, sl, scale)
        Z1lT = dot(tl.trans(L1), kT, DOT)
        ElT = dot(L2, ddlT, DOT)
        first = (tl.arange(0, AT.shape[1]) == 0)[None, :]
        AT = tl.where(first, AT, act(Z1lT, ACT))
        d1T = tl.where(first, d1T, ElT * act_grad(Z1lT, ACT))
    return K1, K2, Z1T, ET, L1, L2, Z1lT, ElT, AT, d1T


@triton.jit
def read_block(
    W1, W2, S1, S2, kT, AT, d1T, dd, b_beta, b_f, b_G, b_q, top, total, num, mk1, mk2, scale,
    L: tl.constexpr, BL: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Block j's share of every token's read: token t's accumulators of the block, layer 1's softmax
    (block-local) and σ(q_t W1_t) of the block's hidden units, and its layer-2 running column maximum,
    sum and numerator (``top``, ``total``, ``num`` ``[BL, BD]``) carried through the block."""
    li = tl.arange(0, BL)
    for t in range(L):
        at = li == t
        A1t, A2t = token_block(W1, W2, S1, S2, kT, AT, d1T, dd, row_of(b_beta, at), row_of(b_f, at),
                               row_of(b_G, at[:, None]), DOT, HAS_MOM)  # fmt: skip
        h_t = act(tl.sum(row_of(b_q, at[:, None])[:, None] * simplex(A1t, mk1, scale), 0), ACT)
        m_t, s_t, n_t = online_softmax(
            A2t, mk2, h_t, row_of(top, at[:, None]), row_of(total, at[:, None]), row_of(num, at[:, None])
        )
        top = tl.where(at[:, None], m_t[None, :], top)
        total = tl.where(at[:, None], s_t[None, :], total)
        num = tl.where(at[:, None], n_t[None, :], num)
    return top, total, num


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_simplex_forward_kernel(
    q, k, v, bp, ln_w, ln_b, beta, f, G, m_end, s_coef,  # inputs, coefficients
    y, w1, w2, s1, s2, w1_anchor, w2_anchor,  # w1 .. s2: the state (logits, momenta), updated in place
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # with STORE: every chunk's start state
    T, C0, NC, NCT, p, eps, sharp, ln_eps, scale,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NB: tl.constexpr,
    BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr,
    RES: tl.constexpr, HAS_MOM: tl.constexpr, LAG: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    base1 = bh * DI * DH  # this program's state in w1, s1 and in w2, s2 (updated in place)
    base2 = bh * DH * D
    cols = tl.arange(0, BD)
    cmask = cols < D
    li = tl.arange(0, BL)
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    for c in range(NC):
        g = C0 + c  # the chunk's index in the sequence
        cc = bh * NCT + g  # index of this (batch, head, chunk) in the coefficients
        offs, mask, _qvalid, _qrow, _koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, bp, b, g, h, T, 0, H, D, DI, L, 0, BL, BK, BD, BIAS, RES
        )
        kT = key_cols_t(k, krow, kvalid, 0, DI, KB)
        last = tl.minimum(T - g * L, L) - 1  # the chunk's last token (the tail chunk is short)
        b_beta, b_f, b_G = read_coefficients(beta, f, G, cc, L, 0, BL, BK, HAS_MOM)
        beta0 = row_of(b_beta, li == 0)
        f0 = row_of(b_f, li == 0)
        g0 = row_of(b_G, (li == 0)[:, None])
        top2, sum2, _z2, dd, _o, _r, _x, _rk, ml, sl, _z2l, ddl, _ol, _rl, _xl, _rkl = key_paths(
            k, kT, krow, kvalid, w1, w2, s1, s2, base1, base2, b_kr, b_v, delta, kmask, cmask, gamma, shift,
            p, eps, sharp, ln_eps, scale, beta0, f0, g0,
            D, DI, DH, KB, BHB, NB, BD, BK, ACT, DOT, BIAS, LN, RES, HAS_MOM, LAG,
        )  # fmt: skip
        ddT = tl.trans(dd)
        ddlT = tl.trans(ddl)
        # the rows the update and the reads take: row 0 from the first key path, the rest from the second
        dd_mix = tl.where((tl.arange(0, BK) == 0)[:, None], dd, ddl)
        g_last, beta_last, f_last, b_s, b_m = update_coefficients(beta, f, G, m_end, s_coef, cc, last, L, 0, BK,
                                                                  HAS_MOM)  # fmt: skip
        b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
        top = tl.full([BL, BD], float("-inf"), tl.float32)  # every token's running column maximum,
        total = tl.zeros([BL, BD], dtype=tl.float32)  # sum and numerator of its layer-2 read
        num = tl.zeros([BL, BD], dtype=tl.float32)
        # pass 2: per block, the reads' shares and the chunk-end update
        for j in range(NB):
            o1, mk1, o2, mk2, W1, W2, S1, S2 = load_block(w1, w2, s1, s2, base1, base2, j, D, DI, DH, KB, BHB, BD,
                                                          HAS_MOM)  # fmt: skip
            K1, K2, _z1, _e, L1, L2, _z1l, _el, AT, d1T = block_rows(
                W1, W2, S1, S2, kT, dd, ddT, ddlT, top2, sum2, ml, sl, mk1, mk2, scale, beta0, f0, g0,
                ACT, DOT, HAS_MOM, LAG,
            )  # fmt: skip
            if g == NCT - 1:  # the anchor: the weights after the lag token, or the chunk start's where
                ends_on_lag = LAG & (last == 0)  # the sequence ends on a lag token (and without it)
                tl.store(w1_anchor + base1 + o1, tl.where(ends_on_lag | (not LAG), K1, L1), mask=mk1)
                tl.store(w2_anchor + base2 + o2, tl.where(ends_on_lag | (not LAG), K2, L2), mask=mk2)
            if STORE:
                sc1 = (bh * NC + c) * DI * DH
                sc2 = (bh * NC + c) * DH * D
                tl.store(w1_chunks + sc1 + o1, W1, mask=mk1)
                tl.store(w2_chunks + sc2 + o2, W2, mask=mk2)
                if HAS_MOM:
                    tl.store(s1_chunks + sc1 + o1, S1, mask=mk1)
                    tl.store(s2_chunks + sc2 + o2, S2, mask=mk2)
            else:
                top, total, num = read_block(
                    W1, W2, S1, S2, kT, AT, d1T, dd_mix, b_beta, b_f, b_G, b_q, top, total, num, mk1, mk2, scale,
                    L, BL, ACT, DOT, HAS_MOM,
                )  # fmt: skip
            W2_new = beta_last * W2 - dot(AT * g_last[None, :], dd_mix, DOT)
            W1_new = beta_last * W1 - dot(kT, tl.trans(d1T * g_last[None, :]), DOT)
            if HAS_MOM:
                W2_new += f_last * S2
                W1_new += f_last * S1
                S2_new = b_m * S2 - dot(AT * b_s[None, :], dd_mix, DOT)
                S1_new = b_m * S1 - dot(kT, tl.trans(d1T * b_s[None, :]), DOT)
            tl.debug_barrier()  # every thread has read block j before it is overwritten
            tl.store(w1 + base1 + o1, W1_new, mask=mk1)
            tl.store(w2 + base2 + o2, W2_new, mask=mk2)
            if HAS_MOM:
                tl.store(s1 + base1 + o1, S1_new, mask=mk1)
                tl.store(s2 + base2 + o2, S2_new, mask=mk2)
        tl.debug_barrier()  # the next chunk's passes read the updated blocks
        if not STORE:
            b_y = scale * num / tl.where(total > 0, total, 1.0)
            if LN:
                xq, _ = ln_rows(b_y, cmask, D, ln_eps)
                b_y = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=mask)


def launch_wide_simplex_forward(
    q, k, v, bp, ln_w, ln_b, coef, packing, state, config: LaunchConfig, c0, nc, anchor, y, store
):
    """:func:`~.wide_forward.launch_wide_forward` for Memora's softmax retention (same arguments; with
    ``store`` the chunks' start states come as four tensors, the logits and momenta)."""
    if packing != (None, None):
        raise ValueError("mlp_memory_wide_fwd: the wide-state kernels take no packed sequences (cu_seqlens)")
    B, T, H = q.shape[:3]
    w1, w2 = state[:2]
    has_mom = state[2] is not None
    final = working_state(state)
    chunks = tuple(w1.new_empty(B, H, nc, *t.shape[2:]) if store and t is not None else w1.new_empty(0)
                   for t in state)  # fmt: skip
    scalars, constants = simplex_wide_meta(q, w1, w2, ln_w, config)
    _wide_simplex_forward_kernel[(B * H,)](
        q, k, v, *or_empty(w1.new_empty(0), bp, ln_w, ln_b), *coef, y, *final, *anchor, *chunks,
        T, c0, nc, coef[0].shape[2], *scalars, config.simplex_scale, **constants,
        HAS_MOM=has_mom, LAG=config.lag, STORE=store,
    )  # fmt: skip
    return final if has_mom else (*final[:2], None, None), chunks


def simplex_wide_meta(q, w1, w2, ln_w, config: LaunchConfig) -> tuple[tuple, dict]:
    """:func:`~.wide_forward.wide_meta` for these kernels: keys as wide as the values (one key block), no
    window, the whole-state softmax kernels' warps."""
    scalars, constants = wide_meta(q, w1, w2, ln_w, config)
    if constants["NI"] != 1 or constants["P"]:
        raise ValueError("mlp_memory_wide: Memora's softmax takes keys as wide as the values and no window")
    for name in ("NI", "P"):
        del constants[name]
    return scalars, constants | {"num_warps": SIMPLEX_NUM_WARPS}
