"""The MLP-memory forward kernel (whole state on chip) and its host side: one launch per checkpoint
segment of tiles, and the checkpoints the backward restarts from (the equations are in the package's
docstring, :mod:`memnets.kernels.mlp_memory`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..optional import or_empty
from ..precision import dot
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
from .end_map import ends_chunk, lq_scale, lq_scale_of, token_power_sums
from .simplex import launch_simplex_forward
from .wide_simplex import launch_wide_simplex_forward
from .wide_split import launch_wide


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _forward_kernel(
    q, k, v, bp, ln_w, ln_b, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1_init, w2_init, s1_init, s2_init,
    y, w1_final, w2_final, s1_final, s2_final, w1_anchor, w2_anchor,
    tok_p1, tok_p2,  # Moneta per token (without STORE): every token's power sums, for the backward
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # with STORE: every tile's start state
    cu, toff, T, P0, C0, NC, NCT, p, eps, sharp, ln_eps, end_q, end_floor,
    H: tl.constexpr, D: tl.constexpr, DH: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    BH: tl.constexpr, KE: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr,
    DOT: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
    READ_START: tl.constexpr, VARLEN: tl.constexpr, STORE: tl.constexpr, END_MAP: tl.constexpr,
    TOKEN_MAP: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b, bos, Tn, t_first, n_tiles, crow = sequence_bounds(i_bh, cu, toff, T, NCT, H, VARLEN)
    kb = key_base(i_bh, bos, P0, H, VARLEN)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n = D * DH  # numbers per weight matrix
    o1, m1 = mat_block(D, DH, BD, BH)  # W1 [D, Dh]
    o2, m2 = mat_block(DH, D, BH, BD)  # W2 [Dh, D]
    W1, W2 = load_matrices(w1_init, w2_init, bh * n, o1, m1, o2, m2, BD, BH, True)
    S1, S2 = load_matrices(s1_init, s2_init, bh * n, o1, m1, o2, m2, BD, BH, HAS_MOM)
    li = tl.arange(0, BL)
    lmask = li < L
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    K1 = W1  # the key path's weights: those at the start of the chunk (of KE tiles) the tile is in
    K2 = W2
    for c in range(tl.minimum(NC, n_tiles - C0)):
        g = C0 + c  # the tile's index in the sequence
        cc = crow * NCT + t_first + g  # index of this (batch, head, tile) in the coefficients
        if g % KE == 0:
            K1 = W1
            K2 = W2
            if TOKEN_MAP != 0:  # Moneta per token: the gradient at the chunk start's mapped weights
                K1 = W1 * lq_scale(W1, end_q, end_floor, TOKEN_MAP)
                K2 = W2 * lq_scale(W2, end_q, end_floor, TOKEN_MAP)
        if STORE:
            sc = bh * NC + c
            store_matrices(w1_chunks, w2_chunks, sc * n, W1, W2, o1, m1, o2, m2, True)
            store_matrices(s1_chunks, s2_chunks, sc * n, S1, S2, o1, m1, o2, m2, HAS_MOM)
        if g == n_tiles - 1:
            store_matrices(w1_anchor, w2_anchor, bh * n, K1, K2, o1, m1, o2, m2, True)
        offs, mask, _koffs, kmask, _kvalid, _krow, b_k, b_v, delta = tile_rows(
            k, v, bp, b, bos, kb, g, h, Tn, P0, H, D, L, P, BL, BK, BD, BIAS
        )
        lk = tl.arange(0, BK)
        lkmask = lk < P + L
        _z1, A, dd, _dout, _r, _xk, _rk, _e, _sg, d1 = key_path(
            b_k, b_v, delta, K1, K2, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps,
            D, ACT, DOT, BIAS, LN, RES,
        )  # fmt: skip
        if not STORE:
            b_q = tl.load(q + offs, mask=mask, other=0.0).to(tl.float32)
            if READ_START:
                b_y = dot(act(dot(b_q, K1, DOT), ACT), K2, DOT)
            else:
                b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
                b_G = tl.load(
                    G + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :],
                    mask=lmask[:, None] & lkmask[None, :],
                    other=0.0,
                )
                z1 = b_beta[:, None] * dot(b_q, W1, DOT) - dot(dot(b_q, tl.trans(b_k), DOT) * b_G, d1, DOT)
                b_f = b_beta
                if HAS_MOM:
                    b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
                    z1 += b_f[:, None] * dot(b_q, S1, DOT)
                if TOKEN_MAP != 0:  # every token reads its own accumulator's scale: W_t = s(A_t) A_t
                    p1, p2 = token_power_sums(
                        li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, end_q, L, BL, DOT, HAS_MOM
                    )
                    tl.store(tok_p1 + cc * L + li, p1, mask=lmask)
                    tl.store(tok_p2 + cc * L + li, p2, mask=lmask)
                    s1 = lq_scale_of(p1, end_q, end_floor, TOKEN_MAP)
                    s2 = lq_scale_of(p2, end_q, end_floor, TOKEN_MAP)
                    z1 = s1[:, None] * z1
                a1 = act(z1, ACT)
                b_y = b_beta[:, None] * dot(a1, W2, DOT) - dot(dot(a1, tl.trans(A), DOT) * b_G, dd, DOT)
                if HAS_MOM:
                    b_y += b_f[:, None] * dot(a1, S2, DOT)
                if TOKEN_MAP != 0:
                    b_y = s2[:, None] * b_y
            if LN:
                xq, _ = ln_rows(b_y, cmask, D, ln_eps)
                b_y = xq * gamma[None, :] + shift[None, :]
            tl.store(y + offs, b_y.to(y.dtype.element_ty), mask=mask)
        last = tl.minimum(Tn - g * L, L) - 1  # the tile's last token (the tail tile is short)
        W1, W2, S1, S2 = tile_end_state(
            beta, f, G, m_end, s_coef, cc, last, lk, lkmask, b_k, A, d1, dd, W1, W2, S1, S2, L, P, DOT, HAS_MOM
        )  # fmt: skip
        if END_MAP != 0:  # noqa: SIM102 (a compile-time branch: compiled out without the map)
            if ends_chunk(g, Tn, L, KE):
                W1 = W1 * lq_scale(W1, end_q, end_floor, END_MAP)
                W2 = W2 * lq_scale(W2, end_q, end_floor, END_MAP)
    store_matrices(w1_final, w2_final, bh * n, W1, W2, o1, m1, o2, m2, True)
    store_matrices(s1_final, s2_final, bh * n, S1, S2, o1, m1, o2, m2, HAS_MOM)


def carried_rows(k: Tensor, T: int, cu: Tensor | None) -> int:
    """P0, the Omega window's carried rows that lead k and v (of each packed sequence)."""
    return (k.shape[1] - T) // (1 if cu is None else cu.numel() - 1)


