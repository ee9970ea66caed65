"""Linear-recurrence scan ``h_t = A_t h_{t-1} + b_t``: the inner solver of ParaRNN's Newton iterations
(spec mom-pararnn.md B.4) and of its implicit backward (B.6).

Layouts (time is always dim 1, any batch/channel dims after it):

* diagonal: ``a [B, T, *S]``, ``b [B, T, *S]``, ``h0 [B, *S]`` — every channel is an independent 1-D
  recurrence (ParaGRU, diagonal SSMs).
* 2x2 block-diagonal: ``a [B, T, *S, 2, 2]``, ``b [B, T, *S, 2]``, ``h0 [B, *S, 2]`` — every channel
  holds a 2-vector updated by its own 2x2 matrix, ``h_t[..., i] = sum_j a_t[..., i, j] h_{t-1}[..., j]
  + b_t[..., i]`` (ParaLSTM with the channel state ``(c, h)``). The layout is told apart from the
  diagonal one by ``a.dim() == b.dim() + 1``.

``reverse=True`` runs the recurrence backwards in time, ``h_t = A_t h_{t+1} + b_t`` from ``t = T - 1``
down to 0, with ``h0`` the state "after" the end (``h_T``); this is the adjoint recurrence of the
backward pass once the caller has shifted and transposed the matrices.

Backends (the signature is shared by every backend and stays stable):

* ``"reference"``: the token-by-token loop; autograd differentiates through it.
* ``"chunked"``: a two-level associative scan in PyTorch. Inside chunks of ``chunk_size`` steps a
  Hillis-Steele recursive doubling (log2(chunk_size) steps over the whole tensor) combines the affine
  maps ``(A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2)``; the chunk totals are scanned by the same routine
  recursively, and each chunk then adds its incoming state. Depth O(log T), work O(T log chunk_size).
  Its backward is itself one reverse scan (``grad_b_t = grad_h_t + A_{t+1}^T grad_b_{t+1}``,
  ``grad_A_t = grad_b_t h_{t-1}^T``), so only ``a``, ``h0`` and the output are saved.
* ``"triton"``: reserved for the Triton kernel (same signature); not implemented on this branch.

float16/bfloat16 inputs are scanned in float32 and the result cast back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SCAN_BACKENDS: tuple[str, ...] = ("reference", "chunked", "triton")


def linear_scan(
    a: Tensor,
    b: Tensor,
    h0: Tensor | None = None,
    reverse: bool = False,
    backend: str = "chunked",
    chunk_size: int = 64,
) -> Tensor:
    """Solve ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = h0``, zero when ``None``) for every ``t``.

    Returns ``h`` with the shape of ``b``. See the module docstring for layouts and backends."""
    block = _check(a, b, h0, backend, chunk_size)
    if backend == "triton":
        raise NotImplementedError(
            "linear_scan: backend='triton' is not implemented yet (kernel issue); "
            "use backend='chunked' or 'reference'"
        )
    out_dtype = b.dtype
    if b.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
        h0 = h0.float() if h0 is not None else None
    if reverse:
        a, b = a.flip(1), b.flip(1)
    if backend == "reference":
        h = _scan_loop(a, b, h0, block)
    else:
        h = _ChunkedScan.apply(a, b, h0, block, chunk_size)
    if reverse:
        h = h.flip(1)
    return h.to(out_dtype)


def _check(a: Tensor, b: Tensor, h0: Tensor | None, backend: str, chunk_size: int) -> bool:
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"linear_scan: backend={backend!r} is not one of {list(SCAN_BACKENDS)}")
    if chunk_size < 2:
        raise ValueError(f"linear_scan: chunk_size must be >= 2, got {chunk_size}")
    if b.dim() < 2:
        raise ValueError(f"linear_scan: b must be [B, T, ...], got shape {tuple(b.shape)}")
    if a.shape == b.shape:
        block = False
    elif a.dim() == b.dim() + 1 and b.shape[-1] == 2 and a.shape == (*b.shape, 2):
        block = True
    else:
        raise ValueError(
            f"linear_scan: a of shape {tuple(a.shape)} does not fit b of shape {tuple(b.shape)}; "
            "allowed: a.shape == b.shape (diagonal) or a = [..., n, 2, 2] with b = [..., n, 2] (2x2 blocks)"
        )
    state_shape = (b.shape[0], *b.shape[2:])
    if h0 is not None and tuple(h0.shape) != state_shape:
        raise ValueError(f"linear_scan: h0 has shape {tuple(h0.shape)}, expected {state_shape}")
    return block


def _apply(a: Tensor, h: Tensor, block: bool) -> Tensor:
    """``a h`` for one step: elementwise for diagonal, a batched 2x2 matrix-vector product for blocks
    (written as broadcast-and-sum: torch's batched matmul is slow for 2x2 matrices)."""
    return (a * h.unsqueeze(-2)).sum(-1) if block else a * h


def _compose(a2: Tensor, a1: Tensor, block: bool) -> Tensor:
    """``a2 a1``: the transition of applying ``a1`` and then ``a2``."""
    return (a2.unsqueeze(-1) * a1.unsqueeze(-3)).sum(-2) if block else a2 * a1


def _transpose(a: Tensor, block: bool) -> Tensor:
    return a.transpose(-1, -2) if block else a


def _scan_loop(a: Tensor, b: Tensor, h0: Tensor | None, block: bool) -> Tensor:
    h = h0 if h0 is not None else b.new_zeros(b.shape[0], *b.shape[2:])
    out = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):  # not a[:, t]: its backward would be O(T^2)
        h = _apply(a_t, h, block) + b_t
        out.append(h)
    return torch.stack(out, 1)


