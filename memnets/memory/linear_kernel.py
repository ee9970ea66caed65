"""The linear memory's kernel entry point (Titans arXiv 2501.00663 §3.1 with a depth-1 memory, the ℓ2
bias): :func:`titans_linear_chunked`, a drop-in for :func:`memnets.memory.memory_chunked` that runs
:mod:`memnets.kernels.linear_memory`, and :func:`supports_linear`, the reason a configuration does not
run (``None`` when it does). Built on :mod:`memnets.memory.kernel_bridge`'s helpers."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..kernels import linear_memory
from ..kernels.packing import chunk_layout, sequence_lengths
from . import MemoryMLP, MemoryState, check_inputs, finish_chunk_then
from .kernel_bridge import (
    _bias_spec,
    _check_boundary,
    _coefficients,
    _dot_precision,
    _net_spec,
    _sequence_states,
    _tile_gate,
)


def supports_linear(arch: MemoryMLP, bias: object = None, chunk_size: int | None = None) -> str | None:
    """``None`` when the linear-memory kernel covers this memory, bias and chunk size, else the reason
    (:func:`memnets.kernels.linear_memory.supports`)."""
    spec = _bias_spec(bias)
    if spec is None or spec.kind != "l2":
        return f"attentional bias {bias!r} (the Triton kernel covers L2Bias only)"
    return linear_memory.supports(_net_spec(arch), chunk_size)


def titans_linear_chunked(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 16,
    cu_seqlens: Tensor | None = None,
    dot_precision: str = "auto",
) -> tuple[Tensor, MemoryState | list[MemoryState]]:
    """Drop-in for ``memory_chunked(arch, q, k, v, lr, mom, keep, state, chunk_size=chunk_size)`` with
    the L2 bias, for a linear ``arch`` (depth 1, no LayerNorm, residual allowed; see
    :func:`supports_linear`). Same shapes and
    state: ``q, k, v [B, T, H, D]``, gates ``[B, T, H]``; returns ``y`` in ``q``'s dtype and the
    :class:`MemoryState` after the last token (float32).

    ``cu_seqlens`` (``[N + 1]`` int32/int64 offsets, B = 1) packs N independent sequences: each starts
    from its own state (``state`` holds ``[N, H, D, D]`` weights and momentum at a chunk boundary;
    default the learned initial weights) and its chunks restart at its first token, so the result is
    ``memory_chunked`` run on every sequence alone. The state returned is then the list of the N
    sequences' final states (each ``[1, H, D, D]``, continuing its sequence exactly). ``dot_precision``:
    the matmuls' operands, as for :func:`titans_mlp_chunked`."""
    dot_precision = _dot_precision("titans_linear_chunked", dot_precision, q)
    reason = supports_linear(arch, chunk_size=chunk_size if chunk_size in linear_memory.CHUNK_SIZES else None)
    if reason is not None:
        raise ValueError(f"titans_linear_chunked: unsupported configuration: {reason}")
    if chunk_size not in linear_memory.CHUNK_SIZES:
        raise ValueError(
            f"titans_linear_chunked: chunk_size must be one of {linear_memory.CHUNK_SIZES}, got {chunk_size}"
        )
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size, "titans_linear_chunked")
    lengths = sequence_lengths("titans_linear_chunked", q, cu_seqlens)
    _check_boundary(
        "titans_linear_chunked", None if cu_seqlens is None else lengths, 0 if state is None else state.offset
    )
    if state is not None and state.offset > 0:
        return finish_chunk_then(
            functools.partial(titans_linear_chunked, dot_precision=dot_precision),
            arch, q, k, v, lr, mom, keep, state, chunk_size=chunk_size,
        )  # fmt: skip
    B, T, H, D = q.shape
    N = len(lengths)
    if state is None:
        w_init = arch.init_weights[0][None].expand(N, H, D, D)
        s_init = torch.zeros(N, H, D, D, device=q.device) if mom is not None else None
    else:
        w_init = state.weights[0]
        s_init = None if state.momentum is None else state.momentum[0]
        if tuple(w_init.shape) != (N, H, D, D):
            raise ValueError(
                f"titans_linear_chunked: the state's weights must have shape {[N, H, D, D]} (one per "
                f"{'packed ' if cu_seqlens is not None else ''}sequence), got {tuple(w_init.shape)}"
            )
    w_init = w_init.float().contiguous()
    s_init = None if s_init is None else s_init.float().contiguous()
    L = chunk_size
    if T == 0:
        y, w_final, s_final, w_anchor = q.new_zeros(q.shape), w_init, s_init, w_init
    else:
        cu, chunk_offsets, index = chunk_layout(lengths, L, q.device)
        with torch.autocast(q.device.type, enabled=False):

            def gate(x: Tensor, log: bool) -> Tensor:  # [B, T, H] -> [H, NC, L]
                return _tile_gate(x.reshape(B * T, H).t(), index, log)

            c = _coefficients(gate, lr, mom, keep)
            dtype = q.dtype
            if arch.residual:
                v = v.float() - k.float()  # M(x) = x + x W: the inner target becomes v − k (float32)
            q, k, v = (t.reshape(B * T, H, D).contiguous() for t in (q, k.to(dtype), v))
            y, w_final, s_final, w_anchor = linear_memory.linear_memory_chunked(
                q, k, v, c.beta, c.f, c.G, c.m_end, c.s_coef, w_init, s_init, cu, chunk_offsets, L,
                dot_precision,
            )  # fmt: skip
            if arch.residual:
                y = y + q.float()
            y = y.to(dtype).reshape(B, T, H, D)

    momentum = None if s_init is None else (s_final,)
    if cu_seqlens is None:
        return y, MemoryState((w_final,), momentum, (w_anchor,) if T % L else None, T % L)
    return y, _sequence_states((w_final,), momentum, (w_anchor,), lengths, L)
