"""Titans (Behrouz, Zhong, Mirrokni, arXiv 2501.00663 v1): the neural long-term memory (LMM) and the
three ways of combining it with attention, MAC, MAG and MAL. Sections and equations below are the paper's.

Registered mixers:

* ``titans`` — the LMM alone (§3.1, §4.4): q/k/v projections → depthwise causal conv (kernel 4) →
  SiLU, l2-normalised q and k per head; data-dependent per-head gates; the memory (a
  :class:`~memnets.memory.MemoryMLP` per head) trained online by ‖M(k) − v‖² with momentum and
  forgetting; output GatedRMSNorm (RMSNorm(y) ⊙ silu(W_g x)) and output projection.
* ``titans_mac`` — memory as a context (§4.1, Eq. 21–25): per segment, retrieve h = M*_{t−1}(q) from the
  memory state before the segment, attend over [persistent ‖ h ‖ segment], write the attention output
  y into the memory, output y ⊗ M*_t(y).
* ``titans_mag``, ``titans_mal`` — memory as a gate / as a layer (§4.2–4.3, Eq. 26–31): the LMM with
  sliding-window attention, :mod:`memnets.mixers.hybrid` (which wraps any memory mixer so).

Gates (per token and head; neutral names, Titans letters): ``lr = lr_max·sigmoid(W x + b)`` = θ_t,
``mom = sigmoid(W x + b)`` = η_t, ``keep = sigmoid(W x + b)`` = 1 − α_t. ``gates: channel`` makes each
a vector per head, one entry per output unit of every weight matrix of the memory (App. C's
diag(θ_t), diag(η_t), diag(1 − α_t), applied to each layer), from a rank-``gate_rank`` projection
(default 32; :mod:`memnets.mixers.memory_block`); no Triton kernel takes them. Biases start at
lr = lr_max/2, mom ≈ 0.9, forget α ≈ 0.01 (our choice: §3.2 makes the gates functions of x_t but gives no
parameterisation). ``lr_max = 0`` freezes the memory at
its learned initial weights (the "frozen memory" baseline).

Choices the paper leaves open (memory width/activation/norm, chunk size, conv order, N_p, MAC segment and
gate, MAG window), each documented here and an option where people differ:

* Memory: ``memory`` (a :class:`~memnets.memory.MemorySpec`): depth 2, expansion 4, GELU, residual +
  LayerNorm with per-head outer affine (M(x) = x + LN(W₁ σ(W₂ x)), as the same group's Miras/ATLAS and TTT); initial weights learned
  per head. Loss ‖M(k) − v‖² without ½ (Titans Eq. 12). Gates are scalars per head by default
  (``gates: channel``: App. C's channel-wise ones, see above).
* Chunking: one chunk size b = ``chunk_size`` (default 16); gradients at the chunk-start weights,
  momentum/forgetting per token, reads after the token's own write (Eq. 15).
* ``grad_horizon`` (LMM and MAG/MAL, the Miras and Omega mixers: tokens, a multiple of ``chunk_size``;
  MAC: a multiple of ``segment_size``; default none): the outer gradient follows the memory's
  recurrence back at most that far (truncated backpropagation,
  :class:`~memnets.mixers.memory_block.MemoryBlock`; MAC cuts at segment ends, also detaching its
  write conv's window of attention outputs, which read the memory); the forward is unchanged. At
  T = 4096 the exact gradient of these memories is 1e6 times and more the one at T = 512
  (benchmarks/RESULTS.md section 24); the 4K-context LM configs of Titans (LMM, MAC, MAG, MAL), Yaad
  and Moneta set 512 (section 42).
* Conv order: Linear → causal depthwise conv → SiLU → l2-norm (q, k), as ATLAS Fig. 3.
* Persistent memory (§3.3): ``num_persistent`` learnable key/value pairs per head prepended to every
  attention window and visible to every query; they are position-free (no RoPE). They are not written
  into the neural memory (its learnable initial weights already play that role), so x̃ = P ‖ x only
  affects attention.
* MAC: ``segment_size`` (default 64; must be a multiple of ``chunk_size``). Retrieval uses a separate
  query projection of the segment input (Eq. 21). Causality: segment token j attends to the
  persistent tokens, to the retrieved tokens h_i and segment tokens i with i ≤ j (h_i is a function
  of token i, so seeing h_{i>j} would leak the future); h_i shares token i's rotary position.
  Attention does not cross segments (long-range information flows through the memory). Only segment
  rows of y are written to memory and output. The memory is written with k, v = projections of y
  (Eq. 24, its own conv and gates) and read back per token with a projection of y as query, so token
  j sees the memory after its own write; o = y ⊙ sigmoid(RMSNorm(W_r M*(y))) (the ⊗ of Eq. 25).
  ``write_norm`` (default off) writes and gates from RMSNorm(y) instead: Eq. 24 leaves the scale of the
  memory's input open, and y (an attention output) starts ~10x smaller than the LMM's pre-normed input.
  ``write_input``: ``"attention"`` (default) writes y as Eq. 24 states; ``"residual"`` writes x + y, the
  attention sub-layer's output with its residual (what the next layer of a Transformer block sees; the
  read-back gate of Eq. 25 still multiplies y). At initialisation attention averages its window, so the
  y of one segment's tokens are alike and so are the keys written from them: mean |cos| between one
  sequence's write keys 0.58-0.69 against 0.17 for the LMM's, whose keys come from x
  (benchmarks/RESULTS.md section 29).
* MAG, MAL: the combiner and window, :mod:`memnets.mixers.hybrid`.
* Backends: ``chunked`` (the engine), ``reference`` (token loop) and ``triton``:
  :mod:`memnets.kernels.linear_memory` for the linear memory (``memory={"depth": 1,
  "norm": False}``, chunk size 16/32/64) and :mod:`memnets.kernels.mlp_memory` for the
  two-layer MLP memory (depth 2, the default, with or without LayerNorm/residual, any
  activation; chunks run in tiles of a divisor of the chunk size up to 64 rows (e.g. chunk 256 as 4
  tiles of 64) with the state on chip for head_dim x hidden <= 4096 (<= 1024 with 64-row tiles);
  larger states run :mod:`memnets.kernels.mlp_memory` (wide-state) (head dim <= 128, chunk size <= 64,
  <= 32 above head dim 64; with ``backend="triton"`` only until checked on a GPU:
  ``kernel_bridge.WIDE_IN_AUTO``));
  ``auto`` picks ``triton`` on CUDA when it applies and logs which kernel ran. Asking for
  ``triton`` where neither applies raises, naming the option. ``dot_precision`` sets the MLP kernels'
  matmul operands: ``"auto"`` (default) follows the inputs, so bf16 training (autocast or bf16
  weights) runs bfloat16 operands and float32 runs ``"tf32x3"``; or explicitly ``"tf32x3"`` (float32,
  matches the engine to float32 rounding), ``"tf32"``, ``"float16"`` or ``"bfloat16"`` (half
  operands, float32 state and accumulation, as fla's kernels: up to 6x the tensor-core rate, at half
  rounding of the state in every product). It applies where a kernel runs (the linear and the MLP
  memory kernels); the PyTorch backends compute in the inputs' type.
* Packed sequences (``cu_seqlens``): both Triton kernels run them in one kernel call (each sequence
  from the initial state, chunks restarting at its first token), and so do MAG and MAL on them (their
  attention masks the sequences); the other backends and MAC run them sequence by sequence. Either
  way the state returned is the last sequence's.

MQAR (``configs/mqar/titans*.yaml``): every variant ends ahead of the same model with ``lr_max=0`` (frozen
memory, same parameters); the committed ``titans.yaml`` solves the task while its frozen twin stays near
chance. MAC writing the attention output alone (Eq. 24 literally) learns slowest; ``titans-mac.yaml``
writes x + y (``write_input: residual``) and solves it too, as does MAL with ``residual``
(``titans-mal.yaml``). With 16-token windows/segments attention alone covered most queries and the
frozen models were level or ahead, hence the 8-token configs. Figures, settings and dates:
``benchmarks/RESULTS.md`` sections 7 ("Titans variants against frozen memories") and 29.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dispatch import Backend, MemoryDispatch
from ..memory import MemoryMLP, MemorySpec, MemoryState, initial_state, memory_read
from ..modules import RMSNorm
from ..ops import TITANS_MEMORY
from ..registry import register_mixer
from .attention import Attention, attention_mask
from .base import OneTokenStep
from .memory_block import (
    GateLayout,
    MemoryBlock,
    MemoryProjections,
    StepGates,
    announce_horizon,
    check_dot_precision,
    check_grad_horizon,
    gate_width,
    run_packed_one_by_one,
)


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")


# ---------------------------------------------------------------------------------------------------
# the neural memory: projections, gates (memory_block.StepGates), memory, output norm


def titans_memory_op(
    owner: str, arch: MemoryMLP, backend: str, chunk_size: int, dot_precision: str, gates: str
) -> MemoryDispatch:
    """The Titans memory's dispatch for ``owner``, checked against ``backend``."""
    op = MemoryDispatch(
        owner, TITANS_MEMORY, arch, gates=gates, chunk_size=chunk_size, dot_precision=dot_precision
    )
    op.check(backend)
    check_dot_precision(owner, dot_precision, arch)
    return op