def _hillis_steele(a: Tensor, b: Tensor, block: bool, dim: int) -> tuple[Tensor, Tensor]:
    """Inclusive scan of the affine maps along ``dim`` by recursive doubling: returns the cumulative
    transitions ``a_t ... a_0`` and the states ``h_t`` from a zero initial state."""
    n = a.shape[dim]
    step = 1
    while step < n:
        a_cur, b_cur = a.narrow(dim, step, n - step), b.narrow(dim, step, n - step)
        a_prev, b_prev = a.narrow(dim, 0, n - step), b.narrow(dim, 0, n - step)
        b = torch.cat([b.narrow(dim, 0, step), _apply(a_cur, b_prev, block) + b_cur], dim)
        a = torch.cat([a.narrow(dim, 0, step), _compose(a_cur, a_prev, block)], dim)
        step *= 2
    return a, b


def _scan_chunked(a: Tensor, b: Tensor, block: bool, chunk: int) -> Tensor:
    """States from a zero initial state, time on dim 1."""
    T = b.shape[1]
    if chunk >= T:
        return _hillis_steele(a, b, block, 1)[1]
    n = math.ceil(T / chunk)
    pad = n * chunk - T
    if pad:
        # padding sits after the last real step, so its values never reach a returned state
        a = torch.cat([a, a.new_zeros(a.shape[0], pad, *a.shape[2:])], 1)
        b = torch.cat([b, b.new_zeros(b.shape[0], pad, *b.shape[2:])], 1)
    a = a.reshape(a.shape[0], n, chunk, *a.shape[2:])
    b = b.reshape(b.shape[0], n, chunk, *b.shape[2:])
    A, h = _hillis_steele(a, b, block, 2)
    ends = _scan_chunked(A[:, :, -1], h[:, :, -1], block, chunk)  # state at the end of each chunk
    incoming = torch.cat([torch.zeros_like(ends[:, :1]), ends[:, :-1]], 1)
    h = h + _apply(A, incoming.unsqueeze(2), block)
    return h.reshape(h.shape[0], n * chunk, *h.shape[3:])[:, :T]


def _scan_with_h0(a: Tensor, b: Tensor, h0: Tensor | None, block: bool, chunk: int) -> Tensor:
    if h0 is not None:
        b = torch.cat([(b[:, 0] + _apply(a[:, 0], h0, block)).unsqueeze(1), b[:, 1:]], 1)
    return _scan_chunked(a, b, block, chunk)


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, block: bool, chunk: int) -> Tensor:
        h = _scan_with_h0(a, b, h0, block, chunk)
        ctx.block, ctx.chunk, ctx.has_h0 = block, chunk, h0 is not None
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        block, chunk = ctx.block, ctx.chunk
        # adjoint: g_t = grad_h_t + a_{t+1}^T g_{t+1}, a reverse scan with the transitions shifted by one
        a_next = torch.cat([_transpose(a[:, 1:], block), torch.zeros_like(a[:, :1])], 1)
        g = _scan_chunked(a_next.flip(1), grad_h.flip(1), block, chunk).flip(1)
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            first = h0 if h0 is not None else torch.zeros_like(h[:, 0])
            h_prev = torch.cat([first.unsqueeze(1), h[:, :-1]], 1)
            grad_a = g.unsqueeze(-1) * h_prev.unsqueeze(-2) if block else g * h_prev
        if ctx.has_h0 and ctx.needs_input_grad[2]:
            grad_h0 = _apply(_transpose(a[:, 0], block), g[:, 0], block)
        return grad_a, g, grad_h0, None, None
