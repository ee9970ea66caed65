"""MoM: Mixture-of-Memories (Du et al., "MoM: Linear Sequence Modeling with Mixture-of-Memories",
arXiv 2502.13685, ICLR 2026). Sections and equations below are the paper's (arXiv v4).

Each layer has ``M`` gated-delta memories plus one always-on shared memory. A linear router sends each
token to its top-k memories (§3.2.1, Eq. 3-4):

    p_t = softmax(x_t W_r) (float32),   (w_t, sel_t) = TopK(p_t, k),   w_t <- w_t / sum(w_t)

Memory m has its own key/value/beta/decay projections (``MemoryWrite``) and runs the gated delta rule
(see ``gated_deltanet``) over the tokens routed to it only, in their original order; a memory a token
did not pick is untouched at that step (Eq. 5-6, Table 1; the experiments use Gated DeltaNet, §4.1).
The query ``q_t`` is shared, so mixing the memories and then reading equals reading each and mixing
(Eq. 7-8, §3.3):

    o_t = sum_{m in sel_t} w_{t,m} S^m_t^T q_t / sqrt(dk)  +  S^shared_t^T q_t / sqrt(dk)
    y_t = W_o [RMSNorm(o_t) * silu(W_g x_t)]

The shared memory (§3.2.2) is an ordinary gated-delta memory over every token with its own projections.
``A_log``/``dt_bias``, the conv weights, ``W_q``, ``W_g`` and ``W_o`` are shared by all memories (as in
the authors' code).

Dispatch (§3.3, Fig. 2). The ``k`` copies of each token are sorted (memory, sequence, time); bucket
``m * N + n`` holds memory m's tokens of sequence n in time order. Every memory's projections run once
over its contiguous slice of the sorted stream, and all non-empty buckets go through the recurrence
op in one call (packed with ``cu_seqlens``, or as a padded batch: ``bucket_layout`` below); outputs are gathered back with the inverse permutation and
weighted. No token is dropped (no capacity limit).

Decisions where the paper or its code leave room, or where we differ from the released code:

* Short convolutions. The query is conv'd over the original sequence (once, shared by all memories,
  which keeps eqs. 7-8 exact). Keys and values are conv'd over each memory's own routed sub-sequence
  with resets at bucket boundaries in training as in decoding, so nothing leaks across memories or
  sequences (the authors' released code convolves the packed stream without resets in training, so the
  first 3 tokens of each bucket mix in the previous bucket's tail). Each memory keeps its own conv
  history in the decoding state; the conv weights are shared (as released).
* Load balancing (§4.2.6, "following Switch Transformer"; in the form of the released code): the
  Switch/Mixtral loss ``M * sum_m f_m P_m`` with ``f_m`` the fraction of token slots routed to m (sums
  to k) and ``P_m`` the mean router probability. ``aux_loss: pooled`` (default) computes it once over
  the router outputs of all MoM layers together, as the released code does (it concatenates every
  layer's logits before the loss): ``f`` and ``P`` are token-weighted means over the layers, and the
  weighted loss is ``aux_loss_weight * M * sum_m f_m P_m``, equal to ``aux_loss_weight * k`` under
  uniform routing whatever the depth. ``aux_loss: per_layer`` computes the loss in each layer and the
  model sums them (``n_layers`` times the pooled scale under uniform routing, and a larger gradient
  per router). ``aux_loss_weight`` defaults to 1e-3: the paper's headline 380M results (Tables 2 and
  7) equal the 1e-3 row of its aux-scale ablation (Table 6), which is also the best row; the released
  configs use 0.01. Pooled with 1e-3 is our reading of what the paper trained; the pooled loss's
  ``f`` and ``P`` are the ones the model hands over (``RouterStats``), and all MoM layers of one
  model must share ``aux_loss_weight``.
* ``bucket_layout``: ``packed`` hands the buckets to the op with ``cu_seqlens`` (no compute on
  padding; the layout the Triton kernel takes); ``padded`` lays them out as a right-padded
  ``[P, longest]`` batch whose padding writes nothing (``k = 0, beta = 0, g = 0``). ``auto`` takes
  ``packed`` for the triton backend and ``padded`` otherwise, because the PyTorch ``chunked`` op slices
  packed sequences one by one in Python (with many buckets its backward is much slower than the padded
  batch on CPU: ``benchmarks/RESULTS.md`` section 6).
* State (``MoMState``): query conv history ``[N, K-1, H*dk]``, the routed memories' conv histories and
  matrices with leading dims ``[N, M]``, and the shared memory's with ``[N]``.

MQAR (``configs/mqar/{gated_deltanet,mom}.yaml``, equal width: MoM's extra memories add parameters):
trained to the 0.99 stop, both solve the task and MoM gets there first on both seeds tried, with an equal
or higher final accuracy, so the paper's recall claim (MoM >= Gated DeltaNet at equal width) holds on
this setting. On a shorter schedule that ends before convergence one seed put MoM behind. Figures,
settings and dates: ``benchmarks/RESULTS.md`` section 7 ("MoM runs").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import register_mixer
from .base import takes_options
from .gated_deltanet import (
    GatedDeltaCore,
    MemoryState,
    check_state_batch,
    num_sequences,
)


@dataclass
class MoMState:
    conv_q: Tensor  # [N, K-1, H*dk]
    routed: MemoryState  # leading dims [N, M]
    shared: MemoryState | None  # leading dim [N]


def route(logits: Tensor, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Router logits ``[..., M]`` -> (probabilities in at least float32, renormalised top-k weights,
    indices)."""
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    weights, selected = probs.topk(topk, dim=-1)
    return probs, weights / weights.sum(-1, keepdim=True), selected


