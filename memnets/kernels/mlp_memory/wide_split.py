"""The wide-state forward with the hidden width split across programs: SPLIT programs per (sequence,
head), each owning NB / SPLIT of the hidden blocks (its columns of W1 and S1, its rows of W2 and S2),
one launch per chunk.

Why: at titans-760m's 4 × 16 heads, one program per (sequence, head) is 64 programs on 132 SMs,
each walking its chunks through a chain of dependent matmuls and state loads (the first GPU run
measured 0.09% of the bf16 peak, benchmarks/RESULTS.md §26). Only two sums of a chunk's forward cross
the hidden blocks (:mod:`.wide_forward`): the key path's Z2 = Σ_j σ(K W1_j) W2_j, whose whole rows Δ
needs, and the reads' Ẑ2 terms. Everything else of a block j — δ1_j, the reads' Â_j, the chunk-end
update of block j — needs only Δ and block j. So a launch per chunk g runs, in each program s:

1. Z2 of chunk g = the sum of the SPLIT programs' shares (written by the launch before), then Δ on the
   whole ``[BK, D]`` rows (every program computes the same Δ; program 0 keeps it for the reads);
2. pass 2 of :mod:`.wide_forward` over its own blocks (:func:`~.wide_forward.update_block`): the
   reads' shares of chunk g kept per program, its blocks updated in place;
3. its share of chunk g + 1's Z2 at the updated blocks (its own: nothing waits on another program).

The shares travel through global memory between launches (two slots by chunk parity: a launch reads
one and writes the other), so no program ever waits for another inside a launch and the CPU
interpreter, which runs programs one after another, runs this exactly as the GPU does. The reads of
all chunks are finished by one launch over (sequence, head, chunk) at the end (the reads feed nothing
downstream): the shares summed, Ẑ2's Δ term, the LayerNorm, y.

The first launch of a call only writes chunk c0's shares. Programs: B·H·SPLIT per launch
(:func:`~.config.wide_split`); launches: chunks + 2 per call. The backward's recompute (``STORE``)
runs the same launches without the reads: each program writes its blocks' chunk-start values
(:func:`~.wide_forward.update_block`) instead of the reads' shares, and no read launch follows.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ..optional import or_empty
from ..relaunch import Relaunch
from .common import key_delta, ln_params, row_block
from .config import SEGMENT_INTS, LaunchConfig, device_split, split_constants, wide_num_warps
from .wide_blocks import chunk_rows, key_z2, query_keys
from .wide_forward import (
    chunk_states,
    finish_read,
    launch_wide_forward,
    read_coefficients,
    update_block,
    update_coefficients,
    wide_meta,
    working_state,
)


@triton.jit
def _key_share(
    k, w1, w2, z2_parts, b, h, g, T, P0, base1, base2, j0, slot, s,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    P: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr,
    BHB: tl.constexpr, NBJ: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Program s's share of chunk g's key-path Z2 (its NBJ blocks from ``j0``), stored in slot ``slot``
    of ``z2_parts [2, B·H, SPLIT, BK, BD]``."""
    _, _, kvalid, krow = row_block(b, P0 + g * L - P, h, P0 + T, H, D, P + L, BK, BD)
    share = key_z2(
        k, krow, kvalid, w1, w2, base1, base2, j0, 1.0, D, DI, DH, BK, BD, KB, NI, BHB, NBJ, ACT, DOT
    )
    bh = (b * H + h).to(tl.int64)
    at = ((slot * tl.num_programs(0) + bh) * SPLIT + s) * BK * BD
    rows = tl.arange(0, BK)
    cols = tl.arange(0, BD)
    tl.store(z2_parts + at + rows[:, None] * BD + cols[None, :], share)