@register_mixer("titans")
class Titans(MemoryBlock):
    """Titans neural long-term memory (LMM) as a token mixer. See the module docstring for the options."""

    name = "titans"

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        chunk_size: int = 16,
        backend: Backend = "auto",
        memory: MemorySpec = MemorySpec(),
        momentum: bool = True,
        forget: bool = True,
        lr_max: float = 1.0,
        conv_size: int = 4,
        dot_precision: str = "auto",
        gates: GateLayout = "head",
        gate_rank: int = 32,
        grad_horizon: int | None = None,
    ) -> None:
        super().__init__()
        head_dim = head_dim or d_model // num_heads
        _check_positive("titans", chunk_size=chunk_size, head_dim=head_dim, conv_size=conv_size)
        if lr_max < 0:
            raise ValueError(f"titans: lr_max must be >= 0, got {lr_max}")
        check_grad_horizon("titans", grad_horizon, chunk_size)
        self.grad_horizon = grad_horizon
        self.num_heads, self.head_dim, self.chunk_size, self.backend = (
            num_heads,
            head_dim,
            chunk_size,
            backend,
        )
        self.inputs = MemoryProjections(d_model, num_heads, head_dim, conv_size)
        self.memory = memory.build(num_heads, head_dim)
        width = gate_width("titans", gates, gate_rank, self.memory)
        self.gates = StepGates(d_model, num_heads, lr_max, momentum, forget, width, gate_rank)
        self.op = titans_memory_op("titans", self.memory, backend, chunk_size, dot_precision, gates)
        self.init_output(d_model, num_heads, head_dim)

    def memory_args(self, x: Tensor, qkv: dict[str, Tensor]) -> tuple[list[Tensor | None], dict[str, Any]]:
        g = self.gates(x)
        return [qkv["q"], qkv["k"], qkv["v"], g["lr"], g["mom"], g["keep"]], {}

    def state_size(self, seq_len: int) -> int:
        per_head = self.memory.numel_per_head() * (2 if self.gates.momentum else 1)
        return self.num_heads * per_head + self.inputs.state_size()


