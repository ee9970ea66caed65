"""Triton kernels of the chunked update of a LINEAR memory with the ℓ2 bias (Titans' LMM with
``memory: {depth: 1}``, arXiv 2501.00663 §3.1-3.2), forward and backward.

Semantics are exactly those of :func:`memnets.memory.memory_chunked` for ``MemoryMLP(depth=1)`` without
LayerNorm (with or without the residual), ``bias=L2Bias()``, per-token per-head ``lr`` (Titans θ_t),
optional ``mom`` (η_t) and ``keep`` (1 − α_t). Per chunk of L tokens of one (sequence, head), with
chunk-start weights W0 and momentum S0 ``[D, D]`` (row form, ``M(x) = x W``)::

    Δ      = 2 (K W0 − V)                                   dℓ/dpred at the chunk-start weights (Titans Eq. 12)
    Y      = β ⊙ (Q W0) + f ⊙ (Q S0) − ((Q Kᵀ) ⊙ G) Δ        every token read with its own W_t
    W_end  = β_L W0 + f_L S0 − Kᵀ (G[L, :]ᵀ ⊙ Δ)        index L = the chunk's last token
    S_end  = m_end S0 − Kᵀ (s_coef ⊙ Δ)

u_j = k_jᵀ Δ_j is token j's inner gradient, so the chunk is linear attention with a two-state carry
(W, S) (the dual form of TTT, arXiv 2407.04620 §2.5, with Titans' momentum and decay, §3.1 Eq. 13-14).
The coefficients β, f, G, m_end, s_coef are those of :func:`memnets.memory.chunk_coefficients`
(segment sums of log-gates, all in [0, 1]); the caller (``memnets.memory.linear_kernel``) computes them
in PyTorch on the gates gathered into whole chunks per sequence (padding past a sequence's end: lr = 0, keep = mom = 1,
so m_end and s_coef are those of the last real token; the kernels take β, f and G's row at the tail
chunk's last real token) and autograd takes their gradients back to lr, mom and keep. The kernels take
and return gradients w.r.t. the coefficients.

Packed sequences (``cu_seqlens``, B = 1, as fla): every sequence has its own initial and final state
``[N, H, D, D]`` and its chunks start at its first token, so no chunk (and no coefficient, which is
built per chunk) spans two sequences. A dense batch runs as B packed sequences of length T; the chunk
layout (each sequence's first packed chunk, the gather index of the gates) is built on the host.

Kernels (grid: one program per (sequence, head), chunks sequential; all math in float32, half inputs
are upcast on load):

1. ``_forward_kernel``: carries (W, S), writes ``y``, the final state and the start weights of the last
   chunk (the engine's ``anchor`` when T is not a multiple of L; the initial weights for an empty
   sequence). With ``STORE`` it instead writes every
   chunk's start state and skips the reads: the backward re-runs it to recompute those states rather than
   keeping them from the forward (memory).
2. ``_backward_kernel``: chunks in reverse, carrying (dW, dS); gives the gradients of q, k, v, every
   coefficient, and the initial state. The inner gradient's dependence on W0 (through Δ) is included.

A linear memory's residual (``M(x) = x + x W``) is handled outside the kernels: it is the same
recurrence with target ``v − k`` and output ``q + y``. The tail chunk of every sequence is masked in
the kernels (q, k, v loaded as 0 past its end, stores masked).

Both passes are ``torch.library`` custom ops (``memnets::linear_memory_fwd`` / ``_bwd``) with fake
implementations (``torch.compile`` traces around them); ``register_autograd`` ties them together.

One program per (sequence, head) holds full D x D tiles (D <= 128), dots in ``dot_precision``, no autotuning;
timings in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .dual_form import inner, update_backward
from .optional import coefficients
from .precision import dot, dot_code_for
from .specs import NetSpec

CHUNK_SIZES = (16, 32, 64)
MAX_DIM = 128
# largest head dim per chunk size whose kernels fit in an H100's 227 KB of shared memory, from the
# sm_90 compile (num_stages=1, scripts/check_kernels_compile.py): the backward needs 192 KB at D=128
# with L=16 or 32 and 128 KB at D=64, L=64; D=128, L=64 would need 352 KB
MAX_DIM_FOR_CHUNK = {16: 128, 32: 128, 64: 64}


@triton.jit
def _rows(bos, t0, h, T, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BD: tl.constexpr):
    """Offsets and mask of rows t0 .. t0+L of head h of the sequence starting at packed row ``bos`` of a
    ``[T_total, H, D]`` tensor (0 past the sequence's length T and past D)."""
    rows = t0 + tl.arange(0, L)
    cols = tl.arange(0, BD)
    mask = (rows < T)[:, None] & (cols < D)[None, :]
    offs = ((bos + rows.to(tl.int64))[:, None] * H + h) * D + cols[None, :]
    return offs, mask


@triton.jit
def _sequence(cu_seqlens, chunk_offsets, L: tl.constexpr):
    """This program's (sequence, head): the sequence's first packed row, length, chunk count and first
    chunk, and the index of its ``[D, D]`` state."""
    i_n = tl.program_id(0)
    h = tl.program_id(1)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    T = (tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    first = tl.load(chunk_offsets + i_n).to(tl.int64)
    state = (i_n * tl.num_programs(1) + h).to(tl.int64)
    return h, bos, T, tl.cdiv(T, L), first, state


@triton.jit
def _square(D: tl.constexpr, BD: tl.constexpr):
    """Offsets and mask of a ``[D, D]`` matrix."""
    r = tl.arange(0, BD)
    return r[:, None] * D + r[None, :], (r < D)[:, None] & (r < D)[None, :]


@triton.jit
def _load_state(w, s, st, D: tl.constexpr, BD: tl.constexpr, HAS_MOM: tl.constexpr):
    """State ``st``'s ``[D, D]`` matrix in ``w`` and its momentum in ``s`` (zeros without momentum)."""
    sq_offs, sq_mask = _square(D, BD)
    W = tl.load(w + st * D * D + sq_offs, mask=sq_mask, other=0.0)
    S = tl.zeros([BD, BD], dtype=tl.float32)
    if HAS_MOM:
        S = tl.load(s + st * D * D + sq_offs, mask=sq_mask, other=0.0)
    return W, S


@triton.jit
def _store_state(w, s, st, W, S, D: tl.constexpr, BD: tl.constexpr, HAS_MOM: tl.constexpr):
    """Store W at state ``st`` of ``w`` and (with momentum) S at that of ``s``."""
    sq_offs, sq_mask = _square(D, BD)
    tl.store(w + st * D * D + sq_offs, W, mask=sq_mask)
    if HAS_MOM:
        tl.store(s + st * D * D + sq_offs, S, mask=sq_mask)


@triton.jit
def _forward_kernel(
    q, k, v, beta, f, G, m_end, s_coef, w_init, s_init,  # inputs, coefficients, initial state
    y, w_final, s_final, w_anchor, w_chunks, s_chunks, cu_seqlens, chunk_offsets, NC,
    H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BD: tl.constexpr,
    HAS_MOM: tl.constexpr, STORE: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    h, bos, T, NCn, first, st = _sequence(cu_seqlens, chunk_offsets, L)
    sq_offs, sq_mask = _square(D, BD)
    W, S = _load_state(w_init, s_init, st, D, BD, HAS_MOM)
    # an empty sequence's anchor is its initial weights (overwritten below by the last chunk's start)
    tl.store(w_anchor + st * D * D + sq_offs, W, mask=sq_mask)
    li = tl.arange(0, L)
    for c in range(NCn):
        cc = h * NC + first + c  # index of this (head, packed chunk) in the coefficients
        if STORE:
            _store_state(w_chunks, s_chunks, cc, W, S, D, BD, HAS_MOM)
        if c == NCn - 1:
            tl.store(w_anchor + st * D * D + sq_offs, W, mask=sq_mask)
        row_offs, mask = _rows(bos, c * L, h, T, H, D, L, BD)
        b_k = tl.load(k + row_offs, mask=mask, other=0.0).to(tl.float32)
        b_v = tl.load(v + row_offs, mask=mask, other=0.0).to(tl.float32)
        delta = 2.0 * (dot(b_k, W, DOT) - b_v)
        if not STORE:
            b_q = tl.load(q + row_offs, mask=mask, other=0.0).to(tl.float32)
            b_beta = tl.load(beta + cc * L + li)
            b_G = tl.load(G + cc * L * L + li[:, None] * L + li[None, :])
            qk = dot(b_q, tl.trans(b_k), DOT) * b_G
            b_y = b_beta[:, None] * dot(b_q, W, DOT)
            b_y -= dot(qk, delta, DOT)
            if HAS_MOM:
                b_f = tl.load(f + cc * L + li)
                b_y += b_f[:, None] * dot(b_q, S, DOT)
            tl.store(y + row_offs, b_y.to(y.dtype.element_ty), mask=mask)
        last = tl.minimum(T - c * L, L) - 1  # the chunk's last token (the tail chunk is short)
        g_last = tl.load(G + cc * L * L + last * L + li)
        beta_last = tl.load(beta + cc * L + last)
        W_new = beta_last * W - dot(tl.trans(b_k), g_last[:, None] * delta, DOT)
        if HAS_MOM:
            f_last = tl.load(f + cc * L + last)
            W_new += f_last * S
            b_s = tl.load(s_coef + cc * L + li)
            S = tl.load(m_end + cc) * S - dot(tl.trans(b_k), b_s[:, None] * delta, DOT)
        W = W_new
    _store_state(w_final, s_final, st, W, S, D, BD, HAS_MOM)


@triton.jit
def _backward_kernel(
    q, k, v, dy, beta, f, G, m_end, s_coef, w_chunks, s_chunks, dw_final, ds_final, dw_anchor,
    dq, dk, dv, dbeta, df, dG, dm_end, ds_coef, dw_init, ds_init, cu_seqlens, chunk_offsets, NC,
    H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BD: tl.constexpr, HAS_MOM: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    h, bos, T, NCn, first, st = _sequence(cu_seqlens, chunk_offsets, L)
    sq_offs, sq_mask = _square(D, BD)
    dW, dS = _load_state(dw_final, ds_final, st, D, BD, HAS_MOM)
    if NCn == 0:  # an empty sequence's anchor is its initial weights
        dW += tl.load(dw_anchor + st * D * D + sq_offs, mask=sq_mask, other=0.0)
    li = tl.arange(0, L)
    for i in range(NCn):
        c = NCn - 1 - i
        cc = h * NC + first + c
        last = tl.minimum(T - c * L, L) - 1  # the chunk's last token (the tail chunk is short)
        is_last = li == last
        W0 = tl.load(w_chunks + cc * D * D + sq_offs, mask=sq_mask, other=0.0)
        row_offs, mask = _rows(bos, c * L, h, T, H, D, L, BD)
        b_q = tl.load(q + row_offs, mask=mask, other=0.0).to(tl.float32)
        b_k = tl.load(k + row_offs, mask=mask, other=0.0).to(tl.float32)
        b_v = tl.load(v + row_offs, mask=mask, other=0.0).to(tl.float32)
        b_dy = tl.load(dy + row_offs, mask=mask, other=0.0).to(tl.float32)
        b_beta = tl.load(beta + cc * L + li)
        b_G = tl.load(G + cc * L * L + li[:, None] * L + li[None, :])
        g_last = tl.load(G + cc * L * L + last * L + li)
        beta_last = tl.load(beta + cc * L + last)

        delta = 2.0 * (dot(b_k, W0, DOT) - b_v)
        qk = dot(b_q, tl.trans(b_k), DOT)
        # reads: Y = β ⊙ (Q W0) [+ f ⊙ (Q S0)] − (QKᵀ ⊙ G) Δ
        dA = -dot(b_dy, tl.trans(delta), DOT)
        d_delta = -dot(tl.trans(qk * b_G), b_dy, DOT)
        dqk = dA * b_G
        b_dG = dA * qk
        b_dq = b_beta[:, None] * dot(b_dy, tl.trans(W0), DOT)
        b_dq += dot(dqk, b_k, DOT)
        b_dk = dot(tl.trans(dqk), b_q, DOT)
        b_dbeta = tl.sum(b_dy * dot(b_q, W0, DOT), 1)
        dW0 = dot(tl.trans(b_q), b_beta[:, None] * b_dy, DOT)
        # chunk end: W_end = β_L W0 [+ f_L S0] − Kᵀ (g_last ⊙ Δ)
        d_delta, b_dk, dg_last = update_backward(d_delta, b_dk, b_k, delta, g_last, dW, DOT)
        dg_last = -dg_last
        dbeta_last = inner(dW, W0)
        dW0 += beta_last * dW
        b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
        b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
        if HAS_MOM:
            S0 = tl.load(s_chunks + cc * D * D + sq_offs, mask=sq_mask, other=0.0)
            b_f = tl.load(f + cc * L + li)
            f_last = tl.load(f + cc * L + last)
            b_m = tl.load(m_end + cc)
            b_s = tl.load(s_coef + cc * L + li)
            b_dq += b_f[:, None] * dot(b_dy, tl.trans(S0), DOT)
            b_df = tl.sum(b_dy * dot(b_q, S0, DOT), 1)
            b_df = tl.where(is_last, b_df + inner(dW, S0), b_df)
            # S_end = m_end S0 − Kᵀ (s_coef ⊙ Δ)
            d_delta, b_dk, b_ds = update_backward(d_delta, b_dk, b_k, delta, b_s, dS, DOT)
            tl.store(dm_end + cc, inner(dS, S0))
            tl.store(df + cc * L + li, b_df)
            tl.store(ds_coef + cc * L + li, -b_ds)
            dS = f_last * dW + b_m * dS + dot(tl.trans(b_q), b_f[:, None] * b_dy, DOT)
        # Δ = 2 (K W0 − V): the inner gradient depends on the chunk-start weights
        b_dk += 2.0 * dot(d_delta, tl.trans(W0), DOT)
        dW0 += 2.0 * dot(tl.trans(b_k), d_delta, DOT)
        if c == NCn - 1:
            dW0 += tl.load(dw_anchor + st * D * D + sq_offs, mask=sq_mask, other=0.0)
        tl.store(dq + row_offs, b_dq.to(dq.dtype.element_ty), mask=mask)
        tl.store(dk + row_offs, b_dk.to(dk.dtype.element_ty), mask=mask)
        tl.store(dv + row_offs, (-2.0 * d_delta).to(dv.dtype.element_ty), mask=mask)
        tl.store(dbeta + cc * L + li, b_dbeta)
        tl.store(dG + cc * L * L + li[:, None] * L + li[None, :], b_dG)
        dW = dW0
    _store_state(dw_init, ds_init, st, dW, dS, D, BD, HAS_MOM)


def _block(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    coef: tuple[Tensor, ...],
    w_init: Tensor,
    s_init: Tensor | None,
    cu_seqlens: Tensor,
    chunk_offsets: Tensor,
    L: int,
    store: bool,
    dot_code: int,
) -> tuple[Tensor, ...]:
    _, H, D = q.shape
    N = w_init.shape[0]
    NC = coef[0].shape[1]
    has_mom = s_init is not None
    y = w_init.new_empty(q.shape if not store else (0,))  # float32: the residual is added outside
    w_final = torch.empty_like(w_init)
    s_final = torch.empty_like(w_init) if has_mom else w_init.new_empty(0)
    w_anchor = torch.empty_like(w_init)
    w_chunks = w_init.new_empty((H, NC, D, D) if store else (0,))
    s_chunks = w_init.new_empty((H, NC, D, D) if store and has_mom else (0,))
    _forward_kernel[(N, H)](
        q, k, v, *coef, w_init, w_init if s_init is None else s_init,
        y, w_final, s_final, w_anchor, w_chunks, s_chunks, cu_seqlens, chunk_offsets, NC,
        H=H, D=D, L=L, BD=_block(D), HAS_MOM=has_mom, STORE=store, DOT=dot_code,
        num_stages=1,  # the chunk loop is a sequential recurrence: multi-buffering only costs shared memory
    )  # fmt: skip
    return y, w_final, s_final, w_anchor, w_chunks, s_chunks


@torch.library.custom_op("memnets::linear_memory_fwd", mutates_args=())
def linear_memory_fwd(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, f: Tensor, G: Tensor, m_end: Tensor, s_coef: Tensor,
    w_init: Tensor, s_init: Tensor | None, cu_seqlens: Tensor, chunk_offsets: Tensor, chunk_size: int,
    dot_code: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Packed ``q, k, v [T, H, D]`` holding N sequences (``cu_seqlens [N + 1]``, sequence n's chunks
    start at packed chunk ``chunk_offsets[n]``), coefficients ``[H, NC, L(, L)]`` float32 over the NC
    packed chunks (f, m_end, s_coef empty without momentum), per-sequence states ``[N, H, D, D]``
    float32. Returns (y float32, W_final, S_final (empty without momentum), each sequence's last chunk's
    start weights (its initial weights if it is empty))."""
    coef = (beta, f, G, m_end, s_coef)
    out = _forward(q, k, v, coef, w_init, s_init, cu_seqlens, chunk_offsets, chunk_size, False, dot_code)
    y, w_final, s_final, w_anchor, _, _ = out
    return y, w_final, s_final, w_anchor


@linear_memory_fwd.register_fake
def _(q, k, v, beta, f, G, m_end, s_coef, w_init, s_init, cu_seqlens, chunk_offsets, chunk_size, dot_code):
    return (
        w_init.new_empty(q.shape),
        torch.empty_like(w_init),
        torch.empty_like(w_init) if s_init is not None else w_init.new_empty(0),
        torch.empty_like(w_init),
    )


@torch.library.custom_op("memnets::linear_memory_bwd", mutates_args=())
def linear_memory_bwd(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, f: Tensor, G: Tensor, m_end: Tensor, s_coef: Tensor,
    w_init: Tensor, s_init: Tensor | None, cu_seqlens: Tensor, chunk_offsets: Tensor,
    dy: Tensor, dw_final: Tensor, ds_final: Tensor, dw_anchor: Tensor, chunk_size: int, dot_code: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gradients (q, k, v, beta, f, G, m_end, s_coef, w_init, s_init) of :func:`linear_memory_fwd`
    (empty for the momentum ones without momentum)."""
    L = chunk_size
    _, H, D = q.shape
    N = w_init.shape[0]
    NC = beta.shape[1]
    has_mom = s_init is not None
    coef = (beta, f, G, m_end, s_coef)
    _, _, _, _, w_chunks, s_chunks = _forward(
        q, k, v, coef, w_init, s_init, cu_seqlens, chunk_offsets, L, True, dot_code
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dbeta, dG = torch.empty_like(beta), torch.empty_like(G)
    df, dm_end, ds_coef = torch.empty_like(f), torch.empty_like(m_end), torch.empty_like(s_coef)
    dw_init = torch.empty_like(w_init)
    ds_init = torch.empty_like(w_init) if has_mom else w_init.new_empty(0)
    _backward_kernel[(N, H)](
        q, k, v, dy, *coef, w_chunks, s_chunks, dw_final, ds_final, dw_anchor,
        dq, dk, dv, dbeta, df, dG, dm_end, ds_coef, dw_init, ds_init, cu_seqlens, chunk_offsets, NC,
        H=H, D=D, L=L, BD=_block(D), HAS_MOM=has_mom, DOT=dot_code, num_stages=1,
    )  # fmt: skip
    return dq, dk, dv, dbeta, df, dG, dm_end, ds_coef, dw_init, ds_init


@linear_memory_bwd.register_fake
def _(q, k, v, beta, f, G, m_end, s_coef, w_init, s_init, *_):
    ds_init = torch.empty_like(w_init) if s_init is not None else w_init.new_empty(0)
    grads = (q, k, v, beta, f, G, m_end, s_coef, w_init)
    return (*(torch.empty_like(t) for t in grads), ds_init)


def _setup_context(ctx, inputs, output) -> None:
    *tensors, chunk_size, dot_code = inputs
    ctx.has_mom = tensors[9] is not None
    ctx.save_for_backward(*tensors)
    ctx.chunk_size, ctx.dot_code = chunk_size, dot_code


def _backward(ctx, dy, dw_final, ds_final, dw_anchor):
    q, k, v, beta, f, G, m_end, s_coef, w_init, s_init, cu_seqlens, chunk_offsets = ctx.saved_tensors

    def cot(t: Tensor | None, like: Tensor) -> Tensor:
        return torch.zeros_like(like) if t is None else t.contiguous()

    grads = linear_memory_bwd(
        q, k, v, beta, f, G, m_end, s_coef, w_init, s_init, cu_seqlens, chunk_offsets,
        cot(dy, q).float(), cot(dw_final, w_init),
        cot(ds_final, w_init) if ctx.has_mom else w_init.new_zeros(0), cot(dw_anchor, w_init),
        ctx.chunk_size, ctx.dot_code,
    )  # fmt: skip
    dq, dk, dv, dbeta, df, dG, dm_end, ds_coef, dw_init, ds_init = grads
    if not ctx.has_mom:
        df = dm_end = ds_coef = ds_init = None
    return dq, dk, dv, dbeta, df, dG, dm_end, ds_coef, dw_init, ds_init, None, None, None, None


torch.library.register_autograd("memnets::linear_memory_fwd", _backward, setup_context=_setup_context)


def supports(memory: NetSpec, chunk_size: int | None = None) -> str | None:
    """``None`` when the kernel covers this memory (with the ℓ2 bias) and chunk size, else the reason."""
    if chunk_size is not None and chunk_size not in CHUNK_SIZES:
        return f"chunk_size {chunk_size} (the Triton kernel covers chunk sizes {list(CHUNK_SIZES)})"
    if memory.depth != 1:
        return f"memory depth {memory.depth} (the Triton kernel covers the linear memory, depth 1)"
    if memory.layer_norm:
        return "a memory LayerNorm (the Triton kernel covers the linear memory without LayerNorm)"
    if memory.d_out > MAX_DIM:
        return f"head dim {memory.d_out} (the Triton kernel covers head dims up to {MAX_DIM})"
    if chunk_size is not None and memory.d_out > MAX_DIM_FOR_CHUNK[chunk_size]:
        return (
            f"head dim {memory.d_out} with chunk_size {chunk_size} (its backward exceeds the GPU's shared "
            f"memory; use a smaller chunk size or head dim <= {MAX_DIM_FOR_CHUNK[chunk_size]})"
        )
    if memory.dtype != torch.float32:
        return f"memory dtype {memory.dtype} (the Triton kernel runs in float32)"
    return None


def linear_memory_chunked(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, f: Tensor | None, G: Tensor, m_end: Tensor | None,
    s_coef: Tensor | None, w_init: Tensor, s_init: Tensor | None, cu_seqlens: Tensor, chunk_offsets: Tensor,
    chunk_size: int, dot_precision: str = "auto",
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:  # fmt: skip
    """The chunked update of a linear memory, forward and (through autograd) backward.

    Args:
        q, k, v: packed ``[T, H, D]`` holding N sequences (``cu_seqlens [N + 1]``; sequence n's chunks
            start at packed chunk ``chunk_offsets[n]``, see :func:`memnets.kernels.packing.chunk_layout`).
        beta, f, G, m_end, s_coef: the coefficients ``[H, NC, L(, L)]`` float32 over the NC packed
            chunks (f, m_end, s_coef ``None`` without momentum).
        w_init, s_init: each sequence's state ``[N, H, D, D]`` float32 (``s_init`` ``None`` without
            momentum).
        chunk_size: L, one of ``CHUNK_SIZES``.
        dot_precision: the matmuls' operands (:mod:`memnets.kernels.precision`; ``"auto"``: half for
            half ``q`` or under autocast, else ``"tf32x3"``); state and accumulation stay float32.

    Returns:
        ``y`` float32 ``[T, H, D]``, the final weights and momentum (``None`` without momentum), and
        each sequence's last chunk's start weights (its initial weights if it is empty).
    """
    y, w_final, s_final, w_anchor = linear_memory_fwd(
        q, k, v, *coefficients(beta, f, G, m_end, s_coef), w_init, s_init, cu_seqlens, chunk_offsets,
        chunk_size, dot_code_for(dot_precision, q),
    )  # fmt: skip
    return y, w_final, None if s_init is None else s_final, w_anchor
