"""Triton kernels for the chunked gated delta rule (forward and backward), behind a torch custom op.

The math is the chunk form documented in :mod:`memnets.kernels.gated_delta`. Per chunk of C tokens (one
sequence, one head), with ``gam`` the in-chunk cumulative log gate, ``E = diag(exp(gam))`` and
``Dm[t, s] = exp(gam_t - gam_s)`` for s <= t (0 above the diagonal)::

    A   = strict_tril(diag(beta) (K K^T) * Dm)        Tm = (I + A)^-1    (forward substitution)
    W   = Tm diag(beta) E K          Ub = Tm diag(beta) V          U = Ub - W S0
    O   = scale (E Q S0 + (Q K^T * Dm) U)
    S1  = exp(gam_C) S0 + (diag(exp(gam_C - gam)) K)^T U

Kernels (all accumulate in float32; loads of half inputs are upcast):

1. ``_prepare_kernel`` (parallel over chunks x heads): builds ``Tm`` and stores its rows next to their
   tokens, ``[T, H, C]`` float32. This is the only intermediate saved for the backward pass.
2. ``_forward_kernel`` (parallel over sequences x heads x value blocks, sequential over the chunks of a
   sequence): carries the state, writes ``o`` and the final state; in the backward pass it is re-run to
   recompute the chunk-start states ``h`` instead of keeping them from the forward (memory).
3. ``_backward_state_kernel`` (same grid, chunks in reverse): carries ``dS`` backwards and stores the
   gradient of every chunk's end state ``dh`` plus the initial-state gradient.
4. ``_backward_local_kernel`` (parallel over chunks x heads): from ``h``, ``dh`` and ``do`` gives the
   gradients of q, k, v, g and beta of one chunk.

Packed sequences (``cu_seqlens``) are handled inside the kernels: each program reads its sequence's
bounds, and the last chunk of a sequence is masked (zero k, v, q, beta and g past the end, which leaves
the state unchanged). Dense batches are run as packed sequences of equal length.

The forward and backward are ``torch.library`` custom ops (``memnets::gated_delta_fwd`` / ``_bwd``) with
fake (meta) implementations, so ``torch.compile`` traces around them without graph breaks; the
``torch.autograd.Function`` ties them together. Only APIs present in Triton 3.6 are used.

Performance is untuned (no GPU was available when this was written): the matmuls' operands follow
``dot_precision`` (:mod:`memnets.kernels.precision`: half for half inputs or autocast, else tf32x3),
the local backward loops over value blocks of 64 (a full 128 x 128 tile needs 416 KB of shared memory on sm_90),
and there is no autotuning. ``scripts/check_kernels_compile.py`` compiles every kernel for sm_90.
"""

from __future__ import annotations

import itertools
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from .precision import dot, dot_code_for