def routing_fraction(selected: Tensor, num_memories: int, dtype: torch.dtype) -> Tensor:
    """``f_m``: the fraction of tokens ``selected [L, k]`` routed to each memory (sums to k)."""
    return F.one_hot(selected, num_memories).to(dtype).sum(1).mean(0)


def load_balancing_loss(probs: Tensor, selected: Tensor) -> Tensor:
    """``M * sum_m f_m P_m`` over tokens: ``probs [L, M]``, ``selected [L, k]``. Equals k when the
    routing is uniform."""
    M = probs.shape[-1]
    return M * (routing_fraction(selected, M, probs.dtype) * probs.mean(0)).sum()


@dataclass
class RouterStats:
    """One layer's routing statistics for the pooled load-balancing loss."""

    frac: Tensor  # [M] f_m of this layer (no gradient: top-k is not differentiated)
    mean_probs: Tensor  # [M] P_m of this layer
    tokens: int  # number of tokens the means are over
    weight: float  # aux_loss_weight of the layer


def pooled_load_balancing_loss(stats: Sequence[RouterStats]) -> Tensor:
    """``weight * M * sum_m f_m P_m`` with ``f`` and ``P`` over the tokens of all layers together,
    which equals the loss over the concatenated router outputs of the layers (the released code)."""
    weights = {s.weight for s in stats}
    if len(weights) != 1:
        raise ValueError(
            f"mom: aux_loss=pooled needs one aux_loss_weight for all MoM layers, got {sorted(weights)}"
        )
    total = sum(s.tokens for s in stats)
    frac = sum(s.frac * (s.tokens / total) for s in stats)
    mean_probs = sum(s.mean_probs * (s.tokens / total) for s in stats)
    return weights.pop() * frac.numel() * (frac * mean_probs).sum()


@dataclass
class Dispatch:
    """Where each routed token copy goes. Slots are ``(token, j)`` for the j-th choice of a token,
    flattened as ``token * k + j``; the sorted stream orders them by (memory, sequence, time)."""

    token: Tensor  # [L * k] source token (flat index) of each position in the sorted stream
    inverse: Tensor  # [L * k] position in the sorted stream of each slot
    memory_sizes: list[int]  # number of sorted positions of each memory (host ints)
    buckets: Tensor  # [P] ids m * N + n of the non-empty buckets, in stream order
    cu_seqlens: Tensor  # [P + 1] boundaries of the non-empty buckets in the sorted stream
    longest: int  # length of the longest bucket