# ---------------------------------------------------------------------------------------------------
# MAC


@dataclass
class MACState:
    pos: int  # tokens seen so far
    conv_x: dict[str, Tensor]  # retrieval query conv
    conv_y: dict[str, Tensor]  # memory write/read convs (input: attention output y)
    memory: MemoryState
    segment_memory: MemoryState  # memory at the start of the current segment (retrieval, Eq. 21)
    seg_k: Tensor  # [B, S, H, D] keys of the current segment's tokens so far (rotary applied)
    seg_v: Tensor
    h_k: Tensor  # keys of the retrieved tokens h so far
    h_v: Tensor


@register_mixer("titans_mac")
class TitansMAC(OneTokenStep):
    """Memory as a Context: segment-wise attention over [persistent ‖ retrieved memory ‖ segment]."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        segment_size: int = 64,
        num_persistent: int = 4,
        head_dim: int | None = None,
        chunk_size: int = 16,
        backend: Backend = "auto",
        memory: MemorySpec = MemorySpec(),
        momentum: bool = True,
        forget: bool = True,
        lr_max: float = 1.0,
        conv_size: int = 4,
        rope_base: float = 10000.0,
        dot_precision: str = "auto",
        write_norm: bool = False,
        write_input: Literal["attention", "residual"] = "attention",
        gates: GateLayout = "head",
        gate_rank: int = 32,
        grad_horizon: int | None = None,
    ) -> None:
        super().__init__()
        head_dim = head_dim or d_model // num_heads
        _check_positive("titans_mac", segment_size=segment_size, chunk_size=chunk_size, head_dim=head_dim)
        check_grad_horizon("titans_mac", grad_horizon, segment_size, "segment_size")
        self.grad_horizon = grad_horizon
        if segment_size % chunk_size:
            raise ValueError(
                f"titans_mac: segment_size={segment_size} must be a multiple of chunk_size={chunk_size} "
                "(the retrieval reads the memory at segment starts, which must be chunk boundaries)"
            )
        if num_persistent < 0:
            raise ValueError(f"titans_mac: num_persistent must be >= 0, got {num_persistent}")
        self.write_residual = write_input == "residual"
        self.num_heads, self.head_dim = num_heads, head_dim
        self.segment_size, self.chunk_size, self.backend = segment_size, chunk_size, backend
        self.num_persistent = num_persistent
        inner = num_heads * head_dim
        # retrieval query from the segment input (Eq. 21)
        self.retrieve = MemoryProjections(d_model, num_heads, head_dim, conv_size, names=("q",))
        self.h_in = nn.Linear(inner, d_model, bias=False)  # retrieved tokens into the token space
        self.attention = Attention(d_model, num_heads, rope_base=rope_base)  # qkv, rotary, out
        if num_persistent:
            self.persistent_k = nn.Parameter(
                torch.randn(num_persistent, num_heads, d_model // num_heads) * 0.02
            )
            self.persistent_v = nn.Parameter(
                torch.randn(num_persistent, num_heads, d_model // num_heads) * 0.02
            )
        # memory written and read with projections of the attention output (Eq. 24-25). write_norm: an
        # RMSNorm on y before those projections and the gates, so the memory sees inputs of the scale the
        # LMM sees (its pre-normed block input): at init y has rms ~0.1, its values |v| ~0.08 against
        # ~1 in the LMM (RESULTS.md section 12)
        self.write_norm = RMSNorm(d_model) if write_norm else None
        self.write = MemoryProjections(d_model, num_heads, head_dim, conv_size)
        self.memory = memory.build(num_heads, head_dim)
        width = gate_width("titans_mac", gates, gate_rank, self.memory)
        self.gates = StepGates(d_model, num_heads, lr_max, momentum, forget, width, gate_rank)
        self.op = titans_memory_op("titans_mac", self.memory, backend, chunk_size, dot_precision, gates)
        self.r_out = nn.Linear(inner, d_model, bias=False)
        self.r_norm = RMSNorm(d_model)

    def _initial_state(self, x: Tensor) -> MACState:
        B = x.shape[0]
        H, Da = self.num_heads, self.attention.head_dim
        mem = initial_state(self.memory, B, self.gates.momentum, self.memory.init_weights[0].dtype)
        empty = x.new_zeros(B, 0, H, Da)
        return MACState(0, {}, {}, mem, mem, empty, empty, empty, empty)

    def forward(
        self, x: Tensor, state: MACState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, MACState]:
        if cu_seqlens is not None:
            return run_packed_one_by_one(self, x, cu_seqlens, state)  # type: ignore[return-value]
        st = state or self._initial_state(x)
        outs, start, T = [], 0, x.shape[1]
        horizon = self.grad_horizon if torch.is_grad_enabled() else None
        while start < T:
            end = min(T, start + self.segment_size - st.pos % self.segment_size)
            o, st = self._segment_piece(x[:, start:end], st)
            outs.append(o)
            start = end
            if horizon is not None and start < T and st.pos % horizon == 0:
                st = self._cut(st, horizon)
        return torch.cat(outs, 1) if outs else x, st

    def _cut(self, st: MACState, horizon: int) -> MACState:
        """``grad_horizon``: the state with what carries the memory's history detached, the memory, its
        segment-start copy and the write conv's window of attention outputs (which read that memory);
        the retrieval conv's window of inputs stays (it reaches ``conv_size`` − 1 tokens back)."""
        announce_horizon("titans_mac", horizon)
        conv_y = {k: v.detach() for k, v in st.conv_y.items()}
        return replace(
            st, memory=st.memory.detach(), segment_memory=st.segment_memory.detach(), conv_y=conv_y
        )

    def _segment_piece(self, x: Tensor, st: MACState) -> tuple[Tensor, MACState]:
        """Tokens that all lie in one segment, continuing from ``st``."""
        B, L, _ = x.shape
        H, Da = self.num_heads, self.attention.head_dim
        offset = st.pos % self.segment_size  # tokens of this segment seen before
        # 1. retrieve from the memory as it was at the segment start (Eq. 21)
        qx, conv_x = self.retrieve(x, st.conv_x)
        h = memory_read(self.memory, st.segment_memory, qx["q"]).reshape(B, L, -1)
        h_tok = self.h_in(h)
        # 2. attention over [persistent ‖ h ‖ segment] (Eq. 22-23), causal in the segment index
        positions = torch.arange(offset, offset + L, device=x.device)
        q, k, v = self.attention.qkv(x).view(B, L, 3, H, Da).unbind(2)
        d = H * Da  # the retrieved tokens only serve as keys and values: skip their query rows
        hk, hv = F.linear(h_tok, self.attention.qkv.weight[d:]).view(B, L, 2, H, Da).unbind(2)
        q, k, hk = (self.attention.rotary(t, positions) for t in (q, k, hk))
        seg_k, seg_v = torch.cat([st.seg_k, k], 1), torch.cat([st.seg_v, v], 1)
        h_k, h_v = torch.cat([st.h_k, hk], 1), torch.cat([st.h_v, hv], 1)
        causal = attention_mask(L, offset, None, x.device)  # [L, offset + L]
        keys, values, masks = [h_k, seg_k], [h_v, seg_v], [causal, causal]
        if self.num_persistent:
            keys.insert(0, self.persistent_k.to(k.dtype)[None].expand(B, -1, -1, -1))
            values.insert(0, self.persistent_v.to(v.dtype)[None].expand(B, -1, -1, -1))
            masks.insert(0, causal.new_ones(L, self.num_persistent))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, torch.cat(keys, 1), torch.cat(values, 1)))
        att = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=torch.cat(masks, 1)).transpose(1, 2)
        y = self.attention.out(att.reshape(B, L, H * Da))
        # 3. write y into the memory and read it back per token (Eq. 24-25)
        w = x + y if self.write_residual else y
        w = w if self.write_norm is None else self.write_norm(w)
        kv, conv_y = self.write(w, st.conv_y)
        g = self.gates(w)
        r, mem = self.op(self.backend, kv["q"], kv["k"], kv["v"], g["lr"], g["mom"], g["keep"], st.memory)
        o = y * torch.sigmoid(self.r_norm(self.r_out(r.reshape(B, L, -1))))
        pos = st.pos + L
        new = MACState(pos, conv_x, conv_y, mem, st.segment_memory, seg_k, seg_v, h_k, h_v)
        if pos % self.segment_size == 0:  # segment finished: next retrieval sees the updated memory
            empty = seg_k[:, :0]
            new = replace(new, segment_memory=mem, seg_k=empty, seg_v=empty, h_k=empty, h_v=empty)
        return o, new

    def state_size(self, seq_len: int) -> int:
        per_head = self.memory.numel_per_head() * (2 if self.gates.momentum else 1)
        kv = 4 * min(seq_len, self.segment_size) * self.num_heads * self.attention.head_dim
        return 2 * self.num_heads * per_head + kv
