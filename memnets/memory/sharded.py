"""A memory reset to its learnable initial state every ``shard_size`` tokens: TNT's local memory
(TNT §4.1.1 Eq. 6, App. E Eq. 13-14), read with Q-K projected queries (§4.1.2, App. C).

Inside a shard the rule is the shared engine's chunkwise rule, chunks counted from the shard start::

    W_t = W_init                                           at every shard start (t ≡ 0 mod S)
    W_t = W_{ξ(t,C)} − Σ_{τ=ξ(t,C)..t} lr_τ ∇ℓ(M(k_τ; W_{ξ(t,C)}), v_τ)   otherwise (Eq. 6 read as
                                                           the standard chunkwise form of Eq. 3:
                                                           as printed it sums the chunk twice)
    y_t = M(P_t q_t; W_t),   P_t = Σ_{τ = shard start..t} k_τ k_τᵀ   (optional, :mod:`.qk_projection`)

Because every shard restarts from the same W_init, shards are independent: whole shards of all
sequences are folded into the batch (``[B, n·S] -> [B·n, S]``) and run in one call, so the sequential
chain is S / C chunk steps instead of T / C. Only a shard cut by the call boundaries (the start of a
continued call, the unfinished last shard) runs on its own with its carried state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .architecture import MemoryMLP
from .engine import MemoryState, memory_chunked, memory_reference
from .qk_projection import ProjectionNorm, qk_project, qk_project_reference
from .segments import segments


@dataclass
class ShardState:
    """``pos``: tokens into the current shard (0 = the next token starts a new shard from W_init).
    ``memory``: the engine state inside the shard (``None`` when ``pos == 0``). ``gram``: Σ k kᵀ of the
    shard's keys so far ``[B, H, D, D]`` (``None`` without Q-K projection or when ``pos == 0``)."""

    pos: int = 0
    memory: MemoryState | None = None
    gram: Tensor | None = None

    def detach(self) -> ShardState:
        return ShardState(
            self.pos,
            None if self.memory is None else self.memory.detach(),
            None if self.gram is None else self.gram.detach(),
        )


def _fold(t: Tensor, start: int, end: int, n: int) -> Tensor:
    """``t[:, start:end]`` of ``n`` whole shards as ``n`` sequences: ``[B, n·S, ...] -> [B·n, S, ...]``."""
    return t[:, start:end].reshape(t.shape[0] * n, (end - start) // n, *t.shape[2:])


def sharded_memory(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: ShardState | None = None,
    *,
    chunk_size: int,
    shard_size: int,
    projection: ProjectionNorm | None = None,
    backend: Literal["chunked", "reference"] = "chunked",
    fold: bool = True,
    projection_block: int = 64,
    run: Callable[..., tuple[Tensor, MemoryState]] | None = None,
) -> tuple[Tensor, ShardState]:
    """Run the reset memory over ``q, k, v [B, T, H, D]`` with step sizes ``lr [B, T, H]``.

    ``projection``: ``None`` reads with the raw query; otherwise the Q-K projection with that
    normalisation. ``backend="reference"`` loops over shards, each with the engine's token-by-token
    loop and the explicit d×d projection; ``fold=False`` loops over shards with the chunked engine
    instead of folding them into the batch (for tests). ``run`` replaces the chunked engine on the
    folded shards by a function with :func:`~memnets.memory.memory_chunked`'s signature (a Triton
    kernel of :mod:`memnets.kernels`).
    Returns ``y [B, T, H, D]`` and the state after the last token."""
    if chunk_size < 1 or shard_size < 1:
        raise ValueError(f"sharded_memory: chunk_size={chunk_size} and shard_size={shard_size} must be >= 1")
    state = state or ShardState()
    if not 0 <= state.pos < shard_size:
        raise ValueError(f"sharded_memory: state.pos={state.pos} must lie in [0, shard_size={shard_size})")
    B, T, H, D = q.shape
    reference = backend == "reference"
    fold = fold and not reference  # the reference is the plain per-shard loop
    if reference and run is not None:
        raise ValueError(
            "sharded_memory: run= replaces the chunked engine; it cannot be combined with the reference"
        )
    run = memory_reference if reference else run or memory_chunked
    project = qk_project_reference if reference else qk_project
    dtype = arch.init_weights[0].dtype

    def segment(
        qs: Tensor, ks: Tensor, vs: Tensor, lrs: Tensor, st: ShardState
    ) -> tuple[Tensor, MemoryState, Tensor | None]:
        gram = None
        if projection is not None:
            opts = {} if reference else {"block_size": projection_block}
            with torch.autocast(qs.device.type, enabled=False):  # Gram sums over a shard in >= fp32
                qs, gram = project(qs.to(dtype), ks.to(dtype), st.gram, st.pos, norm=projection, **opts)
        y, mem = run(arch, qs, ks, vs, lrs, state=st.memory, chunk_size=chunk_size)
        return y, mem, gram

    # pieces of work: consecutive whole shards (which start at a boundary) merge into one piece
    pieces: list[tuple[int, int, int]] = []  # (start, end, shards folded into the batch)
    for seg in segments(T, shard_size, state.pos):  # [0, T) cut at the shard boundaries
        s, e = seg.span.start, seg.span.stop
        prev = pieces[-1] if pieces else None
        if fold and e - s == shard_size and prev and prev[1] - prev[0] == prev[2] * shard_size:
            pieces[-1] = (prev[0], e, prev[2] + 1)
        else:
            pieces.append((s, e, 1))
    ys: list[Tensor] = []
    mem, gram = state.memory, state.gram
    for s, e, n in pieces:
        args = (_fold(t, s, e, n) for t in (q, k, v, lr))
        y, mem, gram = segment(*args, st=state if s == 0 else ShardState())
        ys.append(y.reshape(B, e - s, H, D))
    pos = (state.pos + T) % shard_size
    y = torch.cat(ys, 1).to(q.dtype) if ys else q.new_zeros(B, 0, H, D)
    if pos == 0:
        return y, ShardState()
    return y, ShardState(pos, mem, gram)
