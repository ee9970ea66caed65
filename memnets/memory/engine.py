"""The memory recurrence, token by token (reference) and chunk by chunk (parallel dual form).

Semantics shared by both (Titans Eq. 13-16; the chunked training of TTT §2.4, Titans §3.2, Miras §5.3,
ATLAS §3.3): positions are split into chunks of ``chunk_size`` tokens
counted from the start of the sequence; every token's inner gradient is taken at the weights the
memory had at the start of its chunk, W_ref(t) = W_{t'}; momentum and retention then run per token
(:mod:`memnets.memory.rule`) and token t reads ``y_t = M(q_t; W_t)``, the memory *after* its own write
(Titans Eq. 15, TTT Eq. 5). ``chunk_size = 1`` is exact online gradient descent.

The state crosses calls exactly: :class:`MemoryState` keeps the chunk-start weights (the gradient
point) while a chunk is unfinished, so a sequence fed in pieces, or token by token for decoding, gives
the same outputs as one call.

Gates (``lr``, ``mom``, ``keep``) are per token and head, ``[B, T, H]``, or per token, head and
channel, ``[B, T, H, N]``: one entry per output unit of each weight matrix (N = the sum of their
``d_out``, :func:`gate_units`), so every matrix decays and steps column by column (Titans App. C's
diag(1 − α_t), diag(η_t), diag(θ_t), applied to each layer; Miras §5.4's channel-wise gates). Both
layouts run through the same code (:class:`~memnets.memory.rule.ChunkCoefficients`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..compiled import chunk_step
from .architecture import MemoryMLP
from .bias import AttentionalBias, L2Bias
from .rule import ChunkCoefficients, chunk_coefficients, safe_log, unit_slice
from .segments import segment_reads, segments, split_started_chunk

Weights = tuple[Tensor, ...]
ChunkEnd = Callable[[Weights], Weights]


@dataclass
class MemoryState:
    """Recurrent state of a batch of per-head memories.

    ``weights``: W_t per layer ``[B, H, d_in, d_out]`` after the last token seen.
    ``momentum``: S_t per layer (same shapes), ``None`` for a rule without momentum.
    ``anchor``: the weights at the start of the unfinished chunk (where the remaining tokens of the
    chunk take their gradients); ``None`` when ``offset == 0``.
    ``offset``: tokens of the current chunk already absorbed (0 = at a chunk boundary).
    """

    weights: Weights
    momentum: Weights | None = None
    anchor: Weights | None = None
    offset: int = 0

    def detach(self) -> MemoryState:
        def d(ws: Weights | None) -> Weights | None:
            return None if ws is None else tuple(w.detach() for w in ws)

        return MemoryState(d(self.weights), d(self.momentum), d(self.anchor), self.offset)  # type: ignore[arg-type]


def initial_state(
    arch: MemoryMLP, batch: int, momentum: bool, dtype: torch.dtype | None = None
) -> MemoryState:
    """The learnable initial weights broadcast to the batch, zero momentum if the rule has one."""
    weights = arch.initial_weights(batch, dtype)
    mom = tuple(torch.zeros_like(w) for w in weights) if momentum else None
    return MemoryState(weights, mom)


# -------------------------------------------------------------------------------------------------
# input checks shared by both paths


def gate_units(arch: MemoryMLP) -> tuple[int, ...]:
    """The output units of each weight matrix: a per-channel gate has ``sum(gate_units(arch))``
    entries per token and head, the first ``units[0]`` for the first matrix's columns, and so on.
    One gate per unit gates the unit's incoming weights, so the choice is the same at every depth
    (depth 1: Titans App. C's diag gates over the memory's output channels)."""
    return tuple(d_out for _, d_out in arch.shapes)


def check_gates(name: str, arch: MemoryMLP, B: int, T: int, H: int, **gates: Tensor | None) -> None:
    """Every given gate ``[B, T, H]`` (per head) or ``[B, T, H, N]`` (per channel), all alike."""
    units = gate_units(arch)
    head, channel = (B, T, H), (B, T, H, sum(units))
    given = {n: g for n, g in gates.items() if g is not None}
    for gate, g in given.items():
        if tuple(g.shape) not in (head, channel):
            raise ValueError(
                f"{name}: {gate} must have shape [B, T, H] = {list(head)}, got {tuple(g.shape)} (or "
                f"[B, T, H, N] = {list(channel)} for per-channel gates, N = the output units {units} "
                "of the memory's weight matrices)"
            )
    if len({g.dim() for g in given.values()}) > 1:
        shapes = {n: tuple(g.shape) for n, g in given.items()}
        raise ValueError(f"{name}: the gates must be all per head or all per channel, got {shapes}")


def channel_units(arch: MemoryMLP, lr: Tensor) -> tuple[int, ...] | None:
    """:func:`gate_units` when the gates are per channel (``lr [B, T, H, N]``), else ``None``."""
    return gate_units(arch) if lr.dim() == 4 else None


def gate_rows(g: Tensor, units: tuple[int, ...]) -> tuple[Tensor, ...]:
    """A gate ``[B, H, L]`` or ``[B, H, L, N]`` as one multiplier per weight matrix of that matrix's
    per-token outputs ``[B, H, L, d_out]`` (``[B, H, L, 1]`` per head)."""
    return (g[..., None],) * len(units) if g.dim() == 3 else g.split(units, -1)


def token_gates(g: Tensor | None, t: int, units: tuple[int, ...]) -> tuple[Tensor | float, ...]:
    """Token ``t``'s gate (``[B, H, T]`` or ``[B, H, T, N]``; ``None`` = 1) as one multiplier per weight
    matrix ``[B, H, d_in, d_out]``: the whole matrix per head, column by column per channel."""
    if g is None:
        return (1.0,) * len(units)
    return tuple(r[:, :, t, None] for r in gate_rows(g, units))


def check_inputs(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
    state: MemoryState | None,
    chunk_size: int,
    name: str = "memory",
) -> None:
    """The checks every path of the memory makes on its inputs (the engine's and the Triton kernels'
    wrappers); errors start with ``name``."""
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
    d_key = arch.shapes[0][0]  # the values' width, or wider: feature maps of q and k (FeatureMemoryMLP)
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{name}: q, k, v must share the shape [B, T, H, D] (q, k [B, T, H, Dk] for keys wider than "
            f"values); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, D = q.shape
    if arch.num_heads != H or d_key != D or arch.dim != v.shape[-1]:
        raise ValueError(
            f"{name}: q has H={H}, D={D} but the memory has H={arch.num_heads}, D={d_key}"
            + ("" if d_key == arch.dim else f" (values: {v.shape[-1]} against the memory's {arch.dim})")
        )
    check_gates(name, arch, B, T, H, lr=lr, mom=mom, keep=keep)
    if state is not None:
        if (state.momentum is None) != (mom is None):
            raise ValueError(
                f"{name}: the state's momentum and the mom argument must be given together "
                f"(state has momentum: {state.momentum is not None}, mom given: {mom is not None})"
            )
        if not 0 <= state.offset < chunk_size:
            raise ValueError(f"{name}: state.offset={state.offset} must lie in [0, chunk_size={chunk_size})")
        if state.offset > 0 and state.anchor is None:
            raise ValueError(f"{name}: state.offset={state.offset} > 0 needs state.anchor")


def _bhl(x: Tensor | None, dtype: torch.dtype, log: bool = False) -> Tensor | None:
    """``[B, T, H, ...] -> [B, H, T, ...]`` in the compute dtype; ``log``: a gate as its log (the
    chunked forms' segment sums, :mod:`memnets.memory.rule`)."""
    if x is None:
        return None
    x = x.transpose(1, 2).to(dtype)
    return safe_log(x) if log else x


# -------------------------------------------------------------------------------------------------
# token-by-token reference


def _inner_grad(
    arch: MemoryMLP,
    bias: AttentionalBias,
    anchor: Weights,
    k: Tensor,
    v: Tensor,
    params: Tensor | None,
    create_graph: bool,
) -> Weights:
    """∂ℓ(M(k; W), v)/∂W at W = ``anchor`` by autograd, per (batch, head): the losses of independent
    memories are summed, which leaves each memory's own gradient. The gradient is taken w.r.t. a
    fresh alias of the weights, so it is the partial derivative even when k or v themselves depend
    on earlier weights (Titans MAC writes projections of an attention output that read the memory)."""
    anchor = tuple(w.view_as(w) if w.requires_grad else w.detach().requires_grad_() for w in anchor)
    loss = bias.loss(arch.read(anchor, k), v, params).sum()
    return torch.autograd.grad(loss, anchor, create_graph=create_graph)


def token_update(
    W: Weights,
    S: Weights | None,
    u: Weights,
    t: int,
    units: tuple[int, ...],
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
) -> tuple[Weights, Weights | None]:
    """Token ``t``'s step of the rule (:mod:`~memnets.memory.rule`) from its gradient ``u``:
    S_t = mom_t S_{t−1} − lr_t u_t, W_t = keep_t W_{t−1} + S_t; without momentum (``mom`` and ``S``
    ``None``) W_t = keep_t W_{t−1} − lr_t u_t. Gates ``[B, H, T]`` or ``[B, H, T, N]`` (``units``)."""
    a = token_gates(lr, t, units)
    if mom is not None:
        S = tuple(m * s - ai * g for m, ai, s, g in zip(token_gates(mom, t, units), a, S, u))  # type: ignore[arg-type]
        step = S
    else:
        step = tuple(-ai * g for ai, g in zip(a, u))
    return tuple(kp * w + s for kp, w, s in zip(token_gates(keep, t, units), W, step)), S


def memory_reference(
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
    bias: AttentionalBias | None = None,
    bias_params: Tensor | None = None,
    chunk_end: ChunkEnd | None = None,
) -> tuple[Tensor, MemoryState]:
    """Token-by-token loop with the chunked semantics; the inner gradient comes from autograd on
    ``bias.loss``. For tests: slow (T sequential steps with a double backward), readable, exact.

    Shapes as in :func:`memory_chunked`."""
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size)
    bias = bias or L2Bias()
    B, T = q.shape[:2]
    dtype = arch.init_weights[0].dtype
    qh, kh, vh = (_bhl(t, dtype) for t in (q, k, v))
    lr_, mom_, keep_ = (_bhl(g, dtype) for g in (lr, mom, keep))
    bp = _bhl(bias_params, dtype)
    st = state or initial_state(arch, B, mom is not None, dtype)
    W, S, anchor, offset = st.weights, st.momentum, st.anchor, st.offset
    units = gate_units(arch)
    create_graph = torch.is_grad_enabled()
    ys = []
    with torch.enable_grad():
        for seg in segments(T, chunk_size, offset, most=1):
            if seg.offset == 0:
                anchor = W
            u = _inner_grad(arch, bias, anchor, *seg.take(kh, vh, bp), create_graph)  # type: ignore[arg-type]
            W, S = token_update(W, S, u, seg.span.start, units, lr_, mom_, keep_)
            ys.append(arch.read(W, qh[:, :, seg.span]))
            if seg.ends_chunk and chunk_end is not None:
                W = chunk_end(W)
    offset = (offset + T) % chunk_size
    y, out = segment_reads(ys, vh, q.dtype), MemoryState(W, S, anchor if offset else None, offset)
    return (y, out) if create_graph else (y.detach(), out.detach())


