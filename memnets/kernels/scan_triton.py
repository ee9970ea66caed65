"""Triton kernel for the linear-recurrence scan ``h_t = A_t h_{t-1} + b_t`` of :mod:`memnets.kernels.scan`
(its ``backend="triton"``), diagonal and 2x2 block-diagonal layouts.

One program owns one batch row and a block of BS channels and walks the sequence in tiles of BT steps:
inside a tile ``tl.associative_scan`` combines the affine maps ``(A2, b2) o (A1, b1) = (A2 A1, A2 b1 + b2)``
in log2(BT) levels, then the state carried from the previous tile is pushed through the tile's cumulative
transitions. Past the sequence end the tile is padded with identity maps, so its last row is the carry.
Parallelism is over B x channels (a ParaRNN layer has B x hidden channels, plenty for a GPU).

The backward pass is the adjoint scan run in reverse (``g_t = grad_h_t + A_{t+1}^T g_{t+1}``, the same
kernel with ``REVERSE``), then ``grad_A_t = g_t h_{t-1}^T`` and ``grad_h0 = A_0^T g_0`` elementwise in
PyTorch; only ``a``, ``h0`` and the output are saved. Elementwise work only, so float64 runs too (tests);
float16/bfloat16 are scanned in float32 by the caller. Uses only APIs present in Triton 3.6.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _combine_diag(a1, b1, a2, b2):
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _combine_block(a00, a01, a10, a11, b0, b1, c00, c01, c10, c11, d0, d1):
    # (C, d) applied after (A, b): (C A, C b + d)
    return (
        c00 * a00 + c01 * a10,
        c00 * a01 + c01 * a11,
        c10 * a00 + c11 * a10,
        c10 * a01 + c11 * a11,
        c00 * b0 + c01 * b1 + d0,
        c10 * b0 + c11 * b1 + d1,
    )


@triton.jit
def _last_row(x, BT: tl.constexpr):
    rows = tl.arange(0, BT)
    return tl.sum(tl.where(rows[:, None] == BT - 1, x, 0.0), 0)


@triton.jit
def _scan_kernel(
    a,
    b,
    h0,
    h,
    T,
    S,
    BLOCK: tl.constexpr,
    USE_H0: tl.constexpr,
    REVERSE: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
):
    """a [B, T, P, S] (P = 4 entries a00, a01, a10, a11 of each 2x2 block, or 1), b and h [B, T, Q, S]
    (Q = 2 or 1), h0 [B, Q, S]."""
    i_b = tl.program_id(0)
    i_s = tl.program_id(1)
    chans = i_s * BS + tl.arange(0, BS)
    c_mask = chans < S
    steps = tl.arange(0, BT)
    P: tl.constexpr = 4 if BLOCK else 1
    Q: tl.constexpr = 2 if BLOCK else 1

    carry0 = tl.zeros([BS], dtype=h.dtype.element_ty)
    carry1 = tl.zeros([BS], dtype=h.dtype.element_ty)
    if USE_H0:
        carry0 = tl.load(h0 + i_b * Q * S + chans, mask=c_mask, other=0.0).to(h.dtype.element_ty)
        if BLOCK:
            carry1 = tl.load(h0 + (i_b * Q + 1) * S + chans, mask=c_mask, other=0.0).to(h.dtype.element_ty)

    for t0 in range(0, T, BT):
        t = t0 + steps
        mask = (t < T)[:, None] & c_mask[None, :]
        if REVERSE:
            t = T - 1 - t
        a_ptr = a + ((i_b * T + t)[:, None] * P) * S + chans[None, :]
        b_ptr = b + ((i_b * T + t)[:, None] * Q) * S + chans[None, :]
        h_ptr = h + ((i_b * T + t)[:, None] * Q) * S + chans[None, :]
        b0 = tl.load(b_ptr, mask=mask, other=0.0).to(h.dtype.element_ty)
        if BLOCK:
            a00 = tl.load(a_ptr, mask=mask, other=1.0).to(h.dtype.element_ty)
            a01 = tl.load(a_ptr + S, mask=mask, other=0.0).to(h.dtype.element_ty)
            a10 = tl.load(a_ptr + 2 * S, mask=mask, other=0.0).to(h.dtype.element_ty)
            a11 = tl.load(a_ptr + 3 * S, mask=mask, other=1.0).to(h.dtype.element_ty)
            b1 = tl.load(b_ptr + S, mask=mask, other=0.0).to(h.dtype.element_ty)
            a00, a01, a10, a11, b0, b1 = tl.associative_scan((a00, a01, a10, a11, b0, b1), 0, _combine_block)
            h_0 = a00 * carry0[None, :] + a01 * carry1[None, :] + b0
            h_1 = a10 * carry0[None, :] + a11 * carry1[None, :] + b1
            tl.store(h_ptr, h_0, mask=mask)
            tl.store(h_ptr + S, h_1, mask=mask)
            carry0 = _last_row(h_0, BT)
            carry1 = _last_row(h_1, BT)
        else:
            a0 = tl.load(a_ptr, mask=mask, other=1.0).to(h.dtype.element_ty)
            a0, b0 = tl.associative_scan((a0, b0), 0, _combine_diag)
            h_0 = a0 * carry0[None, :] + b0
            tl.store(h_ptr, h_0, mask=mask)
            carry0 = _last_row(h_0, BT)


def channel_block(S: int, itemsize: int) -> int:
    """Channels per program: 512 bytes' worth (128 float32, 64 float64); the 2x2-block scan of a
    64 x 128 float64 tile needs 384 KB of shared memory on sm_90, more than an H100 has."""
    return min(512 // itemsize, triton.next_power_of_2(S))


def _launch(a: Tensor, b: Tensor, h0: Tensor | None, block: bool, reverse: bool) -> Tensor:
    """a [B, T, P, S], b [B, T, Q, S] contiguous in the compute dtype; returns h like b."""
    B, T, _, S = b.shape
    h = torch.empty_like(b)
    if T == 0:
        return h
    BS = channel_block(S, b.element_size())
    BT = min(64, max(16, triton.next_power_of_2(T)))
    _scan_kernel[(B, triton.cdiv(S, BS))](
        a, b, h0, h, T, S, BLOCK=block, USE_H0=h0 is not None, REVERSE=reverse, BT=BT, BS=BS
    )
    return h


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None, block: bool) -> Tensor:
        h = _launch(a, b, h0, block, reverse=False)
        ctx.block, ctx.has_h0 = block, h0 is not None
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        a, h, h0 = ctx.saved_tensors
        block = ctx.block
        # adjoint transitions A_{t+1}^T at step t (zero after the last step), scanned from the end
        a_t = a[:, :, [0, 2, 1, 3]] if block else a
        a_next = torch.cat([a_t[:, 1:], torch.zeros_like(a_t[:, :1])], 1).contiguous()
        g = _launch(a_next, grad_h.contiguous(), None, block, reverse=True)
        first = h0 if h0 is not None else torch.zeros_like(h[:, 0])
        h_prev = torch.cat([first.unsqueeze(1), h[:, :-1]], 1)
        # grad A[i, j] = g_i h_prev_j, stored row-major as entries 2i + j
        grad_a = (g.unsqueeze(3) * h_prev.unsqueeze(2)).flatten(2, 3) if block else g * h_prev
        grad_h0 = None
        if ctx.has_h0:
            a0, g0 = a_t[:, 0], g[:, 0]
            if block:
                grad_h0 = torch.stack(
                    [a0[:, 0] * g0[:, 0] + a0[:, 1] * g0[:, 1], a0[:, 2] * g0[:, 0] + a0[:, 3] * g0[:, 1]], 1
                )
            else:
                grad_h0 = a0 * g0
        return grad_a, g, grad_h0, None


def triton_linear_scan(a: Tensor, b: Tensor, h0: Tensor | None, block: bool) -> Tensor:
    """``h_t = A_t h_{t-1} + b_t`` forward in time, with the layouts of :func:`memnets.kernels.scan.linear_scan`
    (arguments checked there; float32 or float64; reverse runs are flipped by the caller)."""
    if b.device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(
            f"linear_scan: backend='triton' needs CUDA tensors (got {b.device}); "
            "set TRITON_INTERPRET=1 to run the kernel on CPU"
        )
    B, T = b.shape[:2]
    state = b.shape[2:]
    q = 2 if block else 1
    a_flat = a.reshape(B, T, q * q, -1).contiguous()
    b_flat = b.reshape(B, T, q, -1).contiguous()
    h0_flat = None if h0 is None else h0.reshape(B, q, -1).to(b.dtype).contiguous()
    h = _TritonScan.apply(a_flat, b_flat, h0_flat, block)
    return h.reshape(B, T, *state)
