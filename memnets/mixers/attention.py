"""Causal softmax attention with RoPE: the baseline mixer, and the sliding-window attention that
Titans MAG/MAL compose with.

Runs through ``torch.nn.functional.scaled_dot_product_attention``; on CUDA with fp16/bf16 inputs and
``flash-attn`` installed it runs FlashAttention instead. Which path ran is logged once.
The state is a KV cache (keys, values, absolute position); with a ``window`` only the last ``window``
keys are kept, so decoding memory stays bounded."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import Rotary
from ..registry import register_mixer
from .base import OneTokenStep, check_cu_seqlens

log = logging.getLogger("memnets")
_said: set[str] = set()


def _say_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        log.info(msg)


def _flash_attn():
    try:
        from flash_attn import flash_attn_func

        return flash_attn_func
    except ImportError:
        return None


@dataclass
class KVCache:
    k: Tensor  # [B, S, H, D], rotary already applied
    v: Tensor
    pos: int  # absolute position of the next token


def attention_mask(
    T: int, S: int, window: int | None, device: torch.device, cu_seqlens: Tensor | None = None
) -> Tensor:
    """Boolean ``[T, S + T]`` mask: query t (absolute S + t) sees key j when j <= S + t and, with a
    window, S + t - j < window; with ``cu_seqlens`` (S = 0) only keys of its own sequence."""
    q = torch.arange(T, device=device)[:, None] + S
    kpos = torch.arange(S + T, device=device)[None, :]
    mask = kpos <= q
    if window is not None:
        mask &= (q - kpos) < window
    if cu_seqlens is not None:
        seq = torch.searchsorted(cu_seqlens[1:].contiguous(), torch.arange(T, device=device), right=True)
        mask &= seq[:, None] == seq[None, :]
    return mask


@register_mixer("attention")
class Attention(OneTokenStep):
    """Multi-head causal attention. Options: ``window`` (sliding-window size, ``None`` = full),
    ``rope_base``, ``qk_norm`` (RMS-normalise q and k per head before RoPE), ``qkv_bias`` (biases on
    the q/k/v projection)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        window: int | None = None,
        rope_base: float = 10000.0,
        qk_norm: bool = False,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"attention: d_model={d_model} is not divisible by num_heads={num_heads}")
        if window is not None and window < 1:
            raise ValueError(f"attention: window must be >= 1 or null, got {window}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.window = window
        self.qk_norm = qk_norm
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(
        self, x: Tensor, state: KVCache | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        check_cu_seqlens("attention", x, cu_seqlens)
        if cu_seqlens is not None and state is not None:
            raise ValueError("attention: cu_seqlens cannot be combined with a KV-cache state")
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(2)
        if self.qk_norm:
            q = F.rms_norm(q, (D,))
            k = F.rms_norm(k, (D,))
        start = 0 if state is None else state.pos
        if cu_seqlens is not None:
            idx = torch.arange(T, device=x.device)
            seq = torch.searchsorted(cu_seqlens[1:].contiguous(), idx, right=True)
            positions = idx - cu_seqlens[seq]
        else:
            positions = torch.arange(start, start + T, device=x.device)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        if state is not None:
            k_all, v_all = torch.cat([state.k, k], 1), torch.cat([state.v, v], 1)
        else:
            k_all, v_all = k, v
        S = k_all.shape[1] - T
        y = self._attend(q, k_all, v_all, S, cu_seqlens)
        keep = k_all.shape[1] if self.window is None else min(self.window - 1, k_all.shape[1])
        new_state = KVCache(k_all[:, k_all.shape[1] - keep :], v_all[:, v_all.shape[1] - keep :], start + T)
        return self.out(y.reshape(B, T, H * D)), new_state

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, S: int, cu_seqlens: Tensor | None) -> Tensor:
        flash = _flash_attn() if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
        if flash is not None and cu_seqlens is None:
            _say_once("attention: FlashAttention path")
            window = (-1, -1) if self.window is None else (self.window - 1, 0)
            return flash(q, k, v, causal=True, window_size=window)
        _say_once("attention: scaled_dot_product_attention path")
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        if S == 0 and self.window is None and cu_seqlens is None:
            y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
        else:
            mask = attention_mask(q.shape[1], S, self.window, q.device, cu_seqlens)
            y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask)
        return y.transpose(1, 2)

    def state_size(self, seq_len: int) -> int:
        span = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * span * self.num_heads * self.head_dim
