"""A memory read at the state of its chunk start: TNT's global memory (TNT §4.1.1 Eq. 5, Eq. 7).

Plain gradient descent with large chunks, the write as in the shared engine (every token's gradient
at the chunk-start weights), but the read of token t sees only the weights at the start of its chunk::

    V_{(n+1)C} = V_{nC} − Σ_{t in chunk n} lr_t ∇_V ℓ(M(k_t; V_{nC}), v_t)     (Eq. 5; lr = TNT η_t)
    y_t = M(q_t; V_{ξ(t, C)})                                                  (Eq. 7, global term)

So a chunk costs one read and one key path at fixed weights (compute-bound matmuls, no C×C
"attention" as in the engine's dual form), and only T / C steps are sequential. Decoding keeps the
engine's :class:`~memnets.memory.MemoryState`: ``anchor`` holds the chunk-start weights every token of
an unfinished chunk reads and differentiates at, ``weights`` accumulates the chunk's update, which
becomes visible at the next chunk boundary. No momentum or retention (TNT evaluates plain GD, App. D).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..compiled import chunk_step
from .architecture import MemoryMLP
from .bias import AttentionalBias, L2Bias
from .engine import (
    MemoryState,
    Weights,
    _bhl,
    check_inputs,
    gate_rows,
    gate_units,
    initial_state,
    key_path,
    memory_reference,
)
from .segments import segment_reads, segments


def check_read_inputs(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: MemoryState | None,
    chunk_size: int,
    name: str = "chunk_read_memory",
) -> None:
    """The engine's input checks, and a state without momentum (plain gradient descent)."""
    if state is not None and state.momentum is not None:
        raise ValueError(f"{name}: the state must have no momentum (plain gradient descent)")
    check_inputs(arch, q, k, v, lr, None, None, state, chunk_size, name)


@chunk_step
def read_step(
    arch: MemoryMLP,
    bias: AttentionalBias,
    anchor: Weights,
    W: Weights,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
) -> tuple[Tensor, Weights]:
    """One segment of a chunk (``[B, H, L, ...]`` slices; ``lr [B, H, L]`` or per channel
    ``[B, H, L, N]``): its reads and gradients at the chunk-start weights ``anchor``, and the weights
    ``W`` after its update."""
    y = arch.read(anchor, q)
    kp = key_path(arch, anchor, k, v, bias, None)
    rates = gate_rows(lr, gate_units(arch))
    # Σ_j lr_j u_j with u_j = x_jᵀ δ_j (rank one per token, never materialised; a per-channel lr_j
    # scales δ_j's columns)
    return y, tuple(w - x.transpose(-1, -2) @ (r * d) for w, x, d, r in zip(W, kp.xs, kp.deltas, rates))


def chunk_read_memory(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 2048,
    bias: AttentionalBias | None = None,
) -> tuple[Tensor, MemoryState]:
    """``q, k, v [B, T, H, D]``, ``lr [B, T, H]`` (or per channel ``[B, T, H, N]``, one entry per output
    unit of each weight matrix, :func:`~memnets.memory.engine.gate_units`); returns ``y [B, T, H, D]`` (in ``q``'s dtype) and the
    state after the last token. Runs in ``arch``'s dtype with autocast off, like the engine."""
    check_read_inputs(arch, q, k, v, lr, state, chunk_size)
    bias = bias or L2Bias()
    B, T = q.shape[:2]
    dtype = arch.init_weights[0].dtype
    with torch.autocast(q.device.type, enabled=False):
        qh, kh, vh, lrh = (_bhl(t, dtype) for t in (q, k, v, lr))  # lr: [B, H, T] or [B, H, T, N]
        st = state or initial_state(arch, B, False, dtype)
        W, anchor, offset = st.weights, st.anchor, st.offset
        ys = []
        for seg in segments(T, chunk_size, offset):
            if seg.offset == 0:
                anchor = W
            y, W = read_step(arch, bias, anchor, W, *seg.take(qh, kh, vh, lrh))
            ys.append(y)
        y = segment_reads(ys, vh, q.dtype)
    offset = (offset + T) % chunk_size
    return y, MemoryState(W, None, anchor if offset else None, offset)


def chunk_read_memory_reference(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 2048,
    bias: AttentionalBias | None = None,
) -> tuple[Tensor, MemoryState]:
    """Token by token: read with the chunk-start weights, then write the token with the engine's
    reference (autograd inner gradient). For tests."""
    check_read_inputs(arch, q, k, v, lr, state, chunk_size)
    B, T, H, D = q.shape
    dtype = arch.init_weights[0].dtype
    st = state or initial_state(arch, B, False, dtype)
    ys = []
    for t in range(T):
        sl = slice(t, t + 1)
        read = st.weights if st.offset == 0 else st.anchor
        ys.append(arch.read(read, q[:, sl].transpose(1, 2).to(dtype)).transpose(1, 2))  # type: ignore[arg-type]
        _, st = memory_reference(
            arch, q[:, sl], k[:, sl], v[:, sl], lr[:, sl], state=st, chunk_size=chunk_size, bias=bias
        )
    y = torch.cat(ys, 1) if ys else q.new_zeros(B, 0, H, D)
    return y.to(q.dtype), st
