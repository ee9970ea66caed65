"""The model side of the memory kernels: the entry points the mixers call with memnets' own objects
(:class:`~memnets.memory.MemoryMLP`, the attentional biases, :class:`~memnets.memory.MemoryState`),
turned into what the kernels take (plain tensors, :class:`~memnets.kernels.specs.NetSpec` and
:class:`~memnets.kernels.specs.BiasSpec`) and back.

Each entry point is a drop-in for its PyTorch chunked form, same arguments, shapes and state:

* :func:`titans_mlp_chunked` for :func:`memnets.memory.memory_chunked` with a depth-2 MLP memory
  (Titans arXiv 2501.00663 §3.1-3.2; Moneta and Yaad, Miras arXiv 2504.13173 §5.3), and for
  :func:`memnets.memory.miras.miras_chunked` with Moneta's ℓ_q map or Memora's softmax retention;
* :func:`omega_mlp_chunked` for :func:`memnets.memory.omega.omega_chunked` without Muon (OmegaNet,
  ATLAS arXiv 2505.23735 §3.2-3.3);
* :func:`chunk_read_mlp` for :func:`memnets.memory.chunk_read.chunk_read_memory` (TNT's global memory,
  arXiv 2511.07343 §4.1);

The linear memory (depth 1) has its own entry, :func:`memnets.memory.linear_kernel.titans_linear_chunked`,
and so has Atlas with Muon once per chunk or per token, :func:`memnets.memory.muon_kernel.omega_muon_chunked`.

:func:`supports_mlp` names the reason a configuration does not run (``None`` when it does). Here live what needs the model's helpers: input checks, finishing a started chunk in
PyTorch, the per-tile coefficients of the gates (:func:`memnets.memory.chunk_coefficients`, the Omega
window's band), and the states returned (one per sequence with ``cu_seqlens``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels import mlp_memory
from ..kernels.packing import sequence_lengths
from ..kernels.precision import operand_dtype, resolve_dot_precision
from ..kernels.specs import BiasSpec, NetSpec
from . import L2Bias, MemoryMLP, MemoryState, check_inputs, chunk_coefficients, finish_chunk_then, safe_log
from .chunk_read import check_read_inputs, chunk_read_memory
from .features import FeatureMemoryMLP
from .miras import ChunkEnd, HuberBias, LpBias, LqNormalize, SimplexSoftmax, miras_chunked
from .omega import OmegaState, omega_chunked, window_band
from .rule import ChunkCoefficients
from .segments import split_started_chunk

DOT_PRECISIONS = mlp_memory.DOT_PRECISIONS
WIDE_IN_AUTO = mlp_memory.WIDE_IN_AUTO
on_chip_state_too_large = mlp_memory.on_chip_state_too_large


def _net_spec(arch: MemoryMLP) -> NetSpec:
    d_in, d_hidden = arch.shapes[0]
    return NetSpec(
        d_in=d_in,
        d_hidden=d_hidden,
        d_out=arch.dim,
        depth=arch.depth,
        activation=arch.activation,
        residual=arch.residual,
        layer_norm=arch.layer_norm,
        ln_eps=float(arch.eps),
        dtype=arch.init_weights[0].dtype,
    )


def _bias_spec(bias: object) -> BiasSpec | None:
    """The descriptor of a bias the kernels cover, else ``None``."""
    if bias is None or isinstance(bias, L2Bias):
        return BiasSpec("l2")
    if isinstance(bias, LpBias):
        return BiasSpec("lp", p=float(bias.p), eps=float(bias.eps))
    if isinstance(bias, HuberBias):
        return BiasSpec(
            "huber_norm" if bias.mode == "norm" else "huber_coord", sharpness=float(bias.sharpness)
        )
    return None


def supports_mlp(
    arch: MemoryMLP,
    bias: object = None,
    chunk_size: int | None = None,
    window: int = 1,
    no_wide: str | None = None,
) -> str | None:
    """``None`` when the MLP-memory kernels cover this memory, bias, chunk size and Omega window, else the
    reason they do not (:func:`memnets.kernels.mlp_memory.supports`; ``no_wide`` says why the
    wide-state kernels may not run here: chunk-start reads, packed sequences, ``backend="auto"``)."""
    if type(arch) not in (MemoryMLP, FeatureMemoryMLP):
        return f"memory {type(arch).__name__} (the MLP Triton kernel covers the chain MLP memory)"
    spec = _bias_spec(bias)
    if spec is None:
        return f"attentional bias {bias!r} (the MLP Triton kernel covers L2Bias, LpBias and HuberBias)"
    return mlp_memory.supports(_net_spec(arch), spec, chunk_size, window, no_wide)


def _dot_precision(name: str, dot_precision: str, q: Tensor) -> str:
    """The operand mode a kernel call runs: ``dot_precision`` checked, ``"auto"`` resolved for the type
    the products run in (:func:`memnets.kernels.precision.operand_dtype`)."""
    try:
        return resolve_dot_precision(dot_precision, operand_dtype(q))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _check_bias_params(name: str, bias: object, bias_params: Tensor | None, q: Tensor) -> None:
    spec = _bias_spec(bias)
    if spec is not None and spec.per_token:
        want = tuple(q.shape[:3]) if spec.kind == "huber_norm" else tuple(q.shape)
        if bias_params is None or tuple(bias_params.shape) != want:
            got = None if bias_params is None else tuple(bias_params.shape)
            raise ValueError(f"{name}: {bias!r} needs bias_params of shape {list(want)}, got {got}")


def _tile_gate(x: Tensor, index: Tensor, log: bool) -> Tensor:
    """A gate ``[..., T]`` gathered by :func:`memnets.kernels.packing.chunk_layout`'s ``index [NC, L]``
    into ``[..., NC, L]`` (float32, as a log-gate with ``log``); padding slots hold 0: lr 0, or gate 1
    for a log-gate."""
    x = x.float()
    x = safe_log(x) if log else x
    return F.pad(x, (0, 1))[..., index]


def tile_band(win_gate: Tensor | None, index: Tensor, prefix: int, window: int, like: Tensor) -> Tensor:
    """The Omega window's band Γ (:func:`~memnets.memory.omega.window_band`) of every tile of
    :func:`memnets.kernels.packing.chunk_layout`'s ``index [NT, L]``: ``[B, H, NT, L, prefix + L]`` from
    the window gates ``[B, T, H, window]`` (padding slots' gates 0), ``[L, prefix + L]`` without them."""
    NT, L = index.shape
    if win_gate is None:
        return window_band(None, prefix, L, window, like)
    B, _, H, _ = win_gate.shape
    gam = F.pad(win_gate.float().transpose(1, 2), (0, 0, 0, 1))[:, :, index].reshape(B, H * NT, L, window)
    return window_band(gam, prefix, L, window, like).reshape(B, H, NT, L, prefix + L)


def _sequence_states(
    weights: tuple[Tensor, ...],
    momentum: tuple[Tensor, ...] | None,
    anchor: tuple[Tensor, ...],
    lengths: list[int],
    chunk_size: int,
) -> list[MemoryState]:
    """The final :class:`MemoryState` of each packed sequence from the kernels' ``[N, ...]`` states:
    its own offset into its last chunk, and that chunk's start weights where the chunk is unfinished."""

    def one(n: int) -> MemoryState:
        offset, sl = lengths[n] % chunk_size, slice(n, n + 1)
        return MemoryState(
            tuple(w[sl] for w in weights),
            None if momentum is None else tuple(s[sl] for s in momentum),
            tuple(a[sl] for a in anchor) if offset else None,
            offset,
        )

    return [one(n) for n in range(len(lengths))]


def _run(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
    state: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    *,
    chunk_size: int,
    bias: object,
    bias_params: Tensor | None,
    read_start: bool,
    checkpoint_every: int | None,
    window: int = 1,
    win_gate: Tensor | None = None,
    lengths: list[int] | None = None,
    hidden_block: int | None = None,
    dot_precision: str = "auto",
    retention: object = None,
    lag: bool = False,
) -> tuple[Tensor, MemoryState]:
    """The MLP-memory kernels from a chunk boundary: layout, coefficients, launch; returns y and the
    state. With an Omega ``window`` > 1, ``k`` and ``v`` lead with the carried window's rows
    (``[B, P0 + T, H, D]``). With ``lengths`` (packed sequences, B = 1) every sequence's tiles start at
    its first token and the state holds one entry per sequence (the returned offset and anchor are
    then per sequence only in :func:`titans_mlp_chunked`'s list)."""
    T = q.shape[1]
    w1, w2, s1, s2 = state
    if T == 0:
        y = q.new_zeros(*q.shape[:3], v.shape[3])
        return y, MemoryState((w1, w2), None if s1 is None else (s1, s2))  # type: ignore[arg-type]
    P = window - 1
    memory = _net_spec(arch)
    layout = mlp_memory.tile_layout(
        memory,
        chunk_size,
        lengths or [T],
        q.device,
        packed=bool(lengths),
        window=window,
        hidden_block=hidden_block,
    )
    index = layout.index

    with torch.autocast(q.device.type, enabled=False):

        def gate(x: Tensor, log: bool) -> Tensor:  # [B, T, H] -> [B, H, NT, L]
            return _tile_gate(x.transpose(1, 2), index, log)

        c = _coefficients(gate, lr, mom, keep)
        G, s_coef = c.G, c.s_coef
        if P:
            # the Omega window: G -> G·Γ over each tile's P + L key rows (memnets.memory.omega)
            band = tile_band(win_gate, index, P, window, G)
            G = G @ band
            s_coef = None if s_coef is None else (s_coef[..., None, :] @ band)[..., 0, :]
        y, weights, momentum, anchor = mlp_memory.mlp_memory_chunked(
            q, k, v, c.beta, c.f, G, c.m_end, s_coef, w1, w2, s1, s2,
            memory=memory, bias=_bias_spec(bias), layout=layout, chunk_size=chunk_size,  # type: ignore[arg-type]
            bias_params=bias_params, ln_weight=getattr(arch, "norm_weight", None),
            ln_bias=getattr(arch, "norm_bias", None), read_start=read_start, window=window,
            checkpoint_every=checkpoint_every, dot_precision=dot_precision, hidden_block=hidden_block,
            **_retention_options(retention), lag=lag,
        )  # fmt: skip
    offset = T % chunk_size
    keep_anchor = offset or lengths  # packed: the caller picks each sequence's
    return y, MemoryState(weights, momentum, anchor if keep_anchor else None, offset)


def _lq_map(retention: object) -> tuple[str, LqNormalize | None]:
    """Where Moneta's ℓ_q map of ``retention`` applies ("end_map": at chunk ends, ``ChunkEnd``; "token_map":
    on every token's accumulator) and the map (``None`` for any other retention)."""
    if isinstance(retention, ChunkEnd):
        return "end_map", retention.retention if isinstance(retention.retention, LqNormalize) else None
    return "token_map", retention if isinstance(retention, LqNormalize) else None


def _retention_options(retention: object) -> dict[str, object]:
    """The launch options of Moneta's map or Memora's softmax (none for identity retention)."""
    if isinstance(retention, SimplexSoftmax):
        return {"simplex_scale": float(retention.scale)}
    where, lq = _lq_map(retention)
    if lq is None:
        return {}
    return {where: lq.map, "end_q": float(lq.q), "end_floor": float(lq.floor)}


def supports_retention(
    arch: MemoryMLP,
    bias: object,
    chunk_size: int,
    retention: object,
    no_wide: str | None = None,
    lag: bool = False,
) -> str | None:
    """``None`` when the MLP kernels cover the memory with ``retention`` (and Memora's ``lag`` token),
    else the reason. Beyond identity retention (``None``: :func:`supports_mlp`) they apply Moneta's ℓ_q
    map (:class:`~memnets.memory.miras.LqNormalize`) on every token's accumulator (the default, Miras
    Eq. 24) or at chunk ends only (:class:`~memnets.memory.miras.ChunkEnd` of it,
    ``normalize_at="chunk_end"``, Miras §5.3's parallel form), and Memora's softmax
    (:class:`~memnets.memory.miras.SimplexSoftmax`, Eq. 27, with or without the lag token), in the
    whole-state and the wide-state kernels."""
    if lag and not isinstance(retention, SimplexSoftmax):
        return "the lag token without Memora's softmax retention (the Triton kernel has it with the softmax)"
    return retention_reason(retention) or supports_mlp(arch, bias, chunk_size, no_wide=no_wide)


def retention_reason(retention: object) -> str | None:
    """Why the MLP kernels do not apply ``retention`` (``None``: identity retention, Moneta's ℓ_q map or
    Memora's softmax)."""
    if retention is None or isinstance(retention, SimplexSoftmax) or _lq_map(retention)[1] is not None:
        return None
    return (
        f"the retention map {retention!r} (the Triton kernel covers identity retention, Moneta's ℓ_q map "
        "and Memora's softmax)"
    )


def _call_reason(
    arch: MemoryMLP,
    bias: object,
    chunk_size: int,
    window: int,
    cu_seqlens: Tensor | None,
    hidden_block: int | None,
) -> str | None:
    """Why the kernels do not run this call (``None`` if they do): :func:`supports_mlp`, packed sequences
    where the wide-state kernels would run (they take none), and a ``hidden_block`` that asks for them."""
    reason = supports_mlp(
        arch, bias, chunk_size, window, no_wide=None if cu_seqlens is None else "packed sequences"
    )
    if reason is None and hidden_block is not None:
        reason = "packed sequences in the wide-state kernels" if cu_seqlens is not None else None
        reason = reason or mlp_memory.supports_wide(arch.dim, chunk_size, hidden_block, window - 1)
    return reason


def _check_boundary(name: str, lengths: list[int] | None, offset: int) -> None:
    """Packed sequences start from chunk boundaries (a state inside a chunk is one sequence's)."""
    if lengths is not None and offset > 0:
        raise ValueError(
            f"{name}: with cu_seqlens the state must be at a chunk boundary, got offset {offset}"
        )


def _start(
    name: str,
    arch: MemoryMLP,
    q: Tensor,
    state: MemoryState | None,
    momentum: bool,
    lengths: list[int] | None,
) -> tuple:
    """The kernels' starting (w1, w2, s1, s2): ``state``'s, else the initial weights, one row per
    batch row of ``q`` or, packed (``lengths``), per sequence."""
    B = q.shape[0] if lengths is None else len(lengths)
    if state is None:
        w1, w2 = (w[None].expand(B, *w.shape) for w in arch.init_weights)
        return (w1, w2, torch.zeros_like(w1), torch.zeros_like(w2)) if momentum else (w1, w2, None, None)
    if lengths is not None and state.weights[0].shape[0] != len(lengths):
        raise ValueError(
            f"{name}: the state must hold one entry per packed sequence ({len(lengths)}), got "
            f"weights of shape {tuple(state.weights[0].shape)}"
        )
    s1, s2 = (None, None) if state.momentum is None else state.momentum
    return (*state.weights, s1, s2)


def _coefficients(
    gate: Callable[[Tensor, bool], Tensor], lr: Tensor, mom: Tensor | None, keep: Tensor | None
) -> ChunkCoefficients:
    """:func:`~memnets.memory.chunk_coefficients` of the gates laid out as a kernel's tiles
    (``gate(x, log)``)."""
    return chunk_coefficients(
        gate(lr, False), None if keep is None else gate(keep, True), None if mom is None else gate(mom, True)
    )


def titans_mlp_chunked(
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
    bias: object = None,
    bias_params: Tensor | None = None,
    checkpoint_every: int | None = None,
    dot_precision: str = "auto",
    cu_seqlens: Tensor | None = None,
    hidden_block: int | None = None,
    retention: object = None,
    lag: bool = False,
) -> tuple[Tensor, MemoryState | list[MemoryState]]:
    """Drop-in for ``memory_chunked(arch, q, k, v, lr, mom, keep, state, chunk_size=chunk_size,
    bias=bias, bias_params=bias_params)`` for a depth-2 ``arch`` (see :func:`supports_mlp`). Same shapes and
    state: ``q, k, v [B, T, H, D]``, gates ``[B, T, H]``; returns ``y`` in ``q``'s dtype and the
    :class:`MemoryState` after the last token (float32). ``checkpoint_every``: chunks between the
    backward's saved states (default ⌈√chunks⌉).

    ``cu_seqlens`` (``[N + 1]`` offsets, B = 1) packs N independent sequences, all in one launch: each
    starts from its own state (``state`` holds ``[N, H, ...]`` weights and momenta at a chunk boundary;
    default the learned initial weights) and its chunks restart at its first token, so the result is
    this function run on every sequence alone. The state returned is then the list of the N sequences'
    final states (each ``[1, H, ...]``, continuing its sequence exactly).

    ``hidden_block``: run the wide-state kernels (:mod:`memnets.kernels.mlp_memory.wide_forward`) with
    the hidden width in blocks of this many columns; ``None``: they run, with their default block,
    only where the state does not fit on chip (:func:`on_chip_state_too_large`).

    ``dot_precision`` (``"auto"`` or ``DOT_PRECISIONS``): the matmuls' operands. "auto" (default)
    follows the inputs (:func:`resolve_dot_precision`): half inputs, or autocast to a half type, give
    half operands, float32 inputs "tf32x3" (float32 accuracy); "tf32", "float16" and "bfloat16" round
    the operands (the state included, accumulation stays float32) for 3x / 6x the tensor-core rate
    on a GPU. Float16 is tested here against float16's
    tolerance; tf32 and bfloat16 only on a GPU (the interpreter computes tf32 in float32 and
    mishandles bfloat16 dots).

    ``retention``, ``lag``: Moneta's ℓ_q map (on every token's accumulator, Miras Eq. 24, or at chunk
    ends, §5.3's parallel form) or Memora's softmax with or without its lag token (Eq. 27, §5.3), as
    ``miras_chunked`` takes them (:func:`supports_retention`); the drop-in is then for
    ``miras_chunked(..., retention=retention, lag=lag)``, in the whole-state and the wide-state kernels.
    """
    name = "titans_mlp_chunked"
    dot_precision = _dot_precision(name, dot_precision, q)
    reason = _call_reason(arch, bias, chunk_size, 1, cu_seqlens, hidden_block)
    if reason is None and (retention is not None or lag):
        reason = supports_retention(arch, bias, chunk_size, retention, None, lag)
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size, name)
    _check_bias_params(name, bias, bias_params, q)
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"{name}: checkpoint_every must be >= 1 (chunks) or None, got {checkpoint_every}")
    lengths = None if cu_seqlens is None else sequence_lengths(name, q, cu_seqlens)
    _check_boundary(name, lengths, 0 if state is None else state.offset)
    if state is not None and state.offset > 0:
        return finish_chunk_then(
            functools.partial(
                titans_mlp_chunked,
                checkpoint_every=checkpoint_every,
                hidden_block=hidden_block,
                dot_precision=dot_precision,
                retention=retention,
                lag=lag,
            ),
            arch, q, k, v, lr, mom, keep, state,
            chunk_size=chunk_size, bias=bias, bias_params=bias_params,
            head=None if retention is None else functools.partial(miras_chunked, retention=retention, lag=lag),
        )  # fmt: skip
    start = _start(name, arch, q, state, mom is not None, lengths)
    y, out = _run(
        arch, q, k, v, lr, mom, keep, start,
        chunk_size=chunk_size, bias=bias, bias_params=bias_params, read_start=False,
        checkpoint_every=checkpoint_every, lengths=lengths, hidden_block=hidden_block,
        dot_precision=dot_precision, retention=retention, lag=lag,
    )  # fmt: skip
    if lengths is None:
        return y, out
    return y, _sequence_states(out.weights, out.momentum, out.anchor, lengths, chunk_size)  # type: ignore[arg-type]