def spans(first: int, n: int, every: int) -> list[tuple[int, int]]:
    """Tiles first .. first + n in pieces of ``every`` (the last may be shorter): (first tile, tiles)."""
    return [(c0, min(every, first + n - c0)) for c0 in range(first, first + n, every)]


def segments(config: LaunchConfig) -> list[tuple[int, int]]:
    """(first tile, number of tiles) of each checkpoint segment of the longest sequence."""
    return spans(0, config.max_tiles, config.checkpoint_every)


def backward_plan(tiles: int, every: int, inner: int) -> tuple[int, int]:
    """What the backward's recompute costs over ``tiles`` tiles with checkpoints every ``every`` tiles,
    each segment recomputed in inner segments of ``inner``: (states live at once at the most: the
    checkpoints, one segment's inner start states, one inner segment's tile states; tiles the STORE
    passes walk: every tile once, plus each segment's tiles before its last inner segment)."""
    outer = spans(0, tiles, every)
    live = len(outer) + max(len(spans(c0, nc, inner)) - 1 + min(inner, nc) for c0, nc in outer)
    walked = tiles + sum(nc - spans(c0, nc, inner)[-1][1] for c0, nc in outer)
    return live, walked


def launch_forward(
    q, k, v, bp, ln_w, ln_b, coef, packing, state, config: LaunchConfig, c0, nc, anchor, y, store, token_powers=()
):  # fmt: skip
    """One launch over tiles c0 .. c0 + nc from ``state`` (w1, w2, s1, s2) at tile c0; writes the reads
    into ``y`` (unless ``store``), the last chunk's start weights into ``anchor`` and, with Moneta's
    per-token map, every token's two power sums into ``token_powers`` (``[B, H, NT, L]`` each). Returns the state
    after the tiles and, with ``store``, every tile's start state ``[B, H, nc, ...]``."""
    T, H = q.shape[1:3]
    w1, w2, s1, s2 = state
    has_mom = s1 is not None
    cu, toff = packing
    new = w1.new_empty
    final, chunks = state_buffers(state, store, nc, H)
    N = w1.shape[0]  # programs per head: batch entries, or packed sequences
    scalars, constants = whole_state_meta(q, w1, ln_w, config)
    _forward_kernel[(N * H,)](
        q, k, v, *or_empty(new(0), bp, ln_w, ln_b), *coef, w1, w2, *or_empty(w1, s1), *or_empty(w2, s2),
        y, *final, *anchor, *(token_powers or (new(0), new(0))), *chunks,
        *or_empty(new(0), cu, toff), T, carried_rows(k, T, cu), c0, nc, coef[0].shape[2], *scalars,
        **constants, HAS_MOM=has_mom, VARLEN=cu is not None, STORE=store,
    )  # fmt: skip
    return final if has_mom else (*final[:2], None, None), chunks


