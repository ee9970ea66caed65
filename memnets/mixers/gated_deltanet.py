"""Gated DeltaNet: a linear-attention memory written by the gated delta rule (Yang, Kautz and
Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule", arXiv 2412.06464, ICLR 2025). It
is also the memory that every MoM memory runs (MoM, arXiv 2502.13685 §4.1), so the pieces MoM reuses
live here:
``MemoryWrite`` (one memory's key/value/write-strength/decay projections), ``GatedDeltaCore`` (the
shared query, short convolutions, decay parameters, recurrence call and gated output) and
``short_conv`` (a causal short convolution over packed sequences that each continue their own history).

Per head, with the memory ``S`` a ``[dk, dv]`` matrix mapping keys to values:

    q_t = l2norm(silu(conv_q(W_q x_t)))     k_t = l2norm(silu(conv_k(W_k x_t)))     v_t = silu(conv_v(W_v x_t))
    beta_t = sigmoid(W_b x_t)                                write strength = inner step size lr (beta_t)
    g_t = -exp(A_log) * softplus(W_a x_t + dt_bias)          log keep; keep_t = exp(g_t) = alpha_t (paper §3)
    S_t = keep_t S_{t-1} + beta_t k_t (v_t - keep_t S_{t-1}^T k_t)^T
        = keep_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T q_t / sqrt(dk)
    y_t = W_o [RMSNorm(o_t) * silu(W_g x_t)]                 per-head norm, output gate, projection

The recurrence runs in ``memnets.kernels.gated_delta.gated_delta_rule`` (backends ``reference``,
``chunked``, ``triton``). Choices where the paper leaves room, following the authors' released code:
the decay uses Mamba2's parameterisation (``A ~ U(0, 16)``, ``dt ~ logU(1e-3, 0.1)`` through
``dt_bias = softplus^-1(dt)``), every projection is initialised ``xavier_uniform(gain=2^-2.5)``, and the
value head width is ``head_dim * expand_v``.

State (``GatedDeltaState``): the short-conv histories of q, k and v and the memory ``[N, H, dk, dv]``
(float32 or wider), one per sequence; with ``cu_seqlens`` there is one per packed sequence, and such a
state can be passed back in with the same packing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dispatch import Backend, MemoryDispatch
from ..modules import GatedRMSNorm, ShortConv, l2norm
from ..ops import GATED_DELTA
from ..registry import register_mixer
from .base import OneTokenStep, check_cu_seqlens, takes_options


@dataclass
class MemoryState:
    """One or more gated-delta memories per sequence: key and value conv histories and the matrix."""

    conv_k: Tensor  # [..., conv_size - 1, H * dk]
    conv_v: Tensor  # [..., conv_size - 1, H * dv]
    memory: Tensor  # [..., H, dk, dv]


@dataclass
class GatedDeltaState:
    conv_q: Tensor  # [N, conv_size - 1, H * dk]
    mem: MemoryState  # leading dim [N]


def short_conv(
    conv: ShortConv, x: Tensor, state: Tensor | None, cu_seqlens: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``conv`` over ``x [B, T, C]`` continuing ``state [B, K-1, C]``, or over the packed sequences of
    ``x [1, L, C]`` marked by ``cu_seqlens [N + 1]``, each continuing its own ``state [N, K-1, C]``.

    ``ShortConv`` resets at packed boundaries but takes one history for the whole stream, so each
    sequence's history is placed in front of it as ``K - 1`` extra rows of its own segment; the conv
    then reads it exactly where a separate call would. Returns the output and the new histories."""
    if cu_seqlens is None:
        return conv(x, state)
    K1 = conv.kernel_size - 1
    N, L, C = cu_seqlens.numel() - 1, x.shape[1], x.shape[2]
    if state is None:
        state = x.new_zeros(N, K1, C)
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    ext_cu = cu + torch.arange(N + 1, device=x.device) * K1
    pos = torch.arange(L + N * K1, device=x.device)
    seg = torch.searchsorted(ext_cu[1:].contiguous(), pos, right=True)
    r = pos - ext_cu[seg]
    src = torch.where(r < K1, seg * K1 + r, N * K1 + cu[seg] + r - K1)
    ext = torch.cat([state.reshape(N * K1, C).to(x.dtype), x[0]])[src]
    y, _ = conv(ext[None], None, ext_cu)
    last = ext_cu[1:, None] - K1 + torch.arange(K1, device=x.device)
    return y[:, r >= K1], ext[last]