def chunk_read_mlp(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 2048,
    bias: object = None,
    checkpoint_every: int | None = None,
    dot_precision: str = "auto",
) -> tuple[Tensor, MemoryState]:
    """Drop-in for :func:`memnets.memory.chunk_read.chunk_read_memory` (TNT's global memory, arXiv
    2511.07343 §4.1: every token reads the weights at its chunk's start, plain gradient descent) for a depth-2 ``arch`` with an L2
    or ℓ_p bias (see :func:`supports_mlp`). A started chunk (decoding) is finished in PyTorch."""
    name = "chunk_read_mlp"
    dot_precision = _dot_precision(name, dot_precision, q)
    reason = supports_mlp(arch, bias, chunk_size, no_wide="chunk-start reads")
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    if _bias_spec(bias).per_token:  # type: ignore[union-attr]
        raise ValueError(
            f"{name}: {bias!r} needs per-token parameters, which chunk_read_memory does not take"
        )
    check_read_inputs(arch, q, k, v, lr, state, chunk_size, name)
    y0 = None
    if state is not None and state.offset > 0:
        head, (q, k, v, lr) = split_started_chunk(state.offset, chunk_size, q, k, v, lr)  # type: ignore[assignment]
        y0, state = chunk_read_memory(arch, *head, state, chunk_size=chunk_size, bias=bias)  # type: ignore[arg-type]
        if q.shape[1] == 0:
            return y0, state
    y, out = _run(
        arch, q, k, v, lr, None, None, _start(name, arch, q, state, False, None),
        chunk_size=chunk_size, bias=bias, bias_params=None, read_start=True,
        checkpoint_every=checkpoint_every, dot_precision=dot_precision,
    )  # fmt: skip
    return (y if y0 is None else torch.cat([y0, y], 1)), out


