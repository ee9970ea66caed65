"""The wide-state variant of the MLP-memory forward kernel, for states too large to keep on chip: the
hidden width is tiled in blocks and the state lives in global memory.

Same semantics, custom ops (``memnets::mlp_memory_fwd`` / ``_bwd``) and checkpoint segments as the
whole-state kernels (see the package's docstring for the equations, the coefficients β, f, G, m_end,
s_coef, the biases and the Omega window), with ``LaunchConfig.hidden_block`` (BHB, a power of two >= 16):
the hidden width Dh is split into NB = ⌈Dh / BHB⌉ blocks. Layer-1 columns and layer-2 rows split
cleanly per block j (W1_j ``[Dk, BHB]``, W2_j ``[BHB, D]``, likewise S1_j, S2_j); only these sums cross
blocks::

    key path   Z2 = Σ_j σ(K W1_j) W2_j                      (then R, ℓ'(R), the LayerNorm backward: Δ)
    read       Ẑ2 = Σ_j [β Â_j W2_j + f Â_j S2_j] − ((Σ_j Â_j A_jᵀ) ⊙ G) Δ
    backward   the cotangents of Δ, of Q Kᵀ (through G), of q and k, and the per-token coefficient
               gradients (β, f, G's last row, s_coef, m_end)

Keys wider than values (OmegaNet's and Atlas' polynomial features, ATLAS arXiv 2505.23735 §3.1: q and k
are φ(x), Dk = 560 at head dim 32, 2,144 at 64, against values of D) only run here: W1's rows are read in
key blocks of KB columns of the keys (:func:`key_block`: 64, or the whole key when it is as wide as the
values), so every product that reads W1 sums over them, Z1_j = Σ_i K_i W1_ij, and the update writes
each block (i, j) as W1_ij' = β_L W1_ij − K_iᵀ (g ⊙ δ1_j); the keys' blocks are read from global memory
(L1/L2) where a product needs them rather than kept live. The residual M(φ(k)) = k + … adds the keys'
first D columns (φ(x) starts with x). With the Omega window each chunk's key path runs over its L
tokens and the P = c − 1 before it (BK rows: the chunk's, with the carried rows of the call before
leading k and v), G is ``[L, P + L]`` and the backward writes each chunk's key-row gradients apart
for the caller to sum (the rows overlap), as in the whole-state kernels.

Grid and state: one program per (batch, head), chunks sequential inside (the forward's reads run
split across programs instead where :func:`~.config.wide_split` says so, :mod:`.wide_split`, the
backward's recompute too; this kernel then serves Moneta's ℓ_q maps), and the state lives in
global memory (float32 working buffers: the final-state outputs, 4 · D · Dh · 4 bytes per program with
momentum, 256 KB at D = 64, Dh = 256, so B · H <= ~190 programs keep it in an H100's 50 MB L2) and
each chunk loops over the hidden blocks; only one block of each matrix, the
chunk's ``[L, D]`` rows and ``[L, L]`` tiles are on chip at a time. A program re-reads (and in the
backward re-writes) its state blocks; a write followed by a read of the same global buffer by the same
program is separated by ``tl.debug_barrier()`` (the threads that write an element are not those that
read it back), and so is a read followed by an in-place overwrite (the sm_90 PTX loads with plain
``ld.global``, not the non-coherent ``.nc`` path, so ``bar.sync`` orders them).

Products are hidden-major: every matmul is written so that the hidden block (BHB: 64 with half
operands, 32 with float32 ones, :func:`~.limits.default_hidden_block`) or the head dim is its M
and the chunk's rows its N (Z1_jᵀ = W1_jᵀ Kᵀ, δ1_jᵀ = W2_j Δᵀ ⊙ σ'(Z1_jᵀ), Ẑ2ᵀ += W2_jᵀ Â_jᵀ, ...;
names ending in ``T`` are such transposed ``[BHB, L]`` / ``[D, L]`` tiles, and the update's
Kᵀ (g ⊙ δ1_j) and A_jᵀ (g ⊙ Δ) already have the widths as M). Hopper's wgmma takes M in
multiples of 64 per warpgroup, so these compile to bf16 wgmma with no warp computing another's
rows; the row-major form (the chunk's 16 rows as M) compiled to mma.sync with four warps on the same
16 rows. Only the ``[L, L]`` products (Q Kᵀ, Σ_j Â_j A_jᵀ, and the backward's cotangent of Q Kᵀ) keep
a 16-row M, with K ≤ the hidden block: a few percent of the tensor work. One warpgroup runs them,
two at padded head dims of 128 (``config.wide_num_warps`` says why); with half operands the state
blocks are wgmma's A operand in registers, which both warpgroups then hold.

Forward, per chunk (``_wide_forward_kernel``):

1. key pass over j: Z2 += σ(K W1_j) W2_j; then Δ (bias derivative, LayerNorm backward) on the whole
   ``[L, D]`` row block;
2. update pass over j: recompute Z1_j, A_j, δ1_j = (Δ W2_jᵀ) ⊙ σ'(Z1_j), the read's Ẑ1_j and Â_j,
   accumulate Ẑ2's block terms and Σ_j Â_j A_jᵀ, then overwrite block j of W2, S2 and then of W1, S1
   with its chunk-end value (block j's old values are not needed by any later block). Layer 1's block
   is read a second time for its update (an L2 hit) instead of being kept live across layer 2's
   work: keeping four ``[D, 64]`` float32 blocks and their updates in registers spilled 2-4 KB per
   thread, the second read costs 2 D·Dh floats of L2 traffic per chunk;
3. finish Ẑ2 (the Δ term), the LayerNorm, store y;
4. with Moneta's chunk-end map (``END_MAP``, :mod:`.end_map`) after a complete chunk: the power sums
   Σ|W|^q of W1 and W2 over their blocks, then each block rescaled in place to s(W)·W
   (:func:`~.wide_maps.end_map_state`; 2 D·Dh floats more read per matrix and one written).

With Moneta's per-token map (``TOKEN_MAP``, Miras arXiv 2504.13173 Eq. 24: token t reads s(A_t)·A_t of its own
accumulator, the key path takes its gradients at the chunk start's s(A)·A; the state holds the accumulators A)
two passes come first: pass 0 sums Σ|W|^q of the chunk-start W1, W2 over their blocks
(:func:`~.wide_maps.power_sums`) for the key path's scales, which multiply layer 1's Z1 and layer 2's Z2 and
δ1; after pass 1, pass 1b forms every token's accumulators A1_t, A2_t block by block for their power sums
(:func:`~.wide_maps.token_powers`: L products per block and layer, each block read once), whose scales
multiply row t of layer 1's dual form in pass 2 and of Ẑ2 in step 3. The power sums are kept for the backward
(every token's by the forward, as the whole-state kernel does; each chunk-start's by the STORE
recompute).

With ``STORE`` (the backward's recompute) pass 2 also writes each block's chunk-start value (4 D·Dh
floats, at the products' half type where they run in one: :func:`~.config.chunk_state_dtype`; the
backward loads them back as float32, :func:`~.common.load_f32`) and skips the reads. Traffic per
chunk and program, with momentum: 8 D·Dh state floats read (2 in pass 1, 6 in pass 2) and 4 D·Dh
written (without momentum 5 and 2), plus the chunk's q, k, v rows; the whole-state kernel reads and
writes the state once per call.

Backward, one launch per recompute segment (the checkpoint segments in reverse, each recomputed from
its start state by STORE passes that write its chunks' start states, in inner segments where that keeps
fewer states live: :func:`~.launch.checkpoint_chunks`), chunks in reverse inside (``_wide_backward_kernel``), state cotangents
(dW1, dW2, dS1, dS2) updated in place in working copies. Before it, one launch per recompute segment
takes the reads' part of passes 2, 3 and 5 for all the segment's chunks at once, a program per
(sequence, head, chunk) (:mod:`.wide_reads`: they never read a state cotangent), and the recurrence
loads their results, split over programs by hidden blocks as the forward is (:mod:`.wide_split_backward`:
passes 1 and 4 on whole rows in every program, 3 and 5 on its own blocks); with keys wider than values
and Moneta's maps the recurrence takes the reads itself, one program per (sequence, head), as listed here:

0. with the chunk-end map, after a complete chunk: its end cotangents dW1, dW2 back through the map,
   in place (:func:`~.wide_maps.end_map_cotangent`, at the weights before the map: the next
   chunk's start state over the scale of the power sums the STORE pass kept);
1. key pass (as forward 1): Z2 → Δ, ℓ'(R), the LayerNorm statistics;
2. read pass over j (:mod:`.wide_reads`): Â_j from the recomputed δ1_j; accumulate Â W2, Â S2 and Â Aᵀ;
   then (whole rows) the read's LayerNorm backward, dβ, df of layer 2, dG and the cotangent of Δ from
   Ẑ2's Δ term;
3. gradient pass over j: the reads' layer-1 backward (dẐ1_j, dQKᵀ accumulated over j, dδ1_j: .wide_reads), the
   terms of layer 1's chunk-end update that sum over key blocks (its share of dδ1_j and of the
   coefficients β_L, f_L, G's last row, s_coef, m_end: one loop over the key blocks with the layer-1
   products), layer 2's chunk-end update backward (block j's new dS2, the partial dW2 written in
   place), δ1_j's second-order terms (dΔ += (dδ1_j ⊙ σ'(Z1_j)) W2_j); dẐ1_j, δ1_j and the partial
   cotangent of Z1_j go to scratch (``[BHB, BK]`` tiles);
4. (whole rows) the cotangent of Δ through the LayerNorm (second order) and ℓ'' to R and Z2;
5. finishing passes: over j, dZ1_j = scratch_j + (dZ2 W2_jᵀ) ⊙ σ'(Z1_j) and dW2_j += A_jᵀ dZ2; then over
   the key blocks i (outer) and j: layer 1's cotangents dW1_ij (the reads', the update's, Kᵀ dZ1_j)
   and dS1_ij written in place, and block i's dq (.wide_reads) and dk, which sum over j.

With the per-token map the reads take each layer's coefficients scaled per token (β̃ = s_t β, f̃, G̃'s
rows), the key path the chunk start's scales (from the power sums the STORE pass kept), and three
things are added: pass 3a, before pass 3, recomputes the reads' layer 1 over the blocks for the
scales' cotangents ds_t = β_t dβ̃_t + f_t df̃_t + Σ_s G[t, s] dG̃[t, s] (ds1_t sums over the blocks,
and pass 3's second-order terms need its consequences); pass 3 then forms every token's accumulators
of block j again and takes C_t = (ds_t ∂s/∂A_t) back through them to δ1_j, Δ, A_j, β, f, G and W2_j,
S2_j (:func:`~.wide_maps.token_layer2_backward`, :func:`~.wide_maps.token_layer1_backward`),
and pass 5's layer-1 blocks their shares of W1, S1 and the keys; the key path's scales take the
cotangents ⟨dZ2, Z2⟩ + Σ_j ⟨dE_j, E_j⟩ (E = Δ W2ᵀ) and ⟨dZ1, Z1⟩ (and the anchor's), whose
s'(W)-terms pass 5 adds to dW2_j and dW1_ij.

Traffic per chunk and program, with momentum, in layer-1 (Dk·Dh) and layer-2 (Dh·D) matrices: 8 and 8
of the chunk-start state read (pass 1 one each, pass 2 two each, pass 3 two and four, pass 5 three
and one), 4 and 3 cotangent matrices read, 2 and 3 written (28 D·Dh floats when Dk = D, as before the
key blocks; 17 without momentum); ``[BK, Dh]`` scratch tiles: three written and one rewritten, read
once per key block; plus the STORE recompute (a forward that writes the 4 chunk-start matrices). The
keys' and queries' blocks are read again by each pass that needs them (L1/L2).

Not covered: everything the whole-state kernels do not cover (:func:`~.limits.supports` names
those), packed sequences, chunk-start reads, chunks of more than 64 rows with the window's, and head
dims (value widths) beyond ``MAX_WIDE_DIM_FOR_TILE`` (the chunk's rows exceed the shared memory). Tested in the Triton
interpreter (which runs a program's block ops one after the other, so it does not exercise the
barriers' cross-thread ordering) and compiled ahead of time for sm_90 with
``scripts/check_kernels_compile.py``; shared memory and spills per shape: benchmarks/RESULTS.md §22.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..optional import or_empty
from ..precision import dot
from .common import (
    act,
    act_grad,
    key_cols_t,
    key_delta,
    ln_params,
    ln_rows,
)
from .config import SEGMENT_INTS, LaunchConfig, block, chunk_state_dtype, kernel_meta, wide_num_warps
from .end_map import lq_scale_of
from .wide_blocks import chunk_rows, key_z2, query_keys, w1_block, w2_block
from .wide_maps import end_map_state, power_sums, token_powers


@triton.jit
def store_start(X, chunks, anchor, sc, base, offs, mask, last, a_scale, STORE: tl.constexpr):
    """Block X's chunk-start value where it is kept: with ``STORE`` in the chunk states (this chunk's at
    ``sc``), and at the sequence's ``last`` chunk in the anchor, times ``a_scale`` (the weights the key
    path took: Moneta's per-token map's s(W)·W, else W)."""
    if STORE:
        tl.store(chunks + sc + offs, X, mask=mask)
    if last:
        tl.store(anchor + base + offs, a_scale * X, mask=mask)


@triton.jit
def update_coefficients(
    beta, f, G, m_end, s_coef, cc, last,
    L: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """The chunk-end update's coefficients of chunk ``cc`` (the index of the (batch, head, chunk) in
    them), ``last`` its last token (the tail chunk is short): G[last, :], β_last and, with momentum,
    f_last, s_coef and m_end (else placeholders, unread)."""
    lk = tl.arange(0, BK)
    lkmask = lk < P + L
    g_last = tl.load(G + cc * L * (P + L) + last * (P + L) + lk, mask=lkmask, other=0.0)
    beta_last = tl.load(beta + cc * L + last)
    f_last, b_s, b_m = beta_last, g_last, beta_last
    if HAS_MOM:
        f_last = tl.load(f + cc * L + last)
        b_s = tl.load(s_coef + cc * (P + L) + lk, mask=lkmask, other=0.0)
        b_m = tl.load(m_end + cc)
    return g_last, beta_last, f_last, b_s, b_m


@triton.jit
def read_coefficients(
    beta,
    f,
    G,
    cc,
    L: tl.constexpr,
    P: tl.constexpr,
    BL: tl.constexpr,
    BK: tl.constexpr,
    HAS_MOM: tl.constexpr,
):
    """The reads' coefficients of chunk ``cc``: β, f (β again without momentum, unread) and G ``[BL, BK]``."""
    li = tl.arange(0, BL)
    lmask = li < L
    lk = tl.arange(0, BK)
    b_beta = tl.load(beta + cc * L + li, mask=lmask, other=0.0)
    b_f = b_beta
    if HAS_MOM:
        b_f = tl.load(f + cc * L + li, mask=lmask, other=0.0)
    b_G = tl.load(
        G + cc * L * (P + L) + li[:, None] * (P + L) + lk[None, :],
        mask=lmask[:, None] & (lk < P + L)[None, :],
        other=0.0,
    )
    return b_beta, b_f, b_G