class MemoryWrite(nn.Module):
    """What one memory reads from the input: keys, values, write strength ``beta`` and decay input
    ``a``, as one fused projection ``d_model -> H*dk + H*dv + 2H`` (per memory in MoM)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, head_dim_v: int) -> None:
        super().__init__()
        self.sizes = (num_heads * head_dim, num_heads * head_dim_v, num_heads, num_heads)
        self.proj = nn.Linear(d_model, sum(self.sizes), bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        k, v, b, a = self.proj(x).split(self.sizes, dim=-1)
        return k, v, b, a


class GatedDeltaCore(OneTokenStep):
    """The parts of a gated-delta layer that do not belong to one memory: query projection, the three
    short convolutions, decay parameters ``A_log``/``dt_bias``, recurrence call, gated output norm and
    output projection. ``GatedDeltaNet`` adds one ``MemoryWrite``; MoM adds several plus a router.
    Its keyword options are both mixers' (``takes_options``)."""

    def __init__(
        self,
        owner: str,
        d_model: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        expand_v: float = 1.0,
        conv_size: int = 4,
        chunk_size: int = 64,
        backend: Backend = "auto",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if d_model % num_heads:
                raise ValueError(
                    f"{owner}: d_model={d_model} is not divisible by num_heads={num_heads}; set head_dim"
                )
            head_dim = d_model // num_heads
        if head_dim < 1:
            raise ValueError(f"{owner}: head_dim must be >= 1, got {head_dim}")
        head_dim_v = head_dim * expand_v
        if expand_v <= 0 or head_dim_v != int(head_dim_v):
            raise ValueError(
                f"{owner}: expand_v={expand_v} must be > 0 with head_dim * expand_v an integer "
                f"(head_dim={head_dim})"
            )
        if conv_size < 1:
            raise ValueError(f"{owner}: conv_size must be >= 1, got {conv_size}")
        if chunk_size < 1:
            raise ValueError(f"{owner}: chunk_size must be >= 1, got {chunk_size}")
        self.owner = owner
        self.num_heads, self.head_dim, self.head_dim_v = num_heads, head_dim, int(head_dim_v)
        self.key_dim, self.value_dim = num_heads * head_dim, num_heads * self.head_dim_v
        self.chunk_size, self.backend = chunk_size, backend
        self.op = MemoryDispatch(owner, GATED_DELTA, chunk_size=chunk_size)
        self.op.check(backend)
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.q_conv = ShortConv(self.key_dim, conv_size)
        self.k_conv = ShortConv(self.key_dim, conv_size)
        self.v_conv = ShortConv(self.value_dim, conv_size)
        A = torch.empty(num_heads).uniform_(0, 16)
        self.A_log = nn.Parameter(torch.log(A))
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.g_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.o_norm = GatedRMSNorm(self.head_dim_v, norm_eps)
        self.o_proj = nn.Linear(self.value_dim, d_model, bias=False)

    def new_write(self, d_model: int) -> MemoryWrite:
        return MemoryWrite(d_model, self.num_heads, self.head_dim, self.head_dim_v)

    def init_linears(self) -> None:
        """fla's initialisation for every projection of the layer (after all are built)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=2**-2.5)

    def query(self, x: Tensor, conv_state: Tensor | None, cu_seqlens: Tensor | None) -> tuple[Tensor, Tensor]:
        q, conv_state = short_conv(self.q_conv, self.q_proj(x), conv_state, cu_seqlens)
        return l2norm(q.unflatten(-1, (self.num_heads, self.head_dim))), conv_state

    def keys_values(
        self,
        kvba: tuple[Tensor, Tensor, Tensor, Tensor],
        conv_k: Tensor | None,
        conv_v: Tensor | None,
        cu_seqlens: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Projected ``(k, v, b, a)`` of a ``MemoryWrite`` -> conv'd, normalised ``k, v``, log keep ``g``,
        ``beta`` and the new conv histories."""
        k, v, b, a = kvba
        k, conv_k = short_conv(self.k_conv, k, conv_k, cu_seqlens)
        v, conv_v = short_conv(self.v_conv, v, conv_v, cu_seqlens)
        k = l2norm(k.unflatten(-1, (self.num_heads, self.head_dim)))
        v = v.unflatten(-1, (self.num_heads, self.head_dim_v))
        return k, v, self.log_keep(a), torch.sigmoid(b), conv_k, conv_v

    def log_keep(self, a: Tensor) -> Tensor:
        """``g = -exp(A_log) softplus(a + dt_bias)`` in at least float32 (it is exponentiated later)."""
        dtype = torch.promote_types(a.dtype, torch.float32)
        return -self.A_log.to(dtype).exp() * F.softplus(a.to(dtype) + self.dt_bias.to(dtype))

    def recur(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        g: Tensor,
        beta: Tensor,
        initial_state: Tensor | None,
        cu_seqlens: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        return self.op(
            self.backend,
            q,
            k,
            v,
            g,
            beta,
            initial_state=initial_state,
            output_final_state=True,
            cu_seqlens=cu_seqlens,
        )

    def readout(self, o: Tensor, x: Tensor) -> Tensor:
        gate = self.g_proj(x).unflatten(-1, (self.num_heads, self.head_dim_v))
        return self.o_proj(self.o_norm(o.to(x.dtype), gate).flatten(-2))

    def memory_output(self, x: Tensor, state: Any, cu_seqlens: Tensor | None) -> tuple[Tensor, Any]:
        """The memory read-out ``o [B, T, H, dv]`` before :meth:`readout`, and the new state."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: Any = None, cu_seqlens: Tensor | None = None) -> tuple[Tensor, Any]:
        o, state = self.memory_output(x, state, cu_seqlens)
        return self.readout(o, x), state

    def memory_state_size(self) -> int:
        return self.num_heads * self.head_dim * self.head_dim_v

    def conv_state_size(self, streams: int) -> int:
        """Conv history numbers for the query plus ``streams`` key/value stream pairs."""
        return (self.q_conv.kernel_size - 1) * (self.key_dim + streams * (self.key_dim + self.value_dim))


def num_sequences(owner: str, x: Tensor, cu_seqlens: Tensor | None) -> int:
    check_cu_seqlens(owner, x, cu_seqlens)
    return x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1


def check_state_batch(owner: str, leading: int, expected: int) -> None:
    if leading != expected:
        raise ValueError(
            f"{owner}: state holds {leading} sequences but the input has {expected} "
            "(batch size, or number of packed sequences with cu_seqlens)"
        )


@register_mixer("gated_deltanet")
@takes_options(GatedDeltaCore.__init__)
class GatedDeltaNet(GatedDeltaCore):
    """Gated DeltaNet layer. Options: ``head_dim`` (default ``d_model // num_heads``), ``expand_v``
    (value head width = ``head_dim * expand_v``), ``conv_size``, ``chunk_size`` and ``backend`` of the
    recurrence, ``norm_eps`` of the output norm."""

    def __init__(self, d_model: int, num_heads: int, **options: Any) -> None:
        super().__init__("gated_deltanet", d_model, num_heads, **options)
        self.write = self.new_write(d_model)
        self.init_linears()

    def memory_output(
        self, x: Tensor, state: GatedDeltaState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, GatedDeltaState]:
        """The memory read-out ``o [B, T, H, dv]`` before the output norm, gate and projection."""
        N = num_sequences(self.owner, x, cu_seqlens)
        if state is not None:
            check_state_batch(self.owner, state.conv_q.shape[0], N)
        q, conv_q = self.query(x, state.conv_q if state else None, cu_seqlens)
        k, v, g, beta, conv_k, conv_v = self.keys_values(
            self.write(x),
            state.mem.conv_k if state else None,
            state.mem.conv_v if state else None,
            cu_seqlens,
        )
        o, memory = self.recur(q, k, v, g, beta, state.mem.memory if state else None, cu_seqlens)
        return o, GatedDeltaState(conv_q, MemoryState(conv_k, conv_v, memory))

    def state_size(self, seq_len: int) -> int:
        return self.memory_state_size() + self.conv_state_size(1)