def omega_mlp_chunked(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    win_gate: Tensor | None = None,
    state: OmegaState | None = None,
    *,
    window: int = 1,
    chunk_size: int = 16,
    bias: object = None,
    checkpoint_every: int | None = None,
    dot_precision: str = "auto",
    cu_seqlens: Tensor | None = None,
    hidden_block: int | None = None,
) -> tuple[Tensor, OmegaState | list[OmegaState]]:
    """Drop-in for :func:`memnets.memory.omega.omega_chunked` without Muon (OmegaNet, ATLAS arXiv 2505.23735 §3.2 Eq. 9-10)
    for a depth-2 chain MLP memory (see :func:`supports_mlp` with ``window``), its keys as wide as the
    values or wider (:class:`~memnets.memory.features.FeatureMemoryMLP`: q and k the polynomial features
    ``[B, T, H, Dk]``, which only the wide-state kernels take): each tile's key path runs over its
    tokens and the ``window − 1`` before them (the carried window's rows first) and G becomes G·Γ with
    the band Γ of the window gates. A started chunk (decoding) is finished in PyTorch.
    ``hidden_block`` and ``dot_precision`` as in :func:`titans_mlp_chunked`.

    ``cu_seqlens`` packs N sequences (B = 1) as in :func:`titans_mlp_chunked`: each runs from its own
    state (``state`` at a chunk boundary with ``[N, ...]`` weights and ``[N, P0, H, D]`` carried window
    rows; default the initial weights and no carried rows), its window never reaching into the
    sequence before it; the state returned is then the list of the N sequences' final states."""
    name = "omega_mlp_chunked"
    dot_precision = _dot_precision(name, dot_precision, q)
    reason = _call_reason(arch, bias, chunk_size, window, cu_seqlens, hidden_block)
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    check_inputs(arch, q, k, v, lr, mom, keep, None if state is None else state.memory, chunk_size, name)
    B, T, H, _ = q.shape
    if win_gate is not None and tuple(win_gate.shape) != (B, T, H, window):
        raise ValueError(f"{name}: win_gate must have shape {[B, T, H, window]}, got {tuple(win_gate.shape)}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"{name}: checkpoint_every must be >= 1 (chunks) or None, got {checkpoint_every}")
    if state is not None and state.direction is not None:
        raise ValueError(f"{name}: the state has a Muon direction; the kernel covers the rule without Muon")
    lengths = None if cu_seqlens is None else sequence_lengths(name, q, cu_seqlens)
    _check_boundary(name, lengths, 0 if state is None else state.memory.offset)
    y0 = None
    if state is not None and state.memory.offset > 0:
        head, rest = split_started_chunk(state.memory.offset, chunk_size, q, k, v, lr, mom, keep, win_gate)
        y0, state = omega_chunked(arch, *head, state, window=window, chunk_size=chunk_size, bias=bias)  # type: ignore[arg-type]
        if rest[0].shape[1] == 0:  # type: ignore[union-attr]
            return y0, state
        q, k, v, lr, mom, keep, win_gate = rest  # type: ignore[assignment]
    if window == 1 and win_gate is not None:  # the one gate scales each token's gradient, as lr does
        lr, win_gate = lr * win_gate[..., 0].to(lr.dtype), None
    seq_lengths = [q.shape[1]] if lengths is None else lengths  # (after a finished chunk's head)
    bounds = list(itertools.accumulate([0, *seq_lengths]))
    N = B if lengths is None else len(lengths)
    start = _start(name, arch, q, None if state is None else state.memory, mom is not None, lengths)
    if state is None:
        kx, vx = k, v
    else:
        # in float32, the memory's dtype, in which the carried rows are kept; packed, each sequence's
        # carried rows lead its own rows
        pieces = [(slice(None), slice(None))]  # (the state's entries, their tokens)
        if lengths is not None:
            pieces = [(slice(n, n + 1), slice(bounds[n], bounds[n + 1])) for n in range(N)]
        kx, vx = (
            torch.cat([torch.cat([w[n].float(), x[:, t].float()], 1) for n, t in pieces], 1)
            for w, x in ((state.window_k, k), (state.window_v, v))
        )
    y, mem = _run(
        arch, q, kx, vx, lr, mom, keep, start, chunk_size=chunk_size, bias=bias, bias_params=None,
        read_start=False, checkpoint_every=checkpoint_every, window=window, win_gate=win_gate,
        lengths=lengths, hidden_block=hidden_block, dot_precision=dot_precision,
    )  # fmt: skip
    y = y if y0 is None else torch.cat([y0, y], 1)
    P0 = (kx.shape[1] - bounds[-1]) // len(seq_lengths)

    def window_rows(x: Tensor, n: int) -> Tensor:  # the last window − 1 of sequence n's key rows
        first, end = bounds[n] + n * P0, bounds[n + 1] + (n + 1) * P0
        return x[:, max(first, end - (window - 1)) : end].float()

    if lengths is None:
        return y, OmegaState(mem, window_rows(kx, 0), window_rows(vx, 0))
    mems = _sequence_states(mem.weights, mem.momentum, mem.anchor, lengths, chunk_size)  # type: ignore[arg-type]
    return y, [OmegaState(m, window_rows(kx, n), window_rows(vx, n)) for n, m in enumerate(mems)]
