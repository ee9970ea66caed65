"""Memory as a Gate (MAG) and Memory as a Layer (MAL) around any memory mixer (Titans arXiv 2501.00663
v1 §4.2, Eq. 26–28 and §4.3, Eq. 29–31; the ATLAS hybrids Atlas (MAG) / Atlas (MAL), arXiv 2505.23735
v1 §5.1, Fig. 3).

Registered mixers: ``titans_mag``, ``titans_mal`` (Titans LMM), ``atlas_mag``, ``atlas_mal`` (Atlas:
Omega rule + Muon), ``omeganet_mag``, ``omeganet_mal`` (OmegaNet). Each takes the options of its memory
mixer (``titans``, ``atlas``, ``omeganet``: same names, defaults and meaning) plus its own:

* ``window`` (default 64): the sliding-window attention's window (the paper does not give it).
* ``num_persistent`` (default 4): learnable key/value pairs per head prepended to every attention
  window and visible to every query (§3.3 persistent memory; position-free, no rotary). They are not
  written into the neural memory (its learnable initial weights already play that role).
* MAG only, ``combine``: o = W_o(RMSNorm(y_attn) ⊙ sigmoid(RMSNorm(y_mem))) (``"gate"``, Titans ⊗) or
  W_o(RMSNorm(y_attn) + RMSNorm(y_mem)) (``"sum"``, ATLAS Fig. 3).

MAL: o = SW-Attn(Memory(x)), no extra residual between them (a hybrid stack ``[titans, attention]``
gives the residual variant with a norm and an MLP between). MAL only, ``residual`` (default off):
o = y + SW-Attn(y) with y = Memory(x), the attention layer of Eq. 31 with its own residual, as every
layer of the paper's backbone has; the memory's reads then reach the output whatever the window's
attention does with them (MQAR: benchmarks/RESULTS.md section 29).

A memory option whose name is one of the wrapper's is renamed with the prefix ``memory_``: the Omega
rule's window of ``atlas_mag`` is ``memory_window``.

Packed sequences (``cu_seqlens``): the attention masks the sequences and the memory mixer runs them as
it does alone (one kernel call where its kernel packs them); the state returned is the last sequence's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules import RMSNorm
from ..registry import register_mixer
from .atlas import Atlas, OmegaNet
from .attention import Attention, KVCache, attention_mask
from .base import OneTokenStep, keyword_options, show_options, takes_options
from .memory_block import check_packed
from .titans import Titans


class PersistentAttention(Attention):
    """The ``attention`` mixer plus ``num_persistent`` learnable key/value pairs per head that every
    query sees (Titans §3.3 persistent memory; position-free, so no rotary)."""

    def __init__(self, d_model: int, num_heads: int, window: int | None, num_persistent: int) -> None:
        super().__init__(d_model, num_heads, window=window)
        self.num_persistent = num_persistent
        if num_persistent:
            self.persistent_k = nn.Parameter(torch.randn(num_persistent, num_heads, self.head_dim) * 0.02)
            self.persistent_v = nn.Parameter(torch.randn(num_persistent, num_heads, self.head_dim) * 0.02)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, S: int, cu_seqlens: Tensor | None) -> Tensor:
        if not self.num_persistent:
            return super()._attend(q, k, v, S, cu_seqlens)
        B, T = q.shape[:2]
        pk = self.persistent_k.to(k.dtype)[None].expand(B, -1, -1, -1)
        pv = self.persistent_v.to(v.dtype)[None].expand(B, -1, -1, -1)
        mask = attention_mask(T, S, self.window, q.device, cu_seqlens)
        mask = torch.cat([mask.new_ones(T, self.num_persistent), mask], 1)
        qt, kt, vt = (t.transpose(1, 2) for t in (q, torch.cat([pk, k], 1), torch.cat([pv, v], 1)))
        return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask).transpose(1, 2)


def _last_sequence_cache(cache: KVCache, cu_seqlens: Tensor) -> KVCache:
    """The KV cache of the last packed sequence alone (what running it by itself leaves): the packed
    cache holds the last ``kept`` keys of the whole row; keep those of the last sequence."""
    start, end = cu_seqlens[-2:].tolist()
    kept = cache.k.shape[1]
    first = max(start, end - kept) - (end - kept)
    return KVCache(cache.k[:, first:], cache.v[:, first:], end - start)


@dataclass
class HybridState:
    memory: Any
    attention: KVCache | None


class _Hybrid(OneTokenStep):
    """A memory mixer (``self.memory``) beside or before sliding-window attention with a persistent
    prefix (``self.attention``)."""

    def __init__(
        self,
        name: str,
        memory: nn.Module,
        d_model: int,
        num_heads: int,
        *,
        window: int = 64,
        num_persistent: int = 4,
    ) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"{name}: window must be >= 1, got {window}")
        if num_persistent < 0:
            raise ValueError(f"{name}: num_persistent must be >= 0, got {num_persistent}")
        self.name, self.memory = name, memory
        self.attention = PersistentAttention(d_model, num_heads, window, num_persistent)

    def _attend(self, x: Tensor, state: KVCache | None, cu_seqlens: Tensor | None) -> tuple[Tensor, KVCache]:
        y, cache = self.attention(x, state, cu_seqlens)
        return y, cache if cu_seqlens is None else _last_sequence_cache(cache, cu_seqlens)

    def with_attention(
        self, x: Tensor, y_mem: Tensor, cache: KVCache | None, cu_seqlens: Tensor | None
    ) -> tuple[Tensor, KVCache]:
        """The output from the block input ``x`` and the memory's output ``y_mem``: MAG or MAL."""
        raise NotImplementedError

    def forward(
        self, x: Tensor, state: HybridState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, HybridState]:
        check_packed(self.name, x, cu_seqlens, state)
        state = state or HybridState(None, None)
        y_mem, mem = self.memory(x, state.memory, cu_seqlens)
        o, att = self.with_attention(x, y_mem, state.attention, cu_seqlens)
        return o, HybridState(mem, att)

    def state_size(self, seq_len: int) -> int:
        return self.memory.state_size(seq_len) + self.attention.state_size(seq_len)


