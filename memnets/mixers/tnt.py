"""TNT (Li, Behrouz et al., arXiv 2511.07343 v1, "Improving Chunkwise Training for Test-Time
Memorization"): one global memory with large chunks plus N local memories that restart from a learnable
initial state every shard, read with Q-K projected queries. Sections and equations below are the paper's.

Registered mixer ``tnt``. Per token t and head (plain gradient descent on ‖M(k) − v‖², TNT App. D)::

    global  V (chunk C_G = global_chunk_size):  y^G_t = M(q_t; V_{ξ(t,C_G)})            (Eq. 5, Eq. 7)
    local   W^(i) (chunk C_i, shard S_i):       y^i_t = M(P^i_t q^i_t; W^(i)_t)         (Eq. 6, Eq. 15)
            W^(i) reset to the learnable W^(i)_init at every multiple of S_i,
            P^i_t = Σ_{τ = shard start..t} k^i_τ k^i_τᵀ (App. C; :mod:`memnets.memory.qk_projection`)
    o_t = W_o( RMSNorm(y^G_t + Σ_i y^i_t) ⊙ silu(W_g x_t) )

Engine pieces: :func:`~memnets.memory.chunk_read.chunk_read_memory` (global: reads at the chunk-start
state) and :func:`~memnets.memory.sharded.sharded_memory` (local: whole shards of all sequences folded
into the batch, so a local memory runs S_i / C_i sequential chunk steps instead of T / C_i).

Options (neutral names; TNT letters): ``chunk_size`` = C_L, an int (one local memory) or a list (one
local memory per entry, the paper's C_L = {8, 16}); ``shard_size`` = S_L, one int for all local
memories or one per memory; ``global_chunk_size`` = C_G; ``lr_max`` bounds the inner step η_t =
``lr_max·sigmoid(W x + b)`` (per token and head, one gate per memory; ``gates: channel``: per output
unit of every weight matrix of that memory, from a rank-``gate_rank`` projection, the channel-wise
η_t of Titans App. C / Miras §5.4, :mod:`memnets.mixers.memory_block`; no Triton kernel takes it, so
both memories then run the chunked form). ``global_memory=False`` and
``qk_projection=False`` are the paper's ablations (Table 3).

Choices the paper leaves open (per-memory projections, output weighting, the Q-K projection's range and
normalisation):

* Each memory has its own q/k/v projections, short convs and step-size gate (Fig. 3 draws separate
  boxes per memory); the memories share the head layout and the output norm, gate and projection.
  Outputs are summed with no weights (Eq. 7).
* Memory network as in ``titans`` (2-layer MLP, 4× width, GELU, residual + LayerNorm, learnable
  initial weights per head); q and k l2-normalised after Linear → causal conv → SiLU.
* Q-K projection sums from the shard start (App. C), not the chunk start (Eq. 7 as printed), and is
  normalised by ``qk_norm``: ``"l2"`` (default: re-normalise P q to unit length, the scale of the raw
  query the memory would otherwise see), ``"count"`` (divide by the number of keys) or ``"none"`` (the
  paper as printed; the input norm grows with the position in the shard).
* Chunks of a local memory are counted from its shard start; no momentum or forgetting (the paper's
  evaluated models are plain GD).
* Decoding: the global memory keeps its chunk semantics (the chunk's writes become visible at the next
  global chunk boundary); local memories decode token by token exactly at their chunk size, which is
  the paper's target after stage 2 (C_L = 1). ``step`` equals ``forward``.
* Two-stage training (§4.2): stage 2 loads a stage-1 checkpoint (``train.init_from``), lowers
  ``chunk_size`` and by default trains only ``*.mixer.local.*`` (``train.trainable``); see
  configs/lm/tnt-stage2-tiny.yaml.
* Backends: ``chunked``, ``reference`` and ``triton``: the local memories (whole shards folded into
  the batch) run in the Titans memory kernels (:mod:`memnets.kernels.mlp_memory` for the
  default 2-layer memory, :mod:`memnets.kernels.linear_memory` for ``memory: {depth: 1}``) where
  they apply (``titans``' limits per local chunk size); the global memory (2-layer) runs the MLP
  kernel's chunk-start-read variant (:func:`~memnets.memory.kernel_bridge.chunk_read_mlp`: large
  chunks as tiles that keep the key path at the chunk-start weights) when it fits, else the chunked
  PyTorch form (logged, with the reason). ``auto`` picks ``triton`` on CUDA when every local memory
  fits a kernel. ``dot_precision`` sets the MLP kernels' matmul operands (both memories) as for
  ``titans``.
* Packed sequences (``cu_seqlens``): run sequence by sequence, as ``titans``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..dispatch import Backend, MemoryDispatch
from ..memory import MemorySpec, MemoryState
from ..memory.qk_projection import ProjectionNorm
from ..memory.sharded import ShardState
from ..ops import CHUNK_READ_MEMORY, SHARDED_MEMORY
from ..registry import register_mixer
from .base import OneTokenStep
from .memory_block import (
    GATE_INIT,
    GatedOutput,
    GateLayout,
    LowRankGates,
    MemoryProjections,
    check_dot_precision,
    gate_projection,
    gate_width,
    run_packed_one_by_one,
)


class TNTMemory(nn.Module):
    """One memory's inputs and network: q/k/v projections (own convs), step-size gate
    lr = lr_max·sigmoid(W x + b) (TNT η_t; b = 0 starts at lr_max / 2), MemoryMLP. The gate is one
    scalar per head from a linear map (``gates="head"``) or one value per head and memory unit from a
    rank-``gate_rank`` projection (``"channel"``, :mod:`memnets.mixers.memory_block`); it runs in
    float32 or the model's wider dtype (float64 models stay exact)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        conv_size: int,
        lr_max: float,
        spec: MemorySpec,
        gates: str = "head",
        gate_rank: int = 32,
    ) -> None:
        super().__init__()
        self.inputs = MemoryProjections(d_model, num_heads, head_dim, conv_size)
        self.lr_max = lr_max
        self.memory = spec.build(num_heads, head_dim)
        width = gate_width("tnt", gates, gate_rank, self.memory)
        rank = gate_rank if width > 1 else None
        self.lr_proj = gate_projection(d_model, num_heads, {"lr": (width, GATE_INIT["lr"])}, rank)

    def forward(
        self, x: Tensor, conv: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        qkv, conv = self.inputs(x, conv)
        if isinstance(self.lr_proj, LowRankGates):
            raw = self.lr_proj(x)["lr"]
        else:  # not split_gates: its per-gate view would sum the bias gradient in another order
            raw = self.lr_proj(x).to(torch.promote_types(x.dtype, torch.float32))
        return qkv["q"], qkv["k"], qkv["v"], self.lr_max * torch.sigmoid(raw), conv


@dataclass
class TNTState:
    """``conv``: short-conv states per memory (global first if present, then the locals);
    ``glob``: the global memory's state; ``local``: one :class:`ShardState` per local memory."""

    conv: list[dict[str, Tensor]]
    glob: MemoryState | None
    local: list[ShardState]


def _sizes(name: str, value: int | tuple[int, ...], n: int | None) -> tuple[int, ...]:
    sizes = (value,) if isinstance(value, int) else tuple(value)
    if n is not None and len(sizes) == 1:
        sizes = sizes * n
    if not sizes or any(s < 1 for s in sizes) or (n is not None and len(sizes) != n):
        need = "" if n is None else f" with 1 or {n} entries (one per local memory)"
        raise ValueError(f"tnt: {name}={value!r} must be a positive int or a list of positive ints{need}")
    return sizes


@register_mixer("tnt")
class TNT(GatedOutput, OneTokenStep):
    """TNT hierarchical memory: global (large chunks) + local memories (resets, Q-K projection)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        chunk_size: int | tuple[int, ...] = 16,
        shard_size: int | tuple[int, ...] = 2048,
        global_chunk_size: int = 2048,
        global_memory: bool = True,
        qk_projection: bool = True,
        qk_norm: ProjectionNorm = "l2",
        backend: Backend = "auto",
        memory: MemorySpec = MemorySpec(),
        lr_max: float = 1.0,
        conv_size: int = 4,
        dot_precision: str = "auto",
        gates: GateLayout = "head",
        gate_rank: int = 32,
    ) -> None:
        super().__init__()
        head_dim = head_dim or d_model // num_heads
        self.chunk_sizes = _sizes("chunk_size", chunk_size, None)
        self.shard_sizes = _sizes("shard_size", shard_size, len(self.chunk_sizes))
        if global_chunk_size < 1:
            raise ValueError(f"tnt: global_chunk_size must be >= 1, got {global_chunk_size}")
        if lr_max < 0:
            raise ValueError(f"tnt: lr_max must be >= 0, got {lr_max}")
        self.num_heads, self.head_dim, self.backend = num_heads, head_dim, backend
        self.global_chunk_size = global_chunk_size
        self.qk_norm: ProjectionNorm | None = qk_norm if qk_projection else None

        def block() -> TNTMemory:
            return TNTMemory(d_model, num_heads, head_dim, conv_size, lr_max, memory, gates, gate_rank)

        self.glob = block() if global_memory else None
        self.local = nn.ModuleList(block() for _ in self.chunk_sizes)
        check_dot_precision("tnt", dot_precision, self.local[0].memory)
        self.local_ops = [
            MemoryDispatch(
                "tnt",
                SHARDED_MEMORY,
                mem.memory,
                part=f"local memory {i}",
                gates=gates,
                chunk_size=c,
                shard_size=s,
                projection=self.qk_norm,
                dot_precision=dot_precision,
            )
            for i, (mem, c, s) in enumerate(zip(self.local, self.chunk_sizes, self.shard_sizes, strict=True))
        ]
        for op in self.local_ops:
            op.check(backend)
        self.glob_op = None
        if self.glob is not None:
            self.glob_op = MemoryDispatch(
                "tnt",
                CHUNK_READ_MEMORY,
                self.glob.memory,
                part="global memory",
                optional_kernel=True,  # backend="triton" asks for the local memories' kernels
                gates=gates,
                chunk_size=global_chunk_size,
                dot_precision=dot_precision,
            )
        self.init_output(d_model, num_heads, head_dim)

    def extra_repr(self) -> str:
        return (
            f"global_chunk_size={self.global_chunk_size if self.glob is not None else None}, "
            f"local chunk_sizes={self.chunk_sizes}, shard_sizes={self.shard_sizes}, qk_norm={self.qk_norm}"
        )

    def forward(
        self, x: Tensor, state: TNTState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, TNTState]:
        if cu_seqlens is not None:
            return run_packed_one_by_one(self, x, cu_seqlens, state)  # type: ignore[return-value]
        mems = ([self.glob] if self.glob is not None else []) + list(self.local)
        convs = state.conv if state is not None else [None] * len(mems)
        new_conv, y = [], None
        glob_state = None
        if self.glob is not None:
            q, k, v, lr, c = self.glob(x, convs[0])
            new_conv.append(c)
            y, glob_state = self.glob_op(  # type: ignore[misc]
                self.backend, q, k, v, lr, None if state is None else state.glob
            )
        local_states = []
        offset = len(mems) - len(self.local)
        for i, mem in enumerate(self.local):
            q, k, v, lr, c = mem(x, convs[offset + i])
            new_conv.append(c)
            yl, st = self.local_ops[i](self.backend, q, k, v, lr, None if state is None else state.local[i])
            local_states.append(st)
            y = yl if y is None else y + yl
        out = self.output(y, x)
        return out, TNTState(new_conv, glob_state, local_states)

    def state_size(self, seq_len: int) -> int:
        mems = ([self.glob] if self.glob is not None else []) + list(self.local)
        gram = len(self.local) * self.head_dim**2 if self.qk_norm is not None else 0
        per_head = sum(m.memory.numel_per_head() for m in mems) + gram
        return self.num_heads * per_head + sum(m.inputs.state_size() for m in mems)
