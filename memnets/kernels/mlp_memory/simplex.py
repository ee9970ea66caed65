"""Memora's softmax retention (Miras arXiv 2504.13173 §5.3, Eq. 27) in the whole-state kernels: the
forward kernel and the pieces its backward (:mod:`.simplex_backward`) shares.

The state carries the logits A (Eq. 27 is linear in them: :class:`memnets.memory.miras.SimplexSoftmax`)
and every weight matrix is read through W = c·Softmax(A) over its input axis (each output unit's
incoming weights on the c-scaled simplex; axis 0 of the row-form ``[d_in, d_out]`` tiles):

* the key path takes its gradients at the chunk start's W = c·Softmax(A_{t'});
* token t reads y_t = M(q_t; c·Softmax(A_t)) with its own accumulator A_t
  (:mod:`.token_state`): the softmax is not linear, so the dual form's shortcut does not apply and
  each token's two weight matrices are formed on chip, one token after another. (The paper's parallel
  training, §5.3 "Parallelizable Training", keeps the memory linear inside each chunk after its lag
  token, which changes what the chunk's tokens read; that is not the per-token rule of
  :mod:`memnets.memory.miras`, so it is not followed here);
* the lag token (``LAG``, §5.3 Eq. 30-32): the first token of every chunk takes its gradient at
  W_{t'} and the rest of the chunk at the weights after it, c·Softmax(A_{t'+1}) — one more key path
  per chunk, whose row 0 is the lag token's.

Each token's read costs two ``[D, Dh]`` accumulators (2·L·D·Dh multiply-adds each on tensor cores),
their softmaxes and two matrix-vector products (CUDA cores): per tile, L times the work of one
chunk-end update, in the forward and twice in the backward.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ..optional import or_empty
from .common import (
    act,
    key_base,
    key_path,
    ln_params,
    ln_rows,
    load_matrices,
    mat_block,
    sequence_bounds,
    store_matrices,
    tile_end_state,
    tile_rows,
)
from .config import SEGMENT_INTS, LaunchConfig, state_buffers, whole_state_meta
from .token_state import row_of, token_accumulators

# warps per program: the token loop's work is elementwise on state-sized tiles (each token's two
# accumulators, their softmaxes and cotangents), so more threads hold fewer of their registers: the
# sm_90 compiles spill less at 8 than at 4, forward and backward (benchmarks/RESULTS.md §39)
SIMPLEX_NUM_WARPS = 8


@triton.jit
def simplex(A, mask, scale):
    """scale·Softmax over axis 0 of a tile (each column one simplex), the padding outside ``mask`` left
    out and 0."""
    x = tl.where(mask, A, float("-inf"))
    top = tl.max(x, 0)
    e = tl.where(mask, tl.exp(x - tl.where(top == float("-inf"), 0.0, top)[None, :]), 0.0)
    total = tl.sum(e, 0)
    return scale * e / tl.where(total > 0, total, 1.0)[None, :]


@triton.jit
def simplex_backward(W, dW, scale):
    """The cotangent of the logits A from the cotangent ``dW`` of W = scale·Softmax(A) (axis 0):
    W ⊙ (dW − Σ₀ (W ⊙ dW) / scale)."""
    return W * (dW - (tl.sum(W * dW, 0) / scale)[None, :])


@triton.jit
def coefficient_rows(beta, f, G, cc, li, lmask, L: tl.constexpr, HAS_MOM: tl.constexpr):
    """Tile ``cc``'s β, f (β without momentum: unread) ``[BL]`` and G ``[BL, BL]``."""
    b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
    b_G = tl.load(
        G + cc * L * L + li[:, None] * L + li[None, :], mask=lmask[:, None] & lmask[None, :], other=0.0
    )
    b_f = b_beta
    if HAS_MOM:
        b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
    return b_beta, b_f, b_G