def run_forward(
    q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2, cu_seqlens, tile_offsets,
    config: LaunchConfig,
) -> tuple[Tensor, ...]:  # fmt: skip
    """The forward ops' work (``memnets::mlp_memory_fwd`` and ``_wide_fwd``, arguments there): every
    checkpoint segment in turn, in the whole-state or (``config.hidden_block``) the wide-state kernel.
    Returns (y float32, W1, W2, S1, S2 final (S empty without momentum), W1, W2 at the last chunk's
    start, the state at every segment start ``[NS, B, H, ...]`` (the backward's checkpoints) and, with
    Moneta's per-token map, every token's power sums of both layers ``[B, H, NT, L]`` (else empty): the
    backward reads them instead of forming every token's accumulators a second time for their norms)."""
    launch = launch_wide if config.hidden_block else launch_forward
    if config.simplex_scale:
        launch = launch_wide_simplex_forward if config.hidden_block else launch_simplex_forward
    coef = (beta, f, G, m_end, s_coef)
    y = w1.new_empty(*q.shape[:3], w2.shape[-1])  # the values' width
    anchor = (torch.empty_like(w1), torch.empty_like(w2))
    state = (w1, w2, s1, s2)
    starts = []
    packing = (cu_seqlens, tile_offsets)
    powers = tuple(torch.empty_like(beta) if config.token_map else beta.new_empty(0) for _ in range(2))
    extra = {"token_powers": powers} if config.token_map else {}
    for c0, nc in segments(config):
        starts.append(state)
        state, _ = launch(
            q, k, v, bias_params, ln_w, ln_b, coef, packing, state, config, c0, nc, anchor, y, False, **extra
        )
    ckpt = [torch.stack([st[i] for st in starts]) for i in range(2)]
    ckpt += [torch.stack([st[i] for st in starts]) if s1 is not None else w1.new_empty(0) for i in (2, 3)]
    w1f, w2f, s1f, s2f = state
    s1f, s2f = (w1.new_empty(0) if s is None else s for s in (s1f, s2f))  # distinct: outputs may not alias
    return (y, w1f, w2f, s1f, s2f, *anchor, *ckpt, *powers)