# -------------------------------------------------------------------------------------------------
# chunked (parallel) dual form


@dataclass
class KeyPath:
    """Per-layer rank-one factors of the tokens' gradients: u_j^l = xs[l][j]ᵀ deltas[l][j]."""

    xs: list[Tensor]  # inputs of each layer on the key path, [B, H, L, d_in]
    deltas: list[Tensor]  # d loss / d (layer output), [B, H, L, d_out]


def key_path(
    arch: MemoryMLP, weights: Weights, k: Tensor, v: Tensor, bias: AttentionalBias, params: Tensor | None
) -> KeyPath:
    """Forward the keys through M(·; W) and backpropagate the bias derivative by hand (the key path of the
    dual form, see :func:`dual_read`):
    gives every token's gradient in factored form without materialising it."""
    xs, zs = [k], []
    for i, w in enumerate(weights):
        z = xs[-1] @ w
        zs.append(z)
        if i < arch.depth - 1:
            xs.append(arch.act(z))
    dout = bias.grad(arch.output(zs[-1], k), v, params)
    delta = arch.output_grad(zs[-1], dout)
    deltas = [delta]
    for i in range(arch.depth - 2, -1, -1):
        delta = arch.act_backward(zs[i], delta @ weights[i + 1].transpose(-1, -2))
        deltas.insert(0, delta)
    return KeyPath(xs, deltas)