@triton.jit(do_not_specialize=(*SEGMENT_INTS, "c"))
def _wide_split_kernel(
    q, k, v, bp, ln_w, ln_b, beta, f, G, m_end, s_coef,  # inputs, coefficients
    w1, w2, s1, s2, w1_anchor, w2_anchor,  # w1 .. s2: the state, each program's blocks updated in place
    z2_parts, dd_chunks, z2r_parts, aa_parts,  # the shares (see the module's docstring)
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # with STORE: every chunk's start state
    T, P0, C0, c, NC, NCT, p, eps, sharp, ln_eps,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr,
    SPLIT: tl.constexpr, SP2: tl.constexpr, NBJ: tl.constexpr, FIRST: tl.constexpr, STORE: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    s = tl.program_id(1)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    base1 = bh * DI * DH  # this program's (sequence, head) in w1, s1 and in w2, s2
    base2 = bh * DH * D
    j0 = s * NBJ  # its first hidden block
    g = C0 + c  # the chunk's index in the sequence
    if FIRST:
        _key_share(
            k, w1, w2, z2_parts, b, h, g, T, P0, base1, base2, j0, g % 2, s,
            H, D, DI, DH, L, P, BK, BD, KB, NI, BHB, NBJ, ACT, DOT, SPLIT,
        )  # fmt: skip
    else:
        rows = tl.arange(0, BK)
        cols = tl.arange(0, BD)
        cmask = cols < D
        part = rows[:, None] * BD + cols[None, :]
        _, _, qvalid, qrow, _, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, bp, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, BIAS, RES
        )
        # 1. Z2 = the programs' shares, then Δ on whole rows
        # one load of all shares, not a loop over them: the compiler unrolls so short a loop, and the
        # static report matches the SASS's loops to the TTGIR's
        t = tl.arange(0, SP2)
        first = ((g % 2) * tl.num_programs(0) + bh) * SPLIT * BK * BD
        shares = tl.load(
            z2_parts + first + t[:, None, None] * BK * BD + part[None, :, :],
            mask=(t < SPLIT)[:, None, None],
            other=0.0,
        )
        Z2 = tl.sum(shares, 0)
        gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
        dd, _, _, _, _ = key_delta(
            Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )
        chunk = bh * NC + c  # this (sequence, head, chunk) in the call's shares and chunk states
        if not STORE:  # noqa: SIM102 (a compile-time branch around a runtime one)
            if s == 0:
                tl.store(dd_chunks + chunk * BK * BD + part, dd)
        cc = bh * NCT + g
        g_last, beta_last, f_last, b_s, b_m = update_coefficients(
            beta, f, G, m_end, s_coef, cc, tl.minimum(T - g * L, L) - 1, L, P, BK, HAS_MOM
        )
        b_beta, b_f, b_G = read_coefficients(beta, f, G, cc, L, P, BL, BK, HAS_MOM)
        if STORE:  # no reads: the chunk's start state is kept instead
            qkGT = tl.zeros([BK, BL], dtype=tl.float32)
        else:
            qkGT = tl.trans(query_keys(q, k, qrow, qvalid, krow, kvalid, DI, KB, NI, BL, BK, DOT) * b_G)
        # 2. pass 2 over this program's blocks
        z2T = tl.zeros([BD, BL], dtype=tl.float32)
        aa = tl.zeros([BL, BK], dtype=tl.float32)
        for jj in range(NBJ):
            z2T, aa = update_block(
                j0 + jj, z2T, aa, q, k, qrow, qvalid, krow, kvalid, w1, w2, s1, s2, w1_anchor, w2_anchor,
                w1_chunks, w2_chunks, s1_chunks, s2_chunks, base1, base2, chunk * DI * DH, chunk * DH * D,
                g == NCT - 1, dd, tl.trans(dd), qkGT, b_beta, b_f, beta_last, f_last, g_last, b_s, b_m, 1.0, 1.0,
                b_beta, D, DI, DH, KB, NI, BHB, BD, BK, BL, ACT, DOT, HAS_MOM, STORE, 0,
            )  # fmt: skip
        share = (chunk * SPLIT + s).to(tl.int64)
        li = tl.arange(0, BL)
        if not STORE:
            tl.store(z2r_parts + share * BD * BL + cols[:, None] * BL + li[None, :], z2T)
            tl.store(aa_parts + share * BL * BK + li[:, None] * BK + rows[None, :], aa)
        # 3. this program's share of the next chunk's Z2, at its updated blocks
        if c + 1 < NC:
            tl.debug_barrier()  # the blocks just written are read back
            _key_share(
                k, w1, w2, z2_parts, b, h, g + 1, T, P0, base1, base2, j0, (g + 1) % 2, s,
                H, D, DI, DH, L, P, BK, BD, KB, NI, BHB, NBJ, ACT, DOT, SPLIT,
            )  # fmt: skip


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_split_read_kernel(
    ln_w, ln_b, beta, G, y, dd_chunks, z2r_parts, aa_parts, T, C0, NC, NCT, ln_eps,
    H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr,
    P: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr, LN: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Chunk C0 + c's reads of one (sequence, head) (program (that, c)) from the programs' shares."""
    i_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    g = C0 + c
    chunk = bh * NC + c
    offs, mask, _, _ = row_block(b, g * L, h, T, H, D, L, BL, BD)
    rows = tl.arange(0, BK)
    cols = tl.arange(0, BD)
    li = tl.arange(0, BL)
    z2T = tl.zeros([BD, BL], dtype=tl.float32)
    aa = tl.zeros([BL, BK], dtype=tl.float32)
    for s in range(SPLIT):
        share = chunk * SPLIT + s
        z2T += tl.load(z2r_parts + share * BD * BL + cols[:, None] * BL + li[None, :])
        aa += tl.load(aa_parts + share * BL * BK + li[:, None] * BK + rows[None, :])
    dd = tl.load(dd_chunks + chunk * BK * BD + rows[:, None] * BD + cols[None, :])
    _, _, b_G = read_coefficients(beta, beta, G, bh * NCT + g, L, P, BL, BK, False)
    cmask = cols < D
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    finish_read(y, offs, mask, z2T, aa, tl.trans(dd), b_G, b_G, gamma, shift, cmask, ln_eps, D, DOT, LN, 0)


def launch_wide_split_forward(
    q, k, v, bp, ln_w, ln_b, coef, state, meta, c0, nc, anchor, y, split: int, store: bool = False
) -> tuple[tuple, tuple]:  # fmt: skip
    """:func:`~.wide_forward.launch_wide_forward` with ``split`` programs per (sequence, head): chunks
    c0 .. c0 + nc, the state updated in place in a copy of ``state``; ``meta`` is
    :func:`~.wide_forward.wide_meta`'s. Returns the state after the chunks and, with ``store`` (the
    backward's recompute: no reads, no y), every chunk's start state (w1, w2, s1, s2 and an empty
    fifth: no ℓ_q map runs here), else empties."""
    B, T, H = q.shape[:3]
    w1 = state[0]
    has_mom = state[2] is not None

    def new(*shape: int) -> Tensor:
        return w1.new_empty(shape)

    final = working_state(state)
    scalars, constants = meta
    BK, BD, BL = constants["BK"], constants["BD"], constants["BL"]
    # Z2 shares by parity; without store each chunk's Δ and the reads' shares
    shares = (new(2, B * H, split, BK, BD), new(B * H, nc, BK, BD) if not store else new(0))
    reads = tuple(new(B * H, nc, split, *shape) if not store else new(0) for shape in ((BD, BL), (BL, BK)))
    chunks = chunk_states(state, store, nc, constants["DOT"])
    bp, ln_w, ln_b = or_empty(new(0), bp, ln_w, ln_b)
    kw = {**constants, "num_warps": wide_num_warps(BD, "_wide_split_kernel"), "HAS_MOM": has_mom}
    kw |= {**split_constants(split, constants["NB"]), "STORE": store}
    # one launch per chunk: Triton's binding once per variant
    first, later = (Relaunch(_wide_split_kernel, (B * H, split), **kw, FIRST=f) for f in (True, False))
    for c in range(-1, nc):  # c = -1: chunk c0's first shares
        (first if c < 0 else later)(
            q, k, v, bp, ln_w, ln_b, *coef, *final, *anchor, *shares, *reads, *chunks,
            T, k.shape[1] - T, c0, max(c, 0), nc, coef[0].shape[2], *scalars,
        )  # fmt: skip
    if not store:
        _wide_split_read_kernel[(B * H, nc)](
            ln_w, ln_b, coef[0], coef[2], y, *shares[1:], *reads, T, c0, nc, coef[0].shape[2], scalars[3],
            H=H, D=constants["D"], L=constants["L"], BL=BL, BD=BD, P=constants["P"], BK=BK,
            DOT=constants["DOT"], LN=constants["LN"], SPLIT=split, num_warps=constants["num_warps"],
        )  # fmt: skip
    return final if has_mom else (*final[:2], None, None), (*chunks, new(0))


def launch_wide(
    q, k, v, bp, ln_w, ln_b, coef, packing, state, config: LaunchConfig, c0, nc, anchor, y, store, token_powers=()
):  # fmt: skip
    """The wide-state forward launch (:func:`~.wide_forward.launch_wide_forward`'s arguments and
    results): the hidden blocks split over :func:`~.config.wide_split` programs per (sequence, head)
    where that is more than one (the forward and the backward's recompute, ``store``), else (and with
    Moneta's ℓ_q maps) one program each."""
    if packing != (None, None) or config.end_map or config.token_map:  # the split: no ℓ_q maps
        return launch_wide_forward(
            q, k, v, bp, ln_w, ln_b, coef, packing, state, config, c0, nc, anchor, y, store, token_powers
        )
    B, _, H = q.shape[:3]
    meta = wide_meta(q, state[0], state[1], ln_w, config)
    split = device_split(q.device, B * H, meta[1]["NB"])
    if split == 1:
        return launch_wide_forward(
            q, k, v, bp, ln_w, ln_b, coef, packing, state, config, c0, nc, anchor, y, store
        )
    return launch_wide_split_forward(
        q, k, v, bp, ln_w, ln_b, coef, state, meta, c0, nc, anchor, y, split, store=store
    )
