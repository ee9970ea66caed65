"""Linear-recurrence scan ``h_t = A_t h_{t-1} + b_t``: the inner solver of ParaRNN's Newton iterations
(ParaRNN, arXiv 2510.21450 §2, Algorithm 1b: the bidiagonal system of each Newton step) and of its
implicit backward (the adjoint recursion, §2 Eq. 2.6).

Layouts (time is always dim 1, any batch/channel dims after it):

* diagonal: ``a [B, T, *S]``, ``b [B, T, *S]``, ``h0 [B, *S]`` — every channel is an independent 1-D
  recurrence (ParaGRU, diagonal SSMs).
* 2x2 block-diagonal, component-major: ``a [B, T, 2, 2, *S]``, ``b [B, T, 2, *S]``, ``h0 [B, 2, *S]``
  — every channel holds a 2-vector updated by its own 2x2 matrix,
  ``h_t[:, i, s] = sum_j a_t[:, i, j, s] h_{t-1}[:, j, s] + b_t[:, i, s]`` (ParaLSTM: ``i = 0`` is ``c``,
  ``i = 1`` is ``h``). The 2x2 indices come before the channels so each matrix entry is a slice that
  is contiguous over channels (cheap to split and stack; coalesced on GPUs). The layout is told apart
  from the diagonal one by ``a.dim() == b.dim() + 1``.

``reverse=True`` runs the recurrence backwards in time, ``h_t = A_t h_{t+1} + b_t`` from ``t = T - 1``
down to 0, with ``h0`` the state "after" the end (``h_T``); this is the adjoint recurrence of the
backward pass once the caller has shifted and transposed the matrices.

Backends (the signature is shared by every backend and stays stable):

* ``"reference"``: the token-by-token loop; autograd differentiates through it.
* ``"chunked"``: a two-level associative scan in PyTorch. Inside chunks of ``chunk_size`` steps a
  Hillis-Steele recursive doubling (log2(chunk_size) steps over the whole tensor) combines the affine
  maps ``(A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2)``; the chunk totals are scanned by the same routine
  recursively, and each chunk then adds its incoming state. Depth O(log T), work O(T log chunk_size);
  small chunks (the default 8) do the least work on CPUs.
  Its backward is itself one reverse scan (``grad_b_t = grad_h_t + A_{t+1}^T grad_b_{t+1}``,
  ``grad_A_t = grad_b_t h_{t-1}^T``), so only ``a``, ``h0`` and the output are saved.
* ``"triton"``: :mod:`memnets.kernels.scan_triton` (CUDA, or TRITON_INTERPRET=1 on CPU); ``chunk_size``
  is ignored there (the kernel picks its own tile).

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
    chunk_size: int = 8,
) -> Tensor:
    """Solve ``h_t = a_t h_{t-1} + b_t`` (``h_{-1} = h0``, zero when ``None``) for every ``t``.

    Returns ``h`` with the shape of ``b``. See the module docstring for layouts and backends."""
    block = _check(a, b, h0, backend, chunk_size)
    out_dtype = b.dtype
    if b.dtype in (torch.float16, torch.bfloat16):
        a, b = a.float(), b.float()
        h0 = h0.float() if h0 is not None else None
    if reverse:
        a, b = a.flip(1), b.flip(1)
    if backend == "reference":
        h = _scan_loop(a, b, h0, block)
    elif backend == "triton":
        from .scan_triton import triton_linear_scan

        h = triton_linear_scan(a, b, h0, block)
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
    elif (
        a.dim() == b.dim() + 1
        and b.dim() >= 3
        and b.shape[2] == 2
        and a.shape == (*b.shape[:3], 2, *b.shape[3:])
    ):
        block = True
    else:
        raise ValueError(
            f"linear_scan: a of shape {tuple(a.shape)} does not fit b of shape {tuple(b.shape)}; allowed: "
            "a.shape == b.shape (diagonal) or a = [B, T, 2, 2, *S] with b = [B, T, 2, *S] (2x2 blocks)"
        )
    state_shape = (b.shape[0], *b.shape[2:])
    if h0 is not None and tuple(h0.shape) != state_shape:
        raise ValueError(f"linear_scan: h0 has shape {tuple(h0.shape)}, expected {state_shape}")
    return block


def _apply(a: Tensor, h: Tensor, block: bool) -> Tensor:
    """``a h`` for one step of the reference loop (``a [B, 2, 2, *S]``, ``h [B, 2, *S]`` for blocks)."""
    return (a * h.unsqueeze(1)).sum(2) if block else a * h


def _scan_loop(a: Tensor, b: Tensor, h0: Tensor | None, block: bool) -> Tensor:
    h = h0 if h0 is not None else b.new_zeros(b.shape[0], *b.shape[2:])
    out = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):  # not a[:, t]: its backward would be O(T^2)
        h = _apply(a_t, h, block) + b_t
        out.append(h)
    return torch.stack(out, 1)


# The chunked scan works on lists of component tensors, so every combine is a few elementwise ops:
# diagonal a = [a], b = [b]; 2x2 blocks a = [a00, a01, a10, a11], b = [b0, b1].
Parts = list[Tensor]


def _split(x: Tensor, block: bool, matrix: bool, dim: int) -> Parts:
    """Components of a block tensor whose 2 (or 2x2) indices start at ``dim``."""
    if not block:
        return [x]
    if matrix:
        return [x.select(dim, i).select(dim, j) for i in (0, 1) for j in (0, 1)]
    return [x.select(dim, i) for i in (0, 1)]


def _join(h: Parts, dim: int) -> Tensor:
    return h[0] if len(h) == 1 else torch.stack(h, dim)


def _apply_parts(a: Parts, h: Parts) -> Parts:
    if len(a) == 1:
        return [a[0] * h[0]]
    return [a[0] * h[0] + a[1] * h[1], a[2] * h[0] + a[3] * h[1]]


def _compose_parts(a2: Parts, a1: Parts) -> Parts:
    """``a2 a1``: the transition of applying ``a1`` and then ``a2``."""
    if len(a2) == 1:
        return [a2[0] * a1[0]]
    return [
        a2[0] * a1[0] + a2[1] * a1[2],
        a2[0] * a1[1] + a2[1] * a1[3],
        a2[2] * a1[0] + a2[3] * a1[2],
        a2[2] * a1[1] + a2[3] * a1[3],
    ]


def _transpose_parts(a: Parts) -> Parts:
    return a if len(a) == 1 else [a[0], a[2], a[1], a[3]]


def _hillis_steele(a: Parts, b: Parts, dim: int) -> tuple[Parts, Parts]:
    """Inclusive scan of the affine maps along ``dim`` by recursive doubling: returns the cumulative
    transitions ``a_t ... a_0`` and the states ``h_t`` from a zero initial state. Runs without autograd
    and updates private copies in place (one copy up front instead of one ``cat`` per level)."""
    a = [x.clone() for x in a]
    b = [x.clone() for x in b]
    n = a[0].shape[dim]
    step = 1
    while step < n:
        a_cur = [x.narrow(dim, step, n - step) for x in a]
        a_prev = [x.narrow(dim, 0, n - step) for x in a]
        b_new = _apply_parts(a_cur, [x.narrow(dim, 0, n - step) for x in b])
        a_new = _compose_parts(a_cur, a_prev) if 2 * step < n or dim == 2 else None
        for x, y in zip(b, b_new):
            x.narrow(dim, step, n - step).add_(y)
        if a_new is not None:  # the last level's transitions are only needed for chunk carries
            for x, y in zip(a, a_new):
                x.narrow(dim, step, n - step).copy_(y)
        step *= 2
    return a, b


def _scan_chunked(a: Parts, b: Parts, chunk: int) -> Parts:
    """States from a zero initial state, time on dim 1."""
    T = b[0].shape[1]
    if chunk >= T:
        return _hillis_steele(a, b, 1)[1]
    n = math.ceil(T / chunk)
    pad = n * chunk - T

    def to_chunks(x: Tensor) -> Tensor:
        if pad:  # padding sits after the last real step, so it never reaches a returned state
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], 1)
        return x.reshape(x.shape[0], n, chunk, *x.shape[2:])

    A, h = _hillis_steele([to_chunks(x) for x in a], [to_chunks(x) for x in b], 2)
    ends = _scan_chunked([x[:, :, -1] for x in A], [x[:, :, -1] for x in h], chunk)  # state at chunk ends
    incoming = [x[:, :-1].unsqueeze(2) for x in ends]
    for x, y in zip(h, _apply_parts([x[:, 1:] for x in A], incoming)):
        x[:, 1:].add_(y)  # chunk 0 starts from the zero state
    return [x.reshape(x.shape[0], n * chunk, *x.shape[3:])[:, :T] for x in h]


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, block: bool, chunk: int) -> Tensor:
        ap, bp = _split(a, block, True, 2), _split(b, block, False, 2)
        if h0 is not None:  # fold the initial state into the first input
            first = _apply_parts([x[:, 0] for x in ap], _split(h0, block, False, 1))
            bp = [torch.cat([(x[:, 0] + y).unsqueeze(1), x[:, 1:]], 1) for x, y in zip(bp, first)]
        h = _join(_scan_chunked(ap, bp, chunk), 2)
        ctx.block, ctx.chunk, ctx.has_h0 = block, chunk, h0 is not None
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        block, chunk = ctx.block, ctx.chunk
        ap = _split(a, block, True, 2)
        # adjoint: g_t = grad_h_t + a_{t+1}^T g_{t+1}, a reverse scan with the transitions shifted by one
        a_next = [torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], 1).flip(1) for x in _transpose_parts(ap)]
        g = _scan_chunked(a_next, [x.flip(1) for x in _split(grad_h, block, False, 2)], chunk)
        g = [x.flip(1) for x in g]
        grad_a = grad_h0 = None
        if ctx.needs_input_grad[0]:
            first = h0 if h0 is not None else torch.zeros_like(h[:, 0])
            h_prev = torch.cat([first.unsqueeze(1), h[:, :-1]], 1)
            grad_a = _join(g, 2).unsqueeze(3) * h_prev.unsqueeze(2) if block else g[0] * h_prev
        if ctx.has_h0 and ctx.needs_input_grad[2]:
            grad_h0 = _join(_apply_parts(_transpose_parts([x[:, 0] for x in ap]), [x[:, 0] for x in g]), 1)
        return grad_a, _join(g, 2), grad_h0, None, None