@takes_options(_Hybrid.__init__, own_last=True)
class MemoryAsGate(_Hybrid):
    """Memory as a Gate (Titans §4.2, Eq. 26–28): sliding-window attention ∥ memory, combined."""

    def __init__(
        self,
        name: str,
        memory: nn.Module,
        d_model: int,
        num_heads: int,
        *,
        combine: Literal["gate", "sum"] = "gate",
        **options: Any,
    ) -> None:
        super().__init__(name, memory, d_model, num_heads, **options)
        self.combine = combine
        self.norm_attention = RMSNorm(d_model)
        self.norm_memory = RMSNorm(d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def with_attention(
        self, x: Tensor, y_mem: Tensor, cache: KVCache | None, cu_seqlens: Tensor | None
    ) -> tuple[Tensor, KVCache]:
        y_att, att = self._attend(x, cache, cu_seqlens)
        a, m = self.norm_attention(y_att), self.norm_memory(y_mem)
        o = a * torch.sigmoid(m) if self.combine == "gate" else a + m
        return self.out(o), att


@takes_options(_Hybrid.__init__, own_last=True)
class MemoryAsLayer(_Hybrid):
    """Memory as a Layer (Titans §4.3, Eq. 29–31): the memory, then sliding-window attention."""

    def __init__(
        self,
        name: str,
        memory: nn.Module,
        d_model: int,
        num_heads: int,
        *,
        residual: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(name, memory, d_model, num_heads, **options)
        self.residual = residual

    def with_attention(
        self, x: Tensor, y_mem: Tensor, cache: KVCache | None, cu_seqlens: Tensor | None
    ) -> tuple[Tensor, KVCache]:
        o, att = self._attend(y_mem, cache, cu_seqlens)
        return (y_mem + o if self.residual else o), att


def hybrid_mixer(name: str, wrapper: type[_Hybrid], memory: type[nn.Module]) -> type[_Hybrid]:
    """Register ``name``: ``wrapper`` (:class:`MemoryAsGate` or :class:`MemoryAsLayer`) around the
    memory mixer class ``memory``. Its constructor takes the wrapper's options, then the memory's
    (renamed ``memory_<option>`` where the names clash), so configs and the registry's option checks
    see one flat list, and neither the wrapper nor the memory's arguments are written twice."""
    own = keyword_options(wrapper.__init__)
    own_names = {p.name for p in own}
    inner = {
        (f"memory_{p.name}" if p.name in own_names else p.name): p for p in keyword_options(memory.__init__)
    }

    def __init__(self: _Hybrid, d_model: int, num_heads: int, **options: Any) -> None:
        memory_options = {inner[k].name: v for k, v in options.items() if k not in own_names}
        wrapper_options = {k: v for k, v in options.items() if k in own_names}
        built = memory(d_model, num_heads, **memory_options)  # first: parameters keep their init order
        wrapper.__init__(self, name, built, d_model, num_heads, **wrapper_options)

    show_options(__init__, [*own, *(p.replace(name=n) for n, p in inner.items())])
    doc = f"{wrapper.__doc__.split(':')[0]} around the ``{memory.__name__}`` memory mixer (module docstring)."
    cls = type(
        f"{memory.__name__}{'MAG' if wrapper is MemoryAsGate else 'MAL'}",
        (wrapper,),
        {"__init__": __init__, "__doc__": doc, "__module__": __name__},
    )
    return register_mixer(name)(cls)


TitansMAG = hybrid_mixer("titans_mag", MemoryAsGate, Titans)
TitansMAL = hybrid_mixer("titans_mal", MemoryAsLayer, Titans)
AtlasMAG = hybrid_mixer("atlas_mag", MemoryAsGate, Atlas)
AtlasMAL = hybrid_mixer("atlas_mal", MemoryAsLayer, Atlas)
OmegaNetMAG = hybrid_mixer("omeganet_mag", MemoryAsGate, OmegaNet)
OmegaNetMAL = hybrid_mixer("omeganet_mal", MemoryAsLayer, OmegaNet)