def dispatch(selected: Tensor, seq_ids: Tensor, num_seqs: int, num_memories: int) -> Dispatch:
    """Sort the token copies ``selected [L, k]`` (memory choices of flat tokens whose sequence ids
    ``seq_ids [L]`` are non-decreasing) into per-(memory, sequence) buckets."""
    L, k = selected.shape
    device = selected.device
    mem = selected.reshape(-1)
    slot_token = torch.arange(L, device=device).repeat_interleave(k)
    # unique keys (a token picks a memory at most once), so the order within a bucket is time order
    order = torch.argsort(mem * L + slot_token, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    counts = torch.bincount(mem * num_seqs + seq_ids[slot_token], minlength=num_memories * num_seqs)
    buckets = counts.nonzero().flatten()
    cu = F.pad(counts[buckets].cumsum(0), (1, 0))
    sizes = counts.view(num_memories, num_seqs).sum(1).tolist()
    return Dispatch(slot_token[order], inverse, sizes, buckets, cu, int(counts.max()))


def _flat_buckets(t: Tensor) -> Tensor:
    """``[N, M, ...]`` per-sequence-per-memory tensor -> ``[M * N, ...]`` in bucket order ``m * N + n``."""
    return t.transpose(0, 1).flatten(0, 1)


def _unflat_buckets(t: Tensor, N: int) -> Tensor:
    return t.unflatten(0, (-1, N)).transpose(0, 1)


@register_mixer("mom")
@takes_options(GatedDeltaCore.__init__)
class MoM(GatedDeltaCore):
    """Mixture of gated-delta memories. Options: ``num_memories`` (M), ``topk`` (k), ``shared_memory``,
    ``aux_loss`` (``pooled`` over layers or ``per_layer``) and ``aux_loss_weight`` of the
    load-balancing loss, ``bucket_layout`` of the recurrence call, and the gated-delta options ``head_dim``,
    ``expand_v``, ``conv_size``, ``chunk_size``, ``backend``, ``norm_eps``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        num_memories: int = 4,
        topk: int = 2,
        shared_memory: bool = True,
        aux_loss: Literal["pooled", "per_layer"] = "pooled",
        aux_loss_weight: float = 1e-3,
        bucket_layout: Literal["auto", "packed", "padded"] = "auto",
        **options: Any,
    ) -> None:
        super().__init__("mom", d_model, num_heads, **options)
        if num_memories < 1:
            raise ValueError(f"mom: num_memories must be >= 1, got {num_memories}")
        if not 1 <= topk <= num_memories:
            raise ValueError(f"mom: topk={topk} must be in [1, num_memories={num_memories}]")
        if aux_loss_weight < 0:
            raise ValueError(f"mom: aux_loss_weight must be >= 0, got {aux_loss_weight}")
        if aux_loss not in ("pooled", "per_layer"):
            raise ValueError(f"mom: aux_loss={aux_loss!r} is not one of ['pooled', 'per_layer']")
        if bucket_layout not in ("auto", "packed", "padded"):
            raise ValueError(
                f"mom: bucket_layout={bucket_layout!r} is not one of ['auto', 'packed', 'padded']"
            )
        self.num_memories, self.topk, self.aux_loss_weight = num_memories, topk, aux_loss_weight
        self.bucket_layout, self.aux_loss_mode = bucket_layout, aux_loss
        self.router = nn.Linear(d_model, num_memories, bias=False)
        self.memories = nn.ModuleList(self.new_write(d_model) for _ in range(num_memories))
        self.shared = self.new_write(d_model) if shared_memory else None
        # set by each training forward: ``aux_loss`` (per_layer) or ``router_stats`` (pooled, which
        # the model combines over the layers: ``LanguageModel.aux_loss``)
        self.aux_loss: Tensor | None = None
        self.router_stats: RouterStats | None = None
        self.init_linears()

    def memory_output(
        self, x: Tensor, state: MoMState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, MoMState]:
        """The mixed memory read-out ``o [B, T, H, dv]`` before the output norm, gate and projection."""
        N = num_sequences(self.owner, x, cu_seqlens)
        if state is not None:
            check_state_batch(self.owner, state.conv_q.shape[0], N)
        B, T, D = x.shape
        L, k = B * T, self.topk
        q, conv_q = self.query(x, state.conv_q if state else None, cu_seqlens)

        probs, weights, selected = route(self.router(x).reshape(L, -1), k)
        self._set_balance_terms(probs, selected)
        if cu_seqlens is None:
            seq_ids = torch.arange(L, device=x.device) // T
        else:
            seq_ids = torch.searchsorted(
                cu_seqlens.to(x.device)[1:].contiguous(), torch.arange(L, device=x.device), right=True
            )
        d = dispatch(selected, seq_ids, N, self.num_memories)
        o_sorted, routed = self._run_routed(x.reshape(L, D), q.reshape(L, *q.shape[2:]), d, state, N)
        o_slots = o_sorted[d.inverse].unflatten(0, (L, k))  # [L, k, H, dv]
        o = (o_slots * weights.to(o_slots.dtype)[:, :, None, None]).sum(1).view(B, T, *o_slots.shape[2:])

        shared = None
        if self.shared is not None:
            prev = state.shared if state else None
            ks, vs, g, beta, conv_k, conv_v = self.keys_values(
                self.shared(x), prev.conv_k if prev else None, prev.conv_v if prev else None, cu_seqlens
            )
            o_shared, memory = self.recur(q, ks, vs, g, beta, prev.memory if prev else None, cu_seqlens)
            o = o + o_shared
            shared = MemoryState(conv_k, conv_v, memory)
        return o, MoMState(conv_q, routed, shared)

    def _set_balance_terms(self, probs: Tensor, selected: Tensor) -> None:
        self.aux_loss, self.router_stats = None, None
        if not self.training:
            return
        if self.aux_loss_mode == "per_layer":
            self.aux_loss = self.aux_loss_weight * load_balancing_loss(probs, selected)
        else:
            frac = routing_fraction(selected, self.num_memories, probs.dtype)
            self.router_stats = RouterStats(frac, probs.mean(0), probs.shape[0], self.aux_loss_weight)

    def _run_routed(
        self, x: Tensor, q: Tensor, d: Dispatch, state: MoMState | None, N: int
    ) -> tuple[Tensor, MemoryState]:
        """Every memory over its buckets: returns outputs in sorted-stream order and the new states."""
        xs = x[d.token]
        parts = [mem(chunk) for mem, chunk in zip(self.memories, xs.split(d.memory_sizes)) if chunk.shape[0]]
        kvba = tuple(torch.cat(p) for p in zip(*parts))
        K1 = self.q_conv.kernel_size - 1
        if state is not None:
            conv_k, conv_v = _flat_buckets(state.routed.conv_k), _flat_buckets(state.routed.conv_v)
            memory = _flat_buckets(state.routed.memory)
        else:
            P = self.num_memories * N
            conv_k = x.new_zeros(P, K1, self.key_dim)
            conv_v = x.new_zeros(P, K1, self.value_dim)
            memory = None
        b = d.buckets
        k, v, g, beta, new_ck, new_cv = self.keys_values(
            tuple(t[None] for t in kvba), conv_k[b], conv_v[b], d.cu_seqlens
        )
        o, final = self._recur_buckets(
            q[d.token][None], k, v, g, beta, None if memory is None else memory[b], d
        )
        if memory is None:
            memory = final.new_zeros(self.num_memories * N, *final.shape[1:])
        routed = MemoryState(
            _unflat_buckets(conv_k.index_copy(0, b, new_ck), N),
            _unflat_buckets(conv_v.index_copy(0, b, new_cv), N),
            _unflat_buckets(memory.index_copy(0, b, final.to(memory.dtype)), N),
        )
        return o[0], routed

    def _recur_buckets(
        self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, initial: Tensor | None, d: Dispatch
    ) -> tuple[Tensor, Tensor]:
        """The recurrence over the packed buckets, either packed (``cu_seqlens``) or laid out as a
        right-padded ``[P, longest]`` batch whose padding writes nothing (``k = 0, beta = 0, g = 0``
        leave the memory as it is), so both give the same outputs and final states."""
        layout = self.bucket_layout
        if layout == "auto":
            # a kernel runs packed buckets in one launch; the PyTorch op would slice them one by one
            layout = "packed" if self.op.packs(self.backend, q.device) else "padded"
        if layout == "packed":
            return self.recur(q, k, v, g, beta, initial, d.cu_seqlens)
        P, longest = d.buckets.numel(), d.longest
        lens = d.cu_seqlens.diff()
        row_bucket = torch.repeat_interleave(torch.arange(P, device=q.device), lens)
        slot = row_bucket * longest + torch.arange(q.shape[1], device=q.device) - d.cu_seqlens[row_bucket]

        def pad(t: Tensor) -> Tensor:
            return t.new_zeros(P * longest, *t.shape[2:]).index_copy(0, slot, t[0]).unflatten(0, (P, longest))

        o, final = self.recur(pad(q), pad(k), pad(v), pad(g), pad(beta), initial, None)
        return o.flatten(0, 1)[slot][None], final

    def state_size(self, seq_len: int) -> int:
        memories = self.num_memories + (self.shared is not None)
        return memories * self.memory_state_size() + self.conv_state_size(memories)