@triton.jit
def simplex_reads(
    li, b_q, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, m1, m2, scale,
    L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    HAS_MOM: tl.constexpr,
):  # fmt: skip
    """Every token's read of a tile before the LayerNorm: y_t = σ(q_t W1_t) W2_t with
    W_t = scale·Softmax(A_t) of its own accumulators ``[BL, BD]``."""
    b_y = tl.zeros([BL, BD], dtype=tl.float32)
    for t in range(L):
        at = li == t
        A1t, A2t, _b, _f, _g = token_accumulators(
            t, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT, HAS_MOM
        )
        z = tl.sum(row_of(b_q, at[:, None])[:, None] * simplex(A1t, m1, scale), 0)
        y_t = tl.sum(act(z, ACT)[:, None] * simplex(A2t, m2, scale), 0)
        b_y = tl.where(at[:, None], y_t[None, :], b_y)
    return b_y


@triton.jit
def lag_weights(li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, m1, m2, scale, DOT: tl.constexpr,
                HAS_MOM: tl.constexpr):  # fmt: skip
    """The weights after the lag token (token 0 of the chunk's first tile, its key path rows at the chunk
    start's weights), scale·Softmax of its accumulators: (K1', K2', β_0, f_0, G[0, :])."""
    Al1, Al2, beta0, f0, g0 = token_accumulators(
        0, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT, HAS_MOM
    )
    return simplex(Al1, m1, scale), simplex(Al2, m2, scale), beta0, f0, g0


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _simplex_forward_kernel(
    q, k, v, bp, ln_w, ln_b, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_init, w2_init, s1_init, s2_init,
    y, w1_final, w2_final, s1_final, s2_final, w1_anchor, w2_anchor,
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # with STORE: every tile's start state
    cu, toff, T, C0, NC, NCT, p, eps, sharp, ln_eps, scale,
    H: tl.constexpr, D: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    BH: tl.constexpr, KE: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr,
    LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr, VARLEN: tl.constexpr, STORE: tl.constexpr,
    LAG: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b, bos, Tn, t_first, n_tiles, crow = sequence_bounds(i_bh, cu, toff, T, NCT, H, VARLEN)
    kb = key_base(i_bh, bos, 0, H, VARLEN)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n = D * DH
    o1, m1 = mat_block(D, DH, BD, BH)  # A1 [D, Dh]
    o2, m2 = mat_block(DH, D, BH, BD)  # A2 [Dh, D]
    W1, W2 = load_matrices(w1_init, w2_init, bh * n, o1, m1, o2, m2, BD, BH, True)  # the logits
    S1, S2 = load_matrices(s1_init, s2_init, bh * n, o1, m1, o2, m2, BD, BH, HAS_MOM)
    li = tl.arange(0, BL)
    lmask = li < L
    cmask = tl.arange(0, BD) < D
    gamma, shift = ln_params(ln_w, ln_b, h, tl.arange(0, BD), cmask, D, BD, LN)
    K1 = W1  # the key path's weights (the chunk start's, or after its lag token)
    K2 = W2
    for c in range(tl.minimum(NC, n_tiles - C0)):
        g = C0 + c
        cc = crow * NCT + t_first + g
        if STORE:
            sc = bh * NC + c
            store_matrices(w1_chunks, w2_chunks, sc * n, W1, W2, o1, m1, o2, m2, True)
            store_matrices(s1_chunks, s2_chunks, sc * n, S1, S2, o1, m1, o2, m2, HAS_MOM)
        offs, mask, _koffs, kmask, _kvalid, _krow, b_k, b_v, delta = tile_rows(
            k, v, bp, b, bos, kb, g, h, Tn, 0, H, D, L, 0, BL, BL, BD, BIAS
        )
        b_beta, b_f, b_G = coefficient_rows(beta, f, G, cc, li, lmask, L, HAS_MOM)
        if g % KE == 0:
            K1 = simplex(W1, m1, scale)
            K2 = simplex(W2, m2, scale)
        _z1, A, dd, _dout, _r, _xk, _rk, _e, _sg, d1 = key_path(
            b_k, b_v, delta, K1, K2, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps,
            D, ACT, DOT, BIAS, LN, RES,
        )  # fmt: skip
        last = tl.minimum(Tn - g * L, L) - 1
        anchor1 = K1  # the state's anchor: the chunk start's weights while only the lag token is in
        anchor2 = K2
        if LAG:  # noqa: SIM102 (a compile-time branch)
            if g % KE == 0:  # row 0 is the lag token; the rest of the chunk after it
                K1, K2, _b0, _f0, _g0 = lag_weights(
                    li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, m1, m2, scale, DOT, HAS_MOM
                )
                _z1, A1, dd1, _dout, _r, _xk, _rk, _e, _sg, d11 = key_path(
                    b_k, b_v, delta, K1, K2, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps,
                    D, ACT, DOT, BIAS, LN, RES,
                )  # fmt: skip
                rest = (li > 0)[:, None]
                A = tl.where(rest, A1, A)
                dd = tl.where(rest, dd1, dd)
                d1 = tl.where(rest, d11, d1)
        if g == n_tiles - 1:
            if LAG:
                at_start = (g % KE == 0) & (last == 0)
                anchor1 = tl.where(at_start, anchor1, K1)
                anchor2 = tl.where(at_start, anchor2, K2)
            else:
                anchor1 = K1
                anchor2 = K2
            store_matrices(w1_anchor, w2_anchor, bh * n, anchor1, anchor2, o1, m1, o2, m2, True)
        if not STORE:
            b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
            b_y = simplex_reads(
                li, b_q, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, m1, m2, scale,
                L, BL, BD, ACT, DOT, HAS_MOM,
            )  # fmt: skip
            if LN:
                xq, _ = ln_rows(b_y, cmask, D, ln_eps)
                b_y = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=mask)
        W1, W2, S1, S2 = tile_end_state(
            beta, f, G, m_end, s_coef, cc, last, li, lmask, b_k, A, d1, dd, W1, W2, S1, S2, L, 0, DOT, HAS_MOM
        )  # fmt: skip
    store_matrices(w1_final, w2_final, bh * n, W1, W2, o1, m1, o2, m2, True)
    store_matrices(s1_final, s2_final, bh * n, S1, S2, o1, m1, o2, m2, HAS_MOM)


