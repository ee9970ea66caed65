"""The wide-state kernels' block layout and the products every pass of them shares (:mod:`.wide_forward`,
:mod:`.wide_backward`, :mod:`.wide_split`, the Muon kernels): the offsets of a block (i, j) of a
``[Dk, Dh]`` matrix (W1, S1 and their cotangents: key rows in blocks of KB, hidden columns in blocks of
BHB) and of hidden block j of a ``[Dh, D]`` one (W2, S2), the key path's layer-1 products and Z2 summed
over the blocks, Q Kᵀ over the key blocks, and a chunk's rows."""

from __future__ import annotations

import triton
import triton.language as tl

from ..precision import dot
from .common import act, col_block, key_cols_t, load_f32, row_block, value_rows


@triton.jit
def w1_block(i, j, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr):
    """Offsets and mask of block (i, j) of a ``[DI, Dh]`` matrix (W1, S1 and their cotangents): key rows
    i·KB .. i·KB + KB, hidden columns j·BHB .. j·BHB + BHB (a ``[KB, BHB]`` tile)."""
    r = i * KB + tl.arange(0, KB)
    c = j * BHB + tl.arange(0, BHB)
    return r[:, None] * DH + c[None, :], (r < DI)[:, None] & (c < DH)[None, :]


@triton.jit
def w2_block(j, D: tl.constexpr, DH: tl.constexpr, BD: tl.constexpr, BHB: tl.constexpr):
    """Offsets and mask of hidden block j of a ``[Dh, D]`` matrix (W2, S2 and their cotangents: a
    ``[BHB, BD]`` tile)."""
    r = j * BHB + tl.arange(0, BHB)
    c = tl.arange(0, BD)
    return r[:, None] * D + c[None, :], (r < DH)[:, None] & (c < D)[None, :]