@triton.jit
def _load_chunk_rows(
    ptr, t0, eos, i_h, col0, H: tl.constexpr, D: tl.constexpr, C: tl.constexpr, BD: tl.constexpr
):
    """Rows t0 .. t0+C, columns col0 .. col0+BD of a [T, H, D] tensor for head i_h, zero past eos and
    past D, as float32 [C, BD]."""
    rows = tl.arange(0, C)
    cols = col0 + tl.arange(0, BD)
    mask = ((t0 + rows) < eos)[:, None] & (cols < D)[None, :]
    ptrs = ptr + ((t0 + rows)[:, None] * H + i_h) * D + cols[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_chunk_gates(ptr, t0, eos, i_h, H: tl.constexpr, C: tl.constexpr):
    rows = tl.arange(0, C)
    return tl.load(ptr + (t0 + rows) * H + i_h, mask=(t0 + rows) < eos, other=0.0).to(tl.float32)


@triton.jit
def _decay_matrix(gam, C: tl.constexpr, STRICT: tl.constexpr):
    """exp(gam_t - gam_s) on (strictly, if STRICT) lower-triangular positions, 0 elsewhere."""
    rows = tl.arange(0, C)
    keep = rows[:, None] > rows[None, :] if STRICT else rows[:, None] >= rows[None, :]
    # zero the exponent where masked: above the diagonal it is positive and could overflow
    diff = tl.where(keep, gam[:, None] - gam[None, :], 0.0)
    return tl.where(keep, tl.exp(diff), 0.0)


@triton.jit
def _sequence_state(
    s0, cu_seqlens, chunk_offsets, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, USE_S0: tl.constexpr,
):  # fmt: skip
    """A (sequence, head, value block) program's sequence rows bos .. eos, first packed chunk, value
    columns, the offsets and mask of its ``[K, BV]`` block of a state, and that block of its sequence's
    state in ``s0`` ``[N, H, K, V]`` (zeros without ``USE_S0``)."""
    i_n = tl.program_id(0)
    i_h = tl.program_id(1)
    i_v = tl.program_id(2)
    bos = tl.load(cu_seqlens + i_n)
    eos = tl.load(cu_seqlens + i_n + 1)
    c_base = tl.load(chunk_offsets + i_n)
    ks = tl.arange(0, BK)
    vs = i_v * BV + tl.arange(0, BV)
    kv_mask = (ks < K)[:, None] & (vs < V)[None, :]
    kv_offs = ks[:, None] * V + vs[None, :]
    if USE_S0:
        b_s = tl.load(s0 + (i_n * H + i_h) * K * V + kv_offs, mask=kv_mask, other=0.0).to(tl.float32)
    else:
        b_s = tl.zeros([BK, BV], dtype=tl.float32)
    return i_n, i_h, i_v, bos, eos, c_base, vs, kv_offs, kv_mask, b_s


@triton.jit
def _chunk_program(cu_seqlens, chunk_indices, C: tl.constexpr):
    """A (packed chunk, head) program's chunk index, head, first row t0 and its sequence's end eos."""
    i_c = tl.program_id(0)
    i_n = tl.load(chunk_indices + 2 * i_c)
    i_t = tl.load(chunk_indices + 2 * i_c + 1)
    bos = tl.load(cu_seqlens + i_n)
    eos = tl.load(cu_seqlens + i_n + 1)
    return i_c, tl.program_id(1), bos + i_t * C, eos


@triton.jit
def _chunk_keys(
    k, g, beta, tm, t0, eos, i_h, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
    DOT: tl.constexpr,
):  # fmt: skip
    """A chunk's keys, beta, cumulative log gate gam and its total, Tm rows and W = Tm diag(beta) E K."""
    b_k = _load_chunk_rows(k, t0, eos, i_h, 0, H, K, C, BK)
    b_beta = _load_chunk_gates(beta, t0, eos, i_h, H, C)
    b_g = _load_chunk_gates(g, t0, eos, i_h, H, C)
    gam = tl.cumsum(b_g, 0)
    b_tm = _load_chunk_rows(tm, t0, eos, i_h, 0, H, C, C, C)
    b_w = dot(b_tm, b_k * (b_beta * tl.exp(gam))[:, None], DOT)
    return b_k, b_beta, gam, tl.sum(b_g, 0), b_tm, b_w


@triton.jit
def _prepare_kernel(
    k, g, beta, tm, cu_seqlens, chunk_indices,
    H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    _ic, i_h, t0, eos = _chunk_program(cu_seqlens, chunk_indices, C)
    rows = tl.arange(0, C)

    b_k = _load_chunk_rows(k, t0, eos, i_h, 0, H, K, C, BK)
    b_beta = _load_chunk_gates(beta, t0, eos, i_h, H, C)
    gam = tl.cumsum(_load_chunk_gates(g, t0, eos, i_h, H, C), 0)
    kk = dot(b_k, tl.trans(b_k), DOT)
    b_a = b_beta[:, None] * kk * _decay_matrix(gam, C, True)

    # (I + A)^-1 row by row: Tm[i] = e_i - sum_{j<i} A[i, j] Tm[j]
    b_tm = tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)
    for i in range(1, C):
        a_i = tl.sum(tl.where(rows[:, None] == i, b_a, 0.0), 0)
        row = tl.sum(a_i[:, None] * b_tm, 0)
        b_tm = tl.where(rows[:, None] == i, b_tm - row[None, :], b_tm)

    mask = ((t0 + rows) < eos)[:, None] & (rows < C)[None, :]
    tl.store(tm + ((t0 + rows)[:, None] * H + i_h) * C + rows[None, :], b_tm, mask=mask)


@triton.jit
def _forward_kernel(
    q, k, v, g, beta, tm, h0, o, ht, h, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_H0: tl.constexpr, STORE_O: tl.constexpr, STORE_HT: tl.constexpr, STORE_H: tl.constexpr,
    DOT: tl.constexpr,
):  # fmt: skip
    i_n, i_h, i_v, bos, eos, c_base, vs, kv_offs, kv_mask, b_s = _sequence_state(
        h0, cu_seqlens, chunk_offsets, H, K, V, BK, BV, USE_H0
    )
    rows = tl.arange(0, C)
    for i_t in range(0, tl.cdiv(eos - bos, C)):
        t0 = bos + i_t * C
        if STORE_H:
            tl.store(h + ((c_base + i_t) * H + i_h) * K * V + kv_offs, b_s, mask=kv_mask)
        b_k, b_beta, gam, g_last, b_tm, b_w = _chunk_keys(k, g, beta, tm, t0, eos, i_h, H, K, C, BK, DOT)
        b_v = _load_chunk_rows(v, t0, eos, i_h, i_v * BV, H, V, C, BV)
        b_u = dot(b_tm, b_v * b_beta[:, None], DOT)
        b_u -= dot(b_w, b_s, DOT)
        if STORE_O:
            b_q = _load_chunk_rows(q, t0, eos, i_h, 0, H, K, C, BK)
            qk = dot(b_q, tl.trans(b_k), DOT) * _decay_matrix(gam, C, False)
            b_o = dot(b_q * tl.exp(gam)[:, None], b_s, DOT)
            b_o += dot(qk, b_u, DOT)
            o_mask = ((t0 + rows) < eos)[:, None] & (vs < V)[None, :]
            tl.store(
                o + ((t0 + rows)[:, None] * H + i_h) * V + vs[None, :],
                (scale * b_o).to(o.dtype.element_ty),
                mask=o_mask,
            )
        b_kd = b_k * tl.exp(g_last - gam)[:, None]
        b_s = tl.exp(g_last) * b_s + dot(tl.trans(b_kd), b_u, DOT)

    if STORE_HT:
        tl.store(ht + (i_n * H + i_h) * K * V + kv_offs, b_s, mask=kv_mask)


@triton.jit
def _backward_state_kernel(
    q, k, g, beta, tm, do, dht, dh, dh0, cu_seqlens, chunk_offsets, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    i_n, i_h, i_v, bos, eos, c_base, _vs, kv_offs, kv_mask, b_ds = _sequence_state(
        dht, cu_seqlens, chunk_offsets, H, K, V, BK, BV, USE_DHT
    )
    n_chunks = tl.cdiv(eos - bos, C)
    for j in range(0, n_chunks):
        i_t = n_chunks - 1 - j
        t0 = bos + i_t * C
        # gradient of this chunk's end state
        tl.store(dh + ((c_base + i_t) * H + i_h) * K * V + kv_offs, b_ds, mask=kv_mask)
        b_q = _load_chunk_rows(q, t0, eos, i_h, 0, H, K, C, BK)
        b_do = _load_chunk_rows(do, t0, eos, i_h, i_v * BV, H, V, C, BV)
        b_k, _beta, gam, g_last, _tm, b_w = _chunk_keys(k, g, beta, tm, t0, eos, i_h, H, K, C, BK, DOT)
        qk = dot(b_q, tl.trans(b_k), DOT) * _decay_matrix(gam, C, False)
        b_kd = b_k * tl.exp(g_last - gam)[:, None]
        b_du = scale * dot(tl.trans(qk), b_do, DOT)
        b_du += dot(b_kd, b_ds, DOT)
        b_ds = tl.exp(g_last) * b_ds - dot(tl.trans(b_w), b_du, DOT)
        b_ds += scale * dot(tl.trans(b_q * tl.exp(gam)[:, None]), b_do, DOT)

    tl.store(dh0 + (i_n * H + i_h) * K * V + kv_offs, b_ds, mask=kv_mask)


@triton.jit
def _backward_local_kernel(
    q, k, v, g, beta, tm, h, dh, do, dq, dk, dv, dg, dbeta, cu_seqlens, chunk_indices, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT: tl.constexpr,
):  # fmt: skip
    i_c, i_h, t0, eos = _chunk_program(cu_seqlens, chunk_indices, C)
    rows = tl.arange(0, C)
    ks = tl.arange(0, BK)

    b_q = _load_chunk_rows(q, t0, eos, i_h, 0, H, K, C, BK)
    b_k = _load_chunk_rows(k, t0, eos, i_h, 0, H, K, C, BK)
    b_beta = _load_chunk_gates(beta, t0, eos, i_h, H, C)
    b_g = _load_chunk_gates(g, t0, eos, i_h, H, C)
    b_tm = _load_chunk_rows(tm, t0, eos, i_h, 0, H, C, C, C)

    gam = tl.cumsum(b_g, 0)
    g_last = tl.sum(b_g, 0)
    e_gam = tl.exp(gam)
    d_incl = _decay_matrix(gam, C, False)
    d_strict = _decay_matrix(gam, C, True)
    kk = dot(b_k, tl.trans(b_k), DOT)
    qk = dot(b_q, tl.trans(b_k), DOT)
    b_kb = b_k * (b_beta * e_gam)[:, None]
    b_w = dot(b_tm, b_kb, DOT)
    decay_end = tl.exp(g_last - gam)
    b_kd = b_k * decay_end[:, None]
    valid = (t0 + rows) < eos

    # the value dimension in blocks of BV (a full K x V tile of S0 and dS1 outgrows shared memory at
    # K = V = 128): accumulate the products that sum over it, store dv block by block
    dou = tl.zeros([C, C], dtype=tl.float32)  # dO U^T
    dos0 = tl.zeros([C, BK], dtype=tl.float32)  # dO S0^T
    qs0_do = tl.zeros([C], dtype=tl.float32)  # rowsum(Q S0 * dO)
    uds = tl.zeros([C, BK], dtype=tl.float32)  # U dS1^T
    s0_ds1 = tl.sum(tl.zeros([C], dtype=tl.float32), 0)  # sum(S0 * dS1)
    b_dw = tl.zeros([C, BK], dtype=tl.float32)  # dL/dW = -dU S0^T
    dvb_ub = tl.zeros([C, C], dtype=tl.float32)  # dVb Ub^T
    dvb_v = tl.zeros([C], dtype=tl.float32)  # rowsum(dVb * V)
    for i_v in range(0, tl.cdiv(V, BV)):
        vs = i_v * BV + tl.arange(0, BV)
        kv_mask = (ks < K)[:, None] & (vs < V)[None, :]
        kv_offs = (i_c * H + i_h) * K * V + ks[:, None] * V + vs[None, :]
        b_v = _load_chunk_rows(v, t0, eos, i_h, i_v * BV, H, V, C, BV)
        b_do = _load_chunk_rows(do, t0, eos, i_h, i_v * BV, H, V, C, BV)
        b_s0 = tl.load(h + kv_offs, mask=kv_mask, other=0.0)
        b_ds1 = tl.load(dh + kv_offs, mask=kv_mask, other=0.0)
        b_ub = dot(b_tm, b_v * b_beta[:, None], DOT)
        b_u = b_ub - dot(b_w, b_s0, DOT)

        # dU from the output and from the chunk's end state
        b_du = scale * dot(tl.trans(qk * d_incl), b_do, DOT)
        b_du += dot(b_kd, b_ds1, DOT)

        dou += dot(b_do, tl.trans(b_u), DOT)
        dos0 += dot(b_do, tl.trans(b_s0), DOT)
        qs0_do += tl.sum(dot(b_q, b_s0, DOT) * b_do, 1)
        uds += dot(b_u, tl.trans(b_ds1), DOT)
        s0_ds1 += tl.sum(tl.sum(b_s0 * b_ds1, 1), 0)
        b_dw -= dot(b_du, tl.trans(b_s0), DOT)
        b_dvb = dot(tl.trans(b_tm), b_du, DOT)
        dvb_ub += dot(b_dvb, tl.trans(b_ub), DOT)
        dvb_v += tl.sum(b_dvb * b_v, 1)
        tv = ((t0 + rows)[:, None] * H + i_h) * V + vs[None, :]
        b_dv = b_dvb * b_beta[:, None]
        tl.store(dv + tv, b_dv.to(dv.dtype.element_ty), mask=valid[:, None] & (vs < V)[None, :])

    # O = scale (E Q S0 + (Q K^T * Dm) U)
    b_dq = scale * e_gam[:, None] * dos0
    b_dq += scale * dot(dou * d_incl, b_k, DOT)
    b_dk = scale * dot(tl.trans(dou * d_incl), b_q, DOT)
    b_dgam = scale * e_gam * qs0_do
    dd = scale * qk * dou

    # S1 = exp(gam_C) S0 + Kd^T U
    b_dk += decay_end[:, None] * uds
    rho = tl.sum(b_kd * uds, 1)
    b_dgam -= rho
    dgam_last = tl.sum(rho, 0) + tl.exp(g_last) * s0_ds1

    # U = Ub - W S0, W = Tm Kb, Ub = Tm Vb, Tm = (I + A)^-1
    b_dkb = dot(tl.trans(b_tm), b_dw, DOT)
    b_da = -dot(b_dkb, tl.trans(b_w), DOT)
    b_da -= dvb_ub
    b_da = tl.where(rows[:, None] > rows[None, :], b_da, 0.0)
    dkb_k = tl.sum(b_dkb * b_k, 1)
    b_dbeta = dvb_v + e_gam * dkb_k
    b_dk += b_dkb * (b_beta * e_gam)[:, None]
    b_dgam += b_beta * e_gam * dkb_k

    # A = strict_tril(diag(beta) (K K^T) * Dm)
    b_dbeta += tl.sum(b_da * d_strict * kk, 1)
    p = b_beta[:, None] * b_da * d_strict
    b_dk += dot(p, b_k, DOT) + dot(tl.trans(p), b_k, DOT)
    dd += b_beta[:, None] * b_da * kk

    # Dm[t, s] = exp(gam_t - gam_s): gradient goes to gam_t and (negated) to gam_s
    z = dd * d_incl
    b_dgam += tl.sum(z, 1) - tl.sum(z, 0)
    b_dgam += tl.where(rows == C - 1, dgam_last, 0.0)
    # gam = cumsum(g): dg_t = sum_{s >= t} dgam_s
    b_dg = tl.sum(b_dgam, 0) - tl.cumsum(b_dgam, 0) + b_dgam

    tk = ((t0 + rows)[:, None] * H + i_h) * K + ks[None, :]
    tk_mask = valid[:, None] & (ks < K)[None, :]
    tl.store(dq + tk, b_dq.to(dq.dtype.element_ty), mask=tk_mask)
    tl.store(dk + tk, b_dk.to(dk.dtype.element_ty), mask=tk_mask)
    tl.store(dg + (t0 + rows) * H + i_h, b_dg.to(dg.dtype.element_ty), mask=valid)
    tl.store(dbeta + (t0 + rows) * H + i_h, b_dbeta.to(dbeta.dtype.element_ty), mask=valid)


# the kernels' loops (over chunks, carrying the state; over value blocks, carrying sums) run one
# iteration after the other, so software pipelining (Triton's default 3 stages) only multiplies shared
# memory: at K = V = 128, C = 64 the forward needs 241 KB with 3 stages and the local backward 288 KB,
# more than an H100's 227 KB; 128 KB and 160 KB with 1 (sm_90, scripts/check_kernels_compile.py)
SEQUENTIAL_STAGES = 1


def _block(d: int) -> int:
    # tl.dot needs every dimension >= 16
    return max(16, triton.next_power_of_2(d))


def _chunk_layout(lengths: list[int], chunk_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """cu_seqlens [N + 1], chunk_indices [NC, 2] (sequence, chunk within it) and chunk_offsets [N + 1]
    (first chunk of each sequence), built on the host from the sequence lengths so no kernel launch
    waits on a device-to-host copy."""
    cu, offsets, indices = [0], [0], []
    for n, length in enumerate(lengths):
        n_chunks = -(-length // chunk_size)
        indices += [(n, i) for i in range(n_chunks)]
        cu.append(cu[-1] + length)
        offsets.append(offsets[-1] + n_chunks)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.int32, device=device)
    return as_tensor(cu), as_tensor(indices).reshape(-1, 2), as_tensor(offsets)


@torch.library.custom_op("memnets::gated_delta_fwd", mutates_args=())
def gated_delta_fwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None,
    cu_seqlens: Tensor, chunk_indices: Tensor, chunk_offsets: Tensor, scale: float, chunk_size: int, dot_code: int,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Packed inputs q, k [T, H, K], v [T, H, V], g, beta [T, H]; returns (o, final_state, Tm rows).
    ``dot_code``: the matmuls' operands (``DOT_PRECISIONS``)."""
    T, H, K = q.shape
    V = v.shape[-1]
    N = cu_seqlens.numel() - 1
    C = chunk_size
    total = chunk_indices.shape[0]
    tm = q.new_empty(T, H, C, dtype=torch.float32)
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, V, dtype=torch.float32)
    BK, BV = _block(K), min(_block(V), 64)
    if total > 0:
        _prepare_kernel[(total, H)](
            k, g, beta, tm, cu_seqlens, chunk_indices, H=H, K=K, C=C, BK=BK, DOT=dot_code
        )
    _forward_kernel[(N, H, triton.cdiv(V, BV))](
        q, k, v, g, beta, tm, initial_state, o, ht, None, cu_seqlens, chunk_offsets, scale,
        H=H, K=K, V=V, C=C, BK=BK, BV=BV,
        USE_H0=initial_state is not None, STORE_O=True, STORE_HT=True, STORE_H=False, DOT=dot_code,
        num_stages=SEQUENTIAL_STAGES,
    )  # fmt: skip
    return o, ht, tm


@gated_delta_fwd.register_fake
def _(q, k, v, g, beta, initial_state, cu_seqlens, chunk_indices, chunk_offsets, scale, chunk_size, dot_code):
    T, H, K = q.shape
    N = cu_seqlens.shape[0] - 1
    o = torch.empty_like(v)
    ht = q.new_empty(N, H, K, v.shape[-1], dtype=torch.float32)
    return o, ht, q.new_empty(T, H, chunk_size, dtype=torch.float32)


@torch.library.custom_op("memnets::gated_delta_bwd", mutates_args=())
def gated_delta_bwd(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial_state: Tensor | None, tm: Tensor,
    do: Tensor, dht: Tensor | None, cu_seqlens: Tensor, chunk_indices: Tensor, chunk_offsets: Tensor,
    scale: float, chunk_size: int, dot_code: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients (dq, dk, dv, dg, dbeta, d_initial_state) of the packed forward."""
    _, H, K = q.shape
    V = v.shape[-1]
    N = cu_seqlens.numel() - 1
    C = chunk_size
    total = chunk_indices.shape[0]
    BK, BV = _block(K), min(_block(V), 64)
    grid = (N, H, triton.cdiv(V, BV))
    # chunk-start states, recomputed rather than kept from the forward pass
    h = q.new_empty(total, H, K, V, dtype=torch.float32)
    _forward_kernel[grid](
        q, k, v, g, beta, tm, initial_state, None, None, h, cu_seqlens, chunk_offsets, scale,
        H=H, K=K, V=V, C=C, BK=BK, BV=BV,
        USE_H0=initial_state is not None, STORE_O=False, STORE_HT=False, STORE_H=True, DOT=dot_code,
        num_stages=SEQUENTIAL_STAGES,
    )  # fmt: skip
    dh = q.new_empty(total, H, K, V, dtype=torch.float32)
    dh0 = q.new_empty(N, H, K, V, dtype=torch.float32)
    _backward_state_kernel[grid](
        q, k, g, beta, tm, do, dht, dh, dh0, cu_seqlens, chunk_offsets, scale,
        H=H, K=K, V=V, C=C, BK=BK, BV=BV, USE_DHT=dht is not None, DOT=dot_code,
        num_stages=SEQUENTIAL_STAGES,
    )  # fmt: skip
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dg, dbeta = torch.empty_like(g), torch.empty_like(beta)
    if total > 0:
        _backward_local_kernel[(total, H)](
            q, k, v, g, beta, tm, h, dh, do, dq, dk, dv, dg, dbeta, cu_seqlens, chunk_indices, scale,
            H=H, K=K, V=V, C=C, BK=BK, BV=BV, DOT=dot_code, num_stages=SEQUENTIAL_STAGES,
        )  # fmt: skip
    return dq, dk, dv, dg, dbeta, dh0


@gated_delta_bwd.register_fake
def _(q, k, v, g, beta, initial_state, tm, do, dht, cu_seqlens, chunk_indices, chunk_offsets, *scalars):
    N = cu_seqlens.shape[0] - 1
    dh0 = q.new_empty(N, q.shape[1], q.shape[2], v.shape[-1], dtype=torch.float32)
    return (
        torch.empty_like(q),
        torch.empty_like(k),
        torch.empty_like(v),
        torch.empty_like(g),
        torch.empty_like(beta),
        dh0,
    )


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, g, beta, initial_state, cu_seqlens, chunk_indices, chunk_offsets, *scalars = inputs
    ctx.save_for_backward(
        q, k, v, g, beta, initial_state, output[2], cu_seqlens, chunk_indices, chunk_offsets
    )
    ctx.scalars = scalars  # scale, chunk_size, dot_code
    ctx.has_h0 = initial_state is not None


def _backward(ctx, do, dht, _dtm):
    q, k, v, g, beta, initial_state, tm, cu_seqlens, chunk_indices, chunk_offsets = ctx.saved_tensors
    dq, dk, dv, dg, dbeta, dh0 = gated_delta_bwd(
        q, k, v, g, beta, initial_state, tm, do.contiguous(),
        None if dht is None else dht.contiguous(), cu_seqlens, chunk_indices, chunk_offsets,
        *ctx.scalars,
    )  # fmt: skip
    return dq, dk, dv, dg, dbeta, (dh0 if ctx.has_h0 else None), None, None, None, None, None, None


torch.library.register_autograd("memnets::gated_delta_fwd", _backward, setup_context=_setup_context)


def triton_gated_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float,
    initial_state: Tensor | None = None, output_final_state: bool = False, cu_seqlens: Tensor | None = None,
    chunk_size: int = 64, dot_precision: str = "auto",
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Triton backend of :func:`memnets.kernels.gated_delta.gated_delta_rule` (arguments already checked
    there); this adds the checks specific to the kernels. ``dot_precision``: the matmuls' operands
    (:mod:`memnets.kernels.precision`; ``"auto"`` follows the inputs' type or autocast's)."""
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(
            f"gated_delta_rule: backend='triton' needs chunk_size a power of two >= 16, got {chunk_size}"
        )
    allowed = (torch.float32, torch.float16, torch.bfloat16)
    if q.dtype not in allowed:
        raise TypeError(f"gated_delta_rule: backend='triton' supports q/k/v dtypes {allowed}, got {q.dtype}")
    if q.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"gated_delta_rule: backend='triton' needs CUDA tensors (got {q.device}); "
            "set TRITON_INTERPRET=1 to run the kernels on CPU"
        )
    B, T, H, _ = q.shape
    if cu_seqlens is None:
        lengths = [T] * B
    else:
        bounds = cu_seqlens.tolist()
        lengths = [e - s for s, e in itertools.pairwise(bounds)]
    layout = _chunk_layout(lengths, chunk_size, q.device)
    packed = [t.reshape(B * T, *t.shape[2:]).contiguous() for t in (q, k, v, g, beta)]
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    o, ht, _ = gated_delta_fwd(
        *packed, h0, *layout, float(scale), int(chunk_size), dot_code_for(dot_precision, q)
    )
    return o.reshape(B, T, H, -1), (ht if output_final_state else None)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