def simplex_meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: LaunchConfig) -> tuple[tuple, dict]:
    """Runtime scalars and compile-time constants of the simplex kernels."""
    scalars, constants = whole_state_meta(q, w1, ln_w, config)
    for name in ("END_MAP", "TOKEN_MAP", "P", "BK", "READ_START"):
        del constants[name]
    return (*scalars[:4], config.simplex_scale), constants | {
        "LAG": config.lag,
        "num_warps": SIMPLEX_NUM_WARPS,
    }


def launch_simplex_forward(
    q, k, v, bp, ln_w, ln_b, coef, packing, state, config: LaunchConfig, c0, nc, anchor, y, store
):
    """:func:`~.forward.launch_forward` for Memora's softmax retention (same arguments and results)."""
    T, H = q.shape[1:3]
    w1, w2, s1, s2 = state
    has_mom = s1 is not None
    cu, toff = packing
    new = w1.new_empty
    final, chunks = state_buffers(state, store, nc, H)
    N = w1.shape[0]
    scalars, constants = simplex_meta(q, w1, ln_w, config)
    _simplex_forward_kernel[(N * H,)](
        q, k, v, *or_empty(new(0), bp, ln_w, ln_b), *coef, w1, w2, *or_empty(w1, s1), *or_empty(w2, s2),
        y, *final, *anchor, *chunks, *or_empty(new(0), cu, toff), T, c0, nc, coef[0].shape[2], *scalars,
        **constants, HAS_MOM=has_mom, VARLEN=cu is not None, STORE=store,
    )  # fmt: skip
    return final if has_mom else (*final[:2], None, None), chunks