@triton.jit
def finish_read(
    y, offs, mask, z2T, aa, ddT, b_G, b_s2, gamma, shift, cmask, ln_eps,
    D: tl.constexpr, DOT: tl.constexpr, LN: tl.constexpr, TOKEN_MAP: tl.constexpr,
):  # fmt: skip
    """Forward step 3: Ẑ2 = (the blocks' terms) − ((Σ_j Â_j A_jᵀ) ⊙ G) Δ (row t times s(A2_t) with
    Moneta's per-token map), the LayerNorm, y stored."""
    z2 = tl.trans(z2T - dot(ddT, tl.trans(aa * b_G), DOT))
    if TOKEN_MAP != 0:
        z2 = b_s2[:, None] * z2
    if LN:
        xq, _ = ln_rows(z2, cmask, D, ln_eps)
        z2 = xq * gamma[None, :] + shift[None, :]
    tl.store(y + offs, z2.to(y.dtype.element_ty), mask=mask)


@triton.jit
def update_block(
    j, z2T, aa, q, k, qrow, qvalid, krow, kvalid, w1, w2, s1, s2, w1_anchor, w2_anchor,
    w1_chunks, w2_chunks, s1_chunks, s2_chunks, base1, base2, sc1, sc2, is_last,
    dd, ddT, qkGT, b_beta, b_f, beta_last, f_last, g_last, b_s, b_m, ks1, ks2, b_s1,
    D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr,
    BHB: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr, BL: tl.constexpr, ACT: tl.constexpr,
    DOT: tl.constexpr, HAS_MOM: tl.constexpr, STORE: tl.constexpr, TOKEN_MAP: tl.constexpr,
):  # fmt: skip
    """Forward pass 2 for hidden block j (:func:`_wide_forward_kernel`): the reads' shares (Ẑ2ᵀ without
    its Δ term, Σ Â_j A_jᵀ; returned with ``z2T``, ``aa`` added) and the block's chunk-end update,
    written in place. Layer 2's block is updated first; layer 1's blocks are then read again (from
    L2) rather than kept live across layer 2's work, which would spill registers. ``b_f``, ``f_last``,
    ``b_s``, ``b_m`` are read only with ``HAS_MOM``, ``b_beta``, ``b_f``, ``qkGT`` only without
    ``STORE``. With Moneta's per-token map (``TOKEN_MAP``) the key path runs at the chunk start's
    s(W1)·W1, s(W2)·W2 (scales ``ks1``, ``ks2``) and the read of token t at s(A1_t)·A1_t (row t of
    layer 1's dual form times ``b_s1[t]``; layer 2's scale is :func:`finish_read`'s)."""
    Z1T = tl.zeros([BHB, BK], dtype=tl.float32)
    zq = tl.zeros([BHB, BL], dtype=tl.float32)  # (β ⊙ (Q W1_j) [+ f ⊙ (Q S1_j)])ᵀ
    for i in range(NI):
        o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
        W1 = tl.load(w1 + base1 + o1, mask=m1, other=0.0)
        Z1T += dot(tl.trans(W1), key_cols_t(k, krow, kvalid, i, DI, KB), DOT)
        if not STORE:
            qT = key_cols_t(q, qrow, qvalid, i, DI, KB)
            zq += dot(tl.trans(W1), qT * b_beta[None, :], DOT)
        store_start(W1, w1_chunks, w1_anchor, sc1, base1, o1, m1, is_last, ks1, STORE)
        if HAS_MOM:
            S1 = tl.load(s1 + base1 + o1, mask=m1, other=0.0)
            if not STORE:
                zq += dot(tl.trans(S1), qT * b_f[None, :], DOT)
            if STORE:
                tl.store(s1_chunks + sc1 + o1, S1, mask=m1)
    o2, m2 = w2_block(j, D, DH, BD, BHB)
    if TOKEN_MAP != 0:
        Z1T = ks1 * Z1T
    AT = act(Z1T, ACT)
    W2 = tl.load(w2 + base2 + o2, mask=m2, other=0.0)
    d1T = dot(W2, ddT, DOT) * act_grad(Z1T, ACT)  # δ1_jᵀ
    if TOKEN_MAP != 0:
        d1T = ks2 * d1T
    W2_new = beta_last * W2 - dot(AT * g_last[None, :], dd, DOT)
    if not STORE:
        z1T = zq - dot(d1T, qkGT, DOT)
        if TOKEN_MAP != 0:
            z1T = b_s1[None, :] * z1T
        a1T = act(z1T, ACT)
        z2T += b_beta[None, :] * dot(tl.trans(W2), a1T, DOT)
        aa += dot(tl.trans(a1T), AT, DOT)
    store_start(W2, w2_chunks, w2_anchor, sc2, base2, o2, m2, is_last, ks2, STORE)
    if HAS_MOM:
        S2 = tl.load(s2 + base2 + o2, mask=m2, other=0.0)
        W2_new += f_last * S2
        S2_new = b_m * S2 - dot(AT * b_s[None, :], dd, DOT)
        if not STORE:
            z2T += b_f[None, :] * dot(tl.trans(S2), a1T, DOT)
        if STORE:
            tl.store(s2_chunks + sc2 + o2, S2, mask=m2)
    tl.debug_barrier()  # every thread has read layer 2's block j before it is overwritten
    tl.store(w2 + base2 + o2, W2_new, mask=m2)
    if HAS_MOM:
        tl.store(s2 + base2 + o2, S2_new, mask=m2)
    for i in range(NI):
        o1, m1 = w1_block(i, j, DI, DH, KB, BHB)
        kT = key_cols_t(k, krow, kvalid, i, DI, KB)
        W1 = tl.load(w1 + base1 + o1, mask=m1, other=0.0)
        W1_new = beta_last * W1 - dot(kT, tl.trans(d1T * g_last[None, :]), DOT)
        if HAS_MOM:
            S1 = tl.load(s1 + base1 + o1, mask=m1, other=0.0)
            W1_new += f_last * S1
            S1_new = b_m * S1 - dot(kT, tl.trans(d1T * b_s[None, :]), DOT)
        tl.debug_barrier()  # and layer 1's block (i, j)
        tl.store(w1 + base1 + o1, W1_new, mask=m1)
        if HAS_MOM:
            tl.store(s1 + base1 + o1, S1_new, mask=m1)
    return z2T, aa