def _scaled_matmul(c: ChunkCoefficients, s: Tensor, h: Tensor, w: Tensor) -> Tensor:
    """``diag(s) (h w)`` for a per-token coefficient ``s`` of ``c``'s layout, ``h [..., L, d_in]``,
    ``w [..., d_in, d_out]``. Autograd keeps one new tensor either way, ``s ⊙ h`` (for w's gradient)
    or ``h w`` (for s's): with per-head gates scale the narrower, so a widening layer (the MLP
    memory's first) keeps ``[L, d_in]``, not ``[L, d_out]``; per-channel gates scale the outputs."""
    if c.units is None and h.shape[-1] < w.shape[-1]:
        return (s[..., None] * h) @ w
    return c.rows(s) * (h @ w)


def dual_layer(
    h: Tensor, i: int, W0: Weights, S0: Weights | None, kp: KeyPath, c: ChunkCoefficients
) -> Tensor:
    """``h_t @ W^i_t`` for every read row t of a segment, W_t = β_t W_0 + f_t S_0 − Σ_j G[t,j] u_j, without
    forming W_t: Ẑ = β ⊙ (X̂ W_0) + f ⊙ (X̂ S_0) − (G ⊙ X̂ Xᵀ) Δ (TTT's dual form, arXiv 2407.04620 §2.5,
    derived here with momentum and decay; β = 1, f = 0, G = tril(lr) gives TTT's). Per-channel gates
    scale Δ's columns instead (:meth:`~memnets.memory.rule.ChunkCoefficients.mix`)."""
    ci = c.layer(i)
    z = _scaled_matmul(ci, ci.beta, h, W0[i]) - ci.mix(h @ kp.xs[i].transpose(-1, -2), kp.deltas[i])
    if S0 is not None:
        z = z + _scaled_matmul(ci, ci.f, h, S0[i])  # type: ignore[arg-type]
    return z