@triton.jit
def layer1_block(
    w1, s1, base, i, j, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr,
    HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Block (i, j) of layer 1's weights and momentum at ``base`` (W1 again without momentum, unread),
    with its offsets and mask."""
    o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
    W1 = load_f32(w1 + base + o1, m1)
    S1 = W1
    if HAS_MOM:
        S1 = load_f32(s1 + base + o1, m1)
    return o1, m1, W1, S1


@triton.jit
def token_layer1(W1, S1, kT, d1T, beta_t, f_t, g_t, DOT: tl.constexpr, HAS_MOM: tl.constexpr):
    """Block (i, j) of token t's layer-1 accumulator, the dual form's weights A1_t = β_t W1 [+ f_t S1] −
    K_iᵀ (G[t, :] ⊙ δ1_j) ``[KB, BHB]`` (the per-token retention maps read it: Moneta's ℓ_q map, Memora's
    softmax); ``kT`` the key block transposed, ``d1T`` δ1_jᵀ."""
    A1 = beta_t * W1 - dot(kT, tl.trans(d1T * g_t[None, :]), DOT)
    if HAS_MOM:
        A1 += f_t * S1
    return A1


@triton.jit
def token_layer2(W2, S2, AT, dd, beta_t, f_t, g_t, DOT: tl.constexpr, HAS_MOM: tl.constexpr):
    """Block j of token t's layer-2 accumulator A2_t = β_t W2 [+ f_t S2] − A_jᵀ (G[t, :] ⊙ Δ) ``[BHB, BD]``
    (``AT`` the key path's activations A_jᵀ)."""
    A2 = beta_t * W2 - dot(AT * g_t[None, :], dd, DOT)
    if HAS_MOM:
        A2 += f_t * S2
    return A2


@triton.jit
def token_layer1_shares(C1, kT, d1T, g_t, DOT: tl.constexpr):
    """:func:`token_layer1` backward from a cotangent C1 ``[KB, BHB]`` of A1_t: the shares of δ1_jᵀ
    ``[BHB, BK]`` (−G[t, s] (K_i C1)ᵀ), of the key block Kᵀ ``[KB, BK]`` (−C1 (δ1_j ⊙ G[t, :])ᵀ) and of
    G[t, :] ``[BK]`` (the state's, β_t's and f_t's are the caller's: β_t C1, ⟨C1, W1⟩, ...)."""
    kc1T = dot(tl.trans(C1), kT, DOT)  # (K_i C1)ᵀ
    return -g_t[None, :] * kc1T, -dot(C1, d1T * g_t[None, :], DOT), -tl.sum(kc1T * d1T, 0)


@triton.jit
def token_layer2_shares(C2, AT, ddT, g_t, DOT: tl.constexpr):
    """:func:`token_layer2` backward from a cotangent C2 ``[BHB, BD]`` of A2_t: the shares of Δᵀ ``[BD, BK]``
    (−G[t, s] (A_j C2)ᵀ), of A_jᵀ ``[BHB, BK]`` (−G[t, s] C2 Δᵀ) and of G[t, :] ``[BK]``."""
    ac2T = dot(tl.trans(C2), AT, DOT)  # (A_j C2)ᵀ
    return -g_t[None, :] * ac2T, -g_t[None, :] * dot(C2, ddT, DOT), -tl.sum(ac2T * ddT, 0)


@triton.jit
def layer1_t(
    w1, base1, j, x, rows, valid,
    DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, BHB: tl.constexpr, NI: tl.constexpr,
    BR: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """(X W1_j)ᵀ = Σ_i W1_ijᵀ X_iᵀ ``[BHB, BR]`` for the rows ``rows`` of x (q or k) at the state stored
    from ``base1`` (hidden-major: the hidden block is M, the key blocks the reduction)."""
    out = tl.zeros([BHB, BR], dtype=tl.float32)
    for i in range(NI):
        o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
        W1 = load_f32(w1 + base1 + o1, m1)
        out += dot(tl.trans(W1), key_cols_t(x, rows, valid, i, DI, KB), DOT)
    return out


@triton.jit
def key_z2(
    k, krow, kvalid, w1, w2, base1, base2, j0, ks1,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
    KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr, NB: tl.constexpr, ACT: tl.constexpr,
    DOT: tl.constexpr,
):  # fmt: skip
    """Z2 = Σ_j σ(K W1_j) W2_j ``[BK, BD]`` of the key rows ``krow`` at the state stored from ``base1``,
    ``base2``, summed over the NB hidden blocks from ``j0`` (all of them, or one program's share); W1
    times ``ks1`` (Moneta's per-token map: the chunk start's scale s(W1), else 1)."""
    Z2T = tl.zeros([BD, BK], dtype=tl.float32)
    for jj in range(NB):  # a constant trip count: the static report reads it from the TTGIR
        j = j0 + jj
        Z1T = ks1 * layer1_t(w1, base1, j, k, krow, kvalid, DI, DH, KB, BHB, NI, BK, DOT)
        o2, m2 = w2_block(j, D, DH, BD, BHB)
        W2 = load_f32(w2 + base2 + o2, m2)
        Z2T += dot(tl.trans(W2), act(Z1T, ACT), DOT)
    return tl.trans(Z2T)


@triton.jit
def query_keys(
    q, k, qrow, qvalid, krow, kvalid,
    DI: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    """Q Kᵀ ``[BL, BK]`` of the query rows ``qrow`` and the key rows ``krow``, summed over key blocks."""
    qk = tl.zeros([BL, BK], dtype=tl.float32)
    for i in range(NI):
        qk += dot(
            tl.trans(key_cols_t(q, qrow, qvalid, i, DI, KB)), key_cols_t(k, krow, kvalid, i, DI, KB), DOT
        )
    return qk


@triton.jit
def chunk_rows(
    k, v, bp, b, g, h, T, P0,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, L: tl.constexpr, P: tl.constexpr, BL: tl.constexpr,
    BK: tl.constexpr, BD: tl.constexpr, BIAS: tl.constexpr, RES: tl.constexpr,
):  # fmt: skip
    """Chunk g's rows: its tokens' offsets and mask in ``[B, T, H, D]`` tensors (y, dy), their row indices
    and validity (the queries' rows in q ``[B, T, H, DI]``); its key rows, the chunk's tokens after the P
    before them (the Omega window's reach; k and v lead with P0 carried rows): their offsets and mask in
    v, row indices and validity, the values, Huber thresholds and the residual's keys K[:, :D] (zeros
    without the residual)."""
    offs, mask, qvalid, qrow = row_block(b, g * L, h, T, H, D, L, BL, BD)
    koffs, kmask, kvalid, krow = row_block(b, P0 + g * L - P, h, P0 + T, H, D, P + L, BK, BD)
    b_v, delta = value_rows(v, bp, koffs, kmask, krow, kvalid, BK, BIAS)
    b_kr = tl.zeros([BK, BD], dtype=tl.float32)
    if RES:
        roffs, rmask = col_block(krow, kvalid, 0, DI, D, BD)
        b_kr = tl.load(k + roffs, mask=rmask, other=0.0).to(tl.float32)
    return offs, mask, qvalid, qrow, koffs, kmask, kvalid, krow, b_v, delta, b_kr
