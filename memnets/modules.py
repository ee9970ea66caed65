"""Small layers shared by every family: norms, the SwiGLU MLP, the causal short convolution, rotary
embeddings and l2 normalisation. Written once here and composed by the mixers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise the last dimension to unit l2 norm (computed in float32 for stability)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm of ``x`` multiplied by ``silu(gate)``: the output norm + gate of fla-style memory layers."""

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x) * F.silu(gate)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class ShortConv(nn.Module):
    """Depthwise causal 1-D convolution over time, with a state for token-by-token decoding.

    ``forward(x [B, T, C], state) -> (y, state)``; the state is the last ``kernel_size - 1`` inputs
    ``[B, kernel_size - 1, C]`` (zeros at the start), so a sequence split anywhere and run piecewise
    (or token by token through ``step``) gives the same output as one call. ``cu_seqlens`` (with B = 1)
    stops the window at sequence boundaries so packed sequences never see each other.
    """

    def __init__(self, channels: int, kernel_size: int = 4, activation: bool = True) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"ShortConv kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.uniform_(self.weight, -(kernel_size**-0.5), kernel_size**-0.5)

    def forward(
        self, x: Tensor, state: Tensor | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        K = self.kernel_size
        if state is None:
            state = x.new_zeros(B, K - 1, C)
        xp = torch.cat([state.to(x.dtype), x], dim=1)  # [B, K-1+T, C]
        if T == 0:  # an empty sequence (packed batches may hold one): the state passes through
            return x.new_zeros(B, 0, C), xp
        windows = xp.unfold(1, K, 1)  # [B, T, C, K]; window t covers inputs t-K+1 .. t
        if cu_seqlens is not None:
            windows = windows * _same_sequence_mask(cu_seqlens, T, K, x.device).to(x.dtype)[None, :, None, :]
        y = (windows * self.weight).sum(-1) + self.bias
        if self.activation:
            y = F.silu(y)
        new_state = xp[:, xp.shape[1] - (K - 1) :]
        return y, new_state

    def step(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state


def _same_sequence_mask(cu_seqlens: Tensor, T: int, K: int, device: torch.device) -> Tensor:
    """mask[t, j] = 1 when input t - (K - 1) + j belongs to the same packed sequence as t."""
    pos = torch.arange(T, device=device)
    seq_id = torch.searchsorted(cu_seqlens.to(device)[1:].contiguous(), pos, right=True)
    start = cu_seqlens.to(device)[seq_id]
    src = pos[:, None] - (K - 1) + torch.arange(K, device=device)[None, :]
    return src >= start[:, None]


class Rotary(nn.Module):
    """Rotary position embedding on ``[B, T, H, D]`` tensors, positions given explicitly."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """``positions``: ``[T]`` or ``[B, T]`` integer positions."""
        freqs = positions.float()[..., None] * self.inv_freq  # [(B,) T, D/2]
        if freqs.dim() == 2:
            freqs = freqs[None]
        cos, sin = freqs.cos()[:, :, None, :], freqs.sin()[:, :, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.to(x.dtype)