def dual_read(
    arch: MemoryMLP,
    q: Tensor,
    W0: Weights,
    S0: Weights | None,
    kp: KeyPath,
    c: ChunkCoefficients,
    scales: Weights | None = None,
) -> Tensor:
    """Read every token of a segment with its own updated weights (:func:`dual_layer` per layer).
    ``scales`` (optional, one ``[B, H, L]`` per layer) reads with s_t W_t instead (a per-token scalar
    map of the weights, e.g. Moneta's L_q normalisation)."""
    h = q
    for i in range(arch.depth):
        z = dual_layer(h, i, W0, S0, kp, c)
        if scales is not None:
            z = z * scales[i][..., None]
        h = arch.act(z) if i < arch.depth - 1 else z
    return arch.output(h, q)


def segment_end_state(
    W0: Weights, S0: Weights | None, kp: KeyPath, c: ChunkCoefficients
) -> tuple[Weights, Weights | None]:
    """(W_L, S_L) after the last token of the segment."""
    cs = [c.layer(i) for i in range(len(W0))]
    # the last read row selected once for all layers: one select in the backward, not one per layer
    g_last = c.G[..., -1, :]
    W = tuple(
        ci.last(ci.beta[..., -1]) * w - x.transpose(-1, -2) @ (ci.rows(unit_slice(g_last, c.units, i)) * d)
        for i, (ci, w, x, d) in enumerate(zip(cs, W0, kp.xs, kp.deltas))
    )
    if S0 is None:
        return W, None
    W = tuple(w + ci.last(ci.f[..., -1]) * s for ci, w, s in zip(cs, W, S0))  # type: ignore[index]
    S = tuple(
        ci.last(ci.m_end) * s - x.transpose(-1, -2) @ (ci.rows(ci.s_coef) * d)  # type: ignore[arg-type]
        for ci, s, x, d in zip(cs, S0, kp.xs, kp.deltas)
    )
    return W, S


@chunk_step
def chunk_update(
    arch: MemoryMLP,
    bias: AttentionalBias,
    anchor: Weights,
    W: Weights,
    S: Weights | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias_params: Tensor | None,
    lr: Tensor,
    log_keep: Tensor | None,
    log_mom: Tensor | None,
    units: tuple[int, ...] | None = None,
) -> tuple[Tensor, Weights, Weights | None]:
    """One segment of :func:`memory_chunked` (``[B, H, L, ...]`` slices of one chunk): every token's
    read and the state (W, S) after the segment, gradients taken at ``anchor``; ``units``: per-channel
    gates (:func:`gate_units`). The compiled path's per-chunk step (:mod:`memnets.compiled`)."""
    kp = key_path(arch, anchor, k, v, bias, bias_params)
    c = chunk_coefficients(lr, log_keep, log_mom, units)
    y = dual_read(arch, q, W, S, kp, c)
    return (y, *segment_end_state(W, S, kp, c))