@triton.jit(do_not_specialize=SEGMENT_INTS)
def _wide_forward_kernel(
    q, k, v, bp, ln_w, ln_b, beta, f, G, m_end, s_coef,  # inputs, coefficients
    y, w1, w2, s1, s2, w1_anchor, w2_anchor,  # w1 .. s2: the state, updated in place
    w1_chunks, w2_chunks, s1_chunks, s2_chunks,  # with STORE: every chunk's start state
    powers,  # with STORE and an ℓ_q map: every chunk's power sums (END_MAP: at its end; TOKEN_MAP: start)
    tok_p1, tok_p2,  # with TOKEN_MAP, without STORE: every token's power sums P1_t, P2_t, for the backward
    T, P0, C0, NC, NCT, p, eps, sharp, ln_eps, end_q, end_floor,
    H: tl.constexpr, D: tl.constexpr, DI: tl.constexpr, DH: tl.constexpr, L: tl.constexpr,
    BL: tl.constexpr, BD: tl.constexpr, KB: tl.constexpr, NI: tl.constexpr, BHB: tl.constexpr,
    NB: tl.constexpr, P: tl.constexpr, BK: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr,
    BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr, HAS_MOM: tl.constexpr, STORE: tl.constexpr,
    END_MAP: tl.constexpr, TOKEN_MAP: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    b = (i_bh // H).to(tl.int64)
    h = i_bh % H
    bh = i_bh.to(tl.int64)
    n1 = DI * DH  # numbers per layer-1 matrix
    n2 = DH * D  # per layer-2 matrix
    base1 = bh * n1  # this program's state in w1, s1 and in w2, s2 (updated in place)
    base2 = bh * n2
    cols = tl.arange(0, BD)
    cmask = cols < D
    gamma, shift = ln_params(ln_w, ln_b, h, cols, cmask, D, BD, LN)
    for c in range(NC):
        g = C0 + c  # the chunk's index in the sequence
        cc = bh * NCT + g  # index of this (batch, head, chunk) in the coefficients
        offs, mask, qvalid, qrow, _koffs, kmask, kvalid, krow, b_v, delta, b_kr = chunk_rows(
            k, v, bp, b, g, h, T, P0, H, D, DI, L, P, BL, BK, BD, BIAS, RES
        )
        ks1 = 1.0  # the key path's scales of W1, W2 (a constant the compiler folds without the map)
        ks2 = 1.0
        if TOKEN_MAP != 0:  # Moneta per token: the gradients at the chunk start's s(W)·W (pass 0)
            p1, p2 = power_sums(w1, w2, base1, base2, end_q, D, DI, DH, KB, NI, BHB, NB, BD)
            ks1 = lq_scale_of(p1, end_q, end_floor, TOKEN_MAP)
            ks2 = lq_scale_of(p2, end_q, end_floor, TOKEN_MAP)
            if STORE:  # the backward's scales of the key path and their cotangents' coefficients
                tl.store(powers + (bh * NC + c) * 2, p1)
                tl.store(powers + (bh * NC + c) * 2 + 1, p2)
        # pass 1: the key path's Z2 at the chunk-start weights, then Δ on whole rows
        Z2 = ks2 * key_z2(
            k, krow, kvalid, w1, w2, base1, base2, 0, ks1, D, DI, DH, BK, BD, KB, NI, BHB, NB, ACT, DOT
        )
        dd, _, _, _, _ = key_delta(
            Z2, b_kr, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
        )
        g_last, beta_last, f_last, b_s, b_m = update_coefficients(
            beta, f, G, m_end, s_coef, cc, tl.minimum(T - g * L, L) - 1, L, P, BK, HAS_MOM
        )
        b_beta = tl.zeros([BL], dtype=tl.float32)  # the reads' operands, unread with STORE
        b_f = b_beta
        b_G = tl.zeros([BL, BK], dtype=tl.float32)
        qkGT = tl.zeros([BK, BL], dtype=tl.float32)
        if not STORE:
            b_beta, b_f, b_G = read_coefficients(beta, f, G, cc, L, P, BL, BK, HAS_MOM)
            qkGT = tl.trans(query_keys(q, k, qrow, qvalid, krow, kvalid, DI, KB, NI, BL, BK, DOT) * b_G)
        ddT = tl.trans(dd)
        b_s1 = tl.zeros([BL], dtype=tl.float32)  # every token's read scales (Moneta per token)
        b_s2 = b_s1
        if TOKEN_MAP != 0:  # noqa: SIM102 (a compile-time branch)
            if not STORE:  # pass 1b: every token's power sums over the blocks (the backward reads them)
                p1t, p2t = token_powers(
                    k, krow, kvalid, w1, w2, s1, s2, base1, base2, dd, ddT, b_beta, b_f, b_G, ks1, ks2,
                    end_q, D, DI, DH, KB, NI, BHB, NB, BD, BK, L, BL, ACT, DOT, HAS_MOM,
                )  # fmt: skip
                b_s1 = lq_scale_of(p1t, end_q, end_floor, TOKEN_MAP)
                b_s2 = lq_scale_of(p2t, end_q, end_floor, TOKEN_MAP)
                li = tl.arange(0, BL)
                tl.store(tok_p1 + cc * L + li, p1t, mask=li < L)
                tl.store(tok_p2 + cc * L + li, p2t, mask=li < L)
        # hidden-major products (the hidden block or the head dim is each product's M, the chunk's
        # rows its N): Hopper's wgmma needs M >= 64, and 16-row M tiles would replicate warps
        z2T = tl.zeros([BD, BL], dtype=tl.float32)  # the read's Ẑ2ᵀ without its Δ term
        aa = tl.zeros([BL, BK], dtype=tl.float32)  # Σ_j Â_j A_jᵀ
        sc1 = (bh * NC + c) * n1  # with STORE: this chunk's start state in w1_chunks, s1_chunks
        sc2 = (bh * NC + c) * n2  # and in w2_chunks, s2_chunks
        # pass 2: per hidden block, the reads' share and the chunk-end update
        for j in range(NB):
            z2T, aa = update_block(
                j, z2T, aa, q, k, qrow, qvalid, krow, kvalid, w1, w2, s1, s2, w1_anchor, w2_anchor,
                w1_chunks, w2_chunks, s1_chunks, s2_chunks, base1, base2, sc1, sc2, g == NCT - 1,
                dd, ddT, qkGT, b_beta, b_f, beta_last, f_last, g_last, b_s, b_m, ks1, ks2, b_s1,
                D, DI, DH, KB, NI, BHB, BD, BK, BL, ACT, DOT, HAS_MOM, STORE, TOKEN_MAP,
            )  # fmt: skip
        tl.debug_barrier()  # the next chunk's pass 1 (or the map) reads the updated blocks
        if not STORE:
            finish_read(
                y, offs, mask, z2T, aa, ddT, b_G, b_s2, gamma, shift, cmask, ln_eps, D, DOT, LN, TOKEN_MAP
            )
        if END_MAP != 0:  # noqa: SIM102 (a compile-time branch: compiled out without the map)
            if (g + 1) * L <= T:  # a complete chunk
                end_map_state(
                    w1, w2, base1, base2, powers, (bh * NC + c) * 2, end_q, end_floor,
                    D, DI, DH, KB, NI, BHB, NB, BD, END_MAP, STORE,
                )  # fmt: skip
                tl.debug_barrier()  # the next chunk's pass 1 reads the mapped blocks


def wide_meta(
    q: Tensor, w1: Tensor, w2: Tensor, ln_w: Tensor | None, config: LaunchConfig
) -> tuple[tuple, dict]:
    """The wide-state kernels' runtime scalars and constants: the value width D (``w2``'s), the key width
    DI (``q``'s and ``w1``'s rows) in blocks of KB, the hidden width in blocks of BHB, the Omega
    window's P more key rows per chunk (BK of them padded), and the warps (``config.wide_num_warps``)."""
    scalars, constants = kernel_meta(q, w1, ln_w, config)
    del constants["BH"]
    D, DI, DH = w2.shape[-1], q.shape[3], constants["DH"]
    BHB = min(config.hidden_block, block(DH))
    KB = key_block(DI, D)
    constants |= {
        "D": D,
        "BD": block(D),
        "DI": DI,
        "KB": KB,
        "NI": triton.cdiv(DI, KB),
        "BHB": BHB,
        "NB": triton.cdiv(DH, BHB),
        "P": config.prefix,
        "BK": block(config.prefix + config.tile),
        # every one-program kernel's (not config.SHARED_HEAD_KERNELS): the forward's warps
        "num_warps": wide_num_warps(block(D), "_wide_forward_kernel"),
    }
    return scalars, constants


def key_block(d_in: int, d_out: int) -> int:
    """The key width's block in the wide-state kernels: the whole (padded) key when keys are as wide as
    values (the Titans memories: one block, as many columns as the value rows), else 64 columns (the
    feature maps' 560-2,144-wide keys: a ``[64, BHB]`` block of W1 at a time)."""
    return min(block(d_in), max(block(d_out), 64))


def working_state(state: tuple) -> tuple[Tensor, ...]:
    """Copies of the state (w1, w2, s1, s2) that a launch updates in place (empty where None)."""
    empty = state[0].new_empty(0)
    return tuple(empty if t is None else t.clone(memory_format=torch.contiguous_format) for t in state)


def chunk_states(state: tuple, store: bool, nc: int, dot_precision: int) -> tuple[Tensor, ...]:
    """With ``store`` (the backward's recompute), the buffers of every chunk's start state
    ``[B, H, nc, ...]`` for ``state`` (w1, w2, s1, s2; empty where a momentum is None) in
    :func:`~.config.chunk_state_dtype` of the operand mode ``dot_precision``; else empties."""
    w1 = state[0]
    kept = chunk_state_dtype(dot_precision)
    return tuple(
        w1.new_empty(*w1.shape[:2], nc, *t.shape[2:], dtype=kept)
        if store and t is not None
        else w1.new_empty(0)
        for t in state
    )


def launch_wide_forward(
    q, k, v, bp, ln_w, ln_b, coef, packing, state, config: LaunchConfig, c0, nc, anchor, y, store, token_powers=()
):  # fmt: skip
    """:func:`~memnets.kernels.mlp_memory.forward.launch_forward` for the wide-state kernel (one launch
    over chunks c0 .. c0 + nc of a dense batch, the state updated in place in a copy of ``state``; with
    the Omega window k and v lead with the carried rows; with Moneta's per-token map every token's two
    power sums P1_t, P2_t go to ``token_powers``, ``[B, H, NT, L]`` each: the backward needs P_t itself, as
    the scales' derivative is one where P_t > the floor and zero where it is clamped). With ``store``
    the chunks' start states come with a fifth tensor: the ℓ_q map's power sums ``[B, H, nc, 2]``
    (``config.end_map``: at each chunk's end, ``config.token_map``: at its start; else empty)."""
    if packing != (None, None):
        raise ValueError("mlp_memory_wide_fwd: the wide-state kernels take no packed sequences (cu_seqlens)")
    B, T, H = q.shape[:3]
    w1, w2 = state[:2]
    has_mom = state[2] is not None

    def new(*shape: int) -> Tensor:
        return w1.new_empty(shape)

    final = working_state(state)
    chunks = chunk_states(state, store, nc, config.dot_precision)
    powers = new(B, H, nc, 2) if store and (config.end_map or config.token_map) else new(0)
    scalars, constants = wide_meta(q, w1, w2, ln_w, config)
    _wide_forward_kernel[(B * H,)](
        q, k, v, *or_empty(new(0), bp, ln_w, ln_b), *coef, y, *final, *anchor, *chunks, powers,
        *(token_powers or (new(0), new(0))),
        T, k.shape[1] - T, c0, nc, coef[0].shape[2], *scalars, config.end_q, config.end_floor, **constants,
        HAS_MOM=has_mom, STORE=store, END_MAP=config.end_map, TOKEN_MAP=config.token_map,
    )  # fmt: skip
    return final if has_mom else (*final[:2], None, None), (*chunks, powers)