def memory_chunked(
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
    bias: AttentionalBias | None = None,
    bias_params: Tensor | None = None,
    chunk_end: ChunkEnd | None = None,
) -> tuple[Tensor, MemoryState]:
    """Run the memory over a sequence chunk by chunk (parallel inside each chunk, sequential across).

    Args:
        arch: the memory network (owns W_0 and the LayerNorm's outer parameters).
        q, k, v: ``[B, T, H, D]`` queries (read), keys and values (write).
        lr: inner step size ``[B, T, H]`` (Titans θ_t, Miras/ATLAS/TNT η_t).
        mom: momentum coefficient ``[B, T, H]`` (Titans η_t, ATLAS θ_t); ``None`` = no momentum state.
        keep: multiplier on the old weights ``[B, T, H]`` (Titans 1 − α_t, Miras/ATLAS α_t);
            ``None`` = 1. Gates may instead all be per channel, ``[B, T, H, N]`` (module docstring).
        state: :class:`MemoryState` to continue from; ``None`` = the learnable initial weights.
        chunk_size: tokens per chunk (gradients at the chunk-start weights).
        bias: attentional bias (default :class:`L2Bias`); ``bias_params``: its per-token
            parameters ``[B, T, H, ...]`` if any.
        chunk_end: optional map applied to the weights each time a chunk completes, after its last
            token was read (e.g. Moneta's ℓ_q normalisation "at the end of each chunk", Miras §5.3);
            the reference applies it at the same positions.

    Returns ``y [B, T, H, D]`` (token t reads its own updated memory) and the state after the last
    token. Runs in the dtype of ``arch``'s parameters with autocast off (the recurrence is
    accumulated in float32 at least); ``y`` is cast back to ``q``'s dtype.
    """
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size)
    bias = bias or L2Bias()
    B, T = q.shape[:2]
    dtype = arch.init_weights[0].dtype
    with torch.autocast(q.device.type, enabled=False):
        qh, kh, vh = (_bhl(t, dtype) for t in (q, k, v))
        lr_ = _bhl(lr, dtype)
        log_mom, log_keep = (_bhl(g, dtype, log=True) for g in (mom, keep))
        bp = _bhl(bias_params, dtype)
        st = state or initial_state(arch, B, mom is not None, dtype)
        W, S, anchor, offset = st.weights, st.momentum, st.anchor, st.offset
        per_token = (qh, kh, vh, bp, lr_, log_keep, log_mom)
        units = channel_units(arch, lr)
        ys = []
        for seg in segments(T, chunk_size, offset):
            if seg.offset == 0:
                anchor = W
            y, W, S = chunk_update(arch, bias, anchor, W, S, *seg.take(*per_token), units)
            ys.append(y)
            if seg.ends_chunk and chunk_end is not None:
                W = chunk_end(W)
        y = segment_reads(ys, vh, q.dtype)
    offset = (offset + T) % chunk_size
    return y, MemoryState(W, S, anchor if offset else None, offset)


def finish_chunk_then(
    run: Callable[..., tuple[Tensor, MemoryState]],
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
    state: MemoryState,
    *,
    chunk_size: int,
    bias: AttentionalBias | None = None,
    bias_params: Tensor | None = None,
    head: Callable[..., tuple[Tensor, MemoryState]] | None = None,
) -> tuple[Tensor, MemoryState]:
    """For kernels that start at chunk boundaries: finish the chunk ``state`` is in with ``head``
    (default :func:`memory_chunked`; at most ``chunk_size - 1`` tokens, e.g. decoding), then continue
    from the boundary with ``run`` (same signature as :func:`memory_chunked`; ``bias``/``bias_params``
    are passed on only when given)."""
    (*first, bp), (*tail, bp_tail) = split_started_chunk(
        state.offset, chunk_size, q, k, v, lr, mom, keep, bias_params
    )
    finish = head or memory_chunked
    y0, state = finish(arch, *first, state, chunk_size=chunk_size, bias=bias, bias_params=bp)  # type: ignore[arg-type]
    if tail[0].shape[1] == 0:  # type: ignore[union-attr]
        return y0, state
    extra = {} if bias is None and bias_params is None else {"bias": bias, "bias_params": bp_tail}
    y1, state = run(arch, *tail, state, chunk_size=chunk_size, **extra)
    return torch.cat([y0, y1], 1), state


def memory_read(arch: MemoryMLP, state: MemoryState, x: Tensor) -> Tensor:
    """Read ``x [B, T, H, D]`` with the state's current weights, no write (e.g. Titans MAC's retrieval
    ``h_t = M*_{t-1}(q_t)``, Eq. 21)."""
    dtype = state.weights[0].dtype
    with torch.autocast(x.device.type, enabled=False):
        y = arch.read(state.weights, _bhl(x, dtype))
    return y.transpose(1, 2).to(x.dtype)
