"""The MLP-memory kernels' public entry: how a call is tiled (:func:`tile_layout`, which the caller needs
to build the per-tile coefficients) and the launch itself (:func:`mlp_memory_chunked`), plain tensors
in and out."""

from __future__ import annotations

import dataclasses

import triton
from torch import Tensor

from ..optional import coefficients
from ..packing import chunk_layout
from ..precision import DOT_PRECISIONS
from ..specs import BIAS_KINDS, BiasSpec, NetSpec
from . import ops
from .config import ACTIVATIONS, END_MAPS, LaunchConfig, block
from .forward import backward_plan
from .limits import default_hidden_block, runs_wide, tile


@dataclasses.dataclass(frozen=True)
class TileLayout:
    """How a call's tokens run: in tiles of ``tile`` tokens, whole-state or ``wide``-state kernels;
    ``index [NT, tile]`` gathers every tile's tokens (past a sequence's end: the padding slot T, see
    :func:`memnets.kernels.packing.chunk_layout`); packed sequences' ``cu_seqlens`` and first tiles
    ``tile_offsets`` (``None`` for a dense batch); the longest sequence's tiles and chunks."""

    tile: int
    wide: bool
    index: Tensor
    cu_seqlens: Tensor | None
    tile_offsets: Tensor | None
    max_tiles: int
    max_chunks: int


def tile_layout(
    memory: NetSpec,
    chunk_size: int,
    lengths: list[int],
    device,
    *,
    packed: bool = False,
    window: int = 1,
    hidden_block: int | None = None,
) -> TileLayout:
    """The layout of sequences of ``lengths`` (``packed``: one packed batch, else a dense batch of equal
    lengths) in chunks of ``chunk_size`` for a memory :func:`~memnets.kernels.mlp_memory.supports`
    covers: the largest tile that keeps the state on chip (with the Omega window's ``window − 1`` more
    key rows), else (or with ``hidden_block``) whole chunks in the wide-state kernels."""
    P = window - 1
    wide = hidden_block is not None or runs_wide(memory, chunk_size, P)
    # the wide-state kernels walk whole chunks of <= MAX_TILE tokens (supports() checked)
    L = chunk_size if wide else tile(chunk_size, block(memory.d_in) * block(memory.d_hidden), P)
    assert L is not None and not (wide and packed)
    cu, offsets, index = chunk_layout(lengths, L, device)  # tiles of L tokens
    return TileLayout(
        L,
        wide,
        index,
        cu if packed else None,
        offsets if packed else None,
        max(triton.cdiv(n, L) for n in lengths),  # on the host: no device-to-host copy
        max(triton.cdiv(n, chunk_size) for n in lengths),
    )


def _ceil_root(n: int, k: int) -> int:
    """The smallest r >= 1 with r**k >= n."""
    r = max(1, round(n ** (1 / k)))
    while r**k < n:
        r += 1
    while r > 1 and (r - 1) ** k >= n:
        r -= 1
    return r


def checkpoint_chunks(chunks: int, every: int | None, wide: bool) -> tuple[int, int]:
    """Chunks per checkpoint segment and per recompute segment of the backward.

    Two levels: the forward keeps a checkpoint every ``every`` chunks (default ⌈√chunks⌉) and the
    backward recomputes one segment at a time, ⌈chunks/every⌉ + every states live, for one extra
    forward. The wide-state kernels' states are MBs per (sequence, head), so there a third level is
    added where it keeps at least a quarter fewer states live (:func:`~.forward.backward_plan`):
    each segment recomputed in inner segments of ⌈√every⌉ chunks, with ``every`` = c·⌈√⌈chunks/c⌉⌉,
    c = ⌈∛chunks⌉ by default, about 3·∛chunks states, for a second forward over all but each
    segment's last inner segment (at titans-760m, 4 × 4096 tokens at chunk 16: 19 states of 4 D·Dh
    floats per (sequence, head) against 32, for 473 chunks of STORE passes against 256).
    """

    chunks = max(chunks, 1)
    two = (every or _ceil_root(chunks, 2),) * 2
    if not wide:
        return two
    if every is None:
        c = _ceil_root(chunks, 3)
        every = c * _ceil_root(-(-chunks // c), 2)
    three = (every, _ceil_root(every, 2))
    return three if 4 * backward_plan(chunks, *three)[0] <= 3 * backward_plan(chunks, *two)[0] else two


def mlp_memory_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    f: Tensor | None,
    G: Tensor,
    m_end: Tensor | None,
    s_coef: Tensor | None,
    w1: Tensor,
    w2: Tensor,
    s1: Tensor | None = None,
    s2: Tensor | None = None,
    *,
    memory: NetSpec,
    bias: BiasSpec,
    layout: TileLayout,
    chunk_size: int,
    bias_params: Tensor | None = None,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    read_start: bool = False,
    window: int = 1,
    checkpoint_every: int | None = None,
    dot_precision: str = "tf32x3",
    hidden_block: int | None = None,
    end_map: str = "none",
    token_map: str = "none",
    end_q: float = 2.0,
    end_floor: float = 0.0,
    simplex_scale: float = 0.0,
    lag: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None, tuple[Tensor, Tensor]]:
    """The chunked update of a depth-2 MLP memory from a chunk boundary, forward and (through autograd)
    backward.

    Args:
        q, k, v: ``[B, T, H, D]``, or q, k ``[B, T, H, Dk]`` with keys wider than values (feature maps
            φ(x) that start with x: the wide-state kernels); with an Omega window of c tokens, ``k`` and
            ``v`` lead with the P0 carried rows of the call before (``[B, P0 + T, H, ...]``; packed:
            before each sequence's rows).
        beta, f, G, m_end, s_coef: the per-tile coefficients of the dual form at ``layout.tile``
            (``[B, H, NT, L]``, ``G [B, H, NT, L, P + L]``, ``m_end [B, H, NT]``, ``s_coef
            [B, H, NT, P + L]``; f, m_end, s_coef ``None`` without momentum), float32.
        w1, w2, s1, s2: the state at the first token, ``[N, H, Dk, Dh]`` / ``[N, H, Dh, D]`` (N: batch
            entries or packed sequences; momenta ``None`` without momentum).
        memory, bias: the memory network and its attentional bias; ``bias_params`` the Huber
            threshold (``[B, T, H]`` "norm", ``[B, T, H, D]`` "coord"); ``ln_weight, ln_bias [H, D]``
            the memory LayerNorm's scale and shift (with ``memory.layer_norm``).
        layout: from :func:`tile_layout` (the same the coefficients were built with).
        read_start: every token reads its chunk-start weights (TNT's global memory, no momentum).
        window: the Omega rule's window c (ATLAS, arXiv 2505.23735 §3, Eq. 9): each token's inner
            gradient sums the last c tokens' (``G`` then covers P = c − 1 more key rows per tile).
        checkpoint_every: chunks per checkpoint segment of the backward (default: see
            :func:`checkpoint_chunks`).
        dot_precision: the matmuls' operands (``DOT_PRECISIONS``).
        hidden_block: hidden columns per block of the wide-state kernels (when ``layout.wide``; default
            :func:`~.limits.default_hidden_block` of ``dot_precision``).
        end_map, end_q, end_floor: Moneta's ℓ_q map of the weights at every complete chunk's end
            (:mod:`.end_map`; ``END_MAPS``: "none", "paper" or "unit", as
            :class:`memnets.memory.miras.LqNormalize` with ``q``, ``floor``); whole-state and
            wide-state kernels.
        token_map: the same map on every token's accumulator (Moneta's default: each token reads
            s(A_t)·A_t, gradients at the chunk start's s(A)·A; :mod:`.end_map`); whole-state and
            wide-state kernels, not with ``end_map``.
        simplex_scale, lag: Memora's softmax retention W = c·Softmax(A) over each weight matrix's input
            axis on every token's accumulator (c = ``simplex_scale`` > 0; Miras Eq. 27) and its lag
            token (§5.3 Eq. 30-32: each chunk's first token takes its gradient at the chunk start,
            the rest at the weights after it; only with the softmax) (:mod:`.simplex`); no Omega
            window, chunk-start reads or ℓ_q maps (:mod:`.wide_simplex` in the wide-state kernels).

    Returns:
        ``y`` in ``q``'s dtype (with the residual ``+ q`` when ``memory.residual``), the final weights
        (W1, W2), momenta (S1, S2) or ``None``, and the last chunk's start weights (float32).

    Example::

        layout = tile_layout(memory, 16, [T] * B, q.device)
        # coefficients of lr, keep, mom gathered by layout.index into tiles of layout.tile tokens
        y, weights, momentum, anchor = mlp_memory_chunked(
            q, k, v, beta, f, G, m_end, s_coef, w1, w2, s1, s2,
            memory=memory, bias=BiasSpec(), layout=layout, chunk_size=16,
        )
    """
    w1, w2 = w1.float().contiguous(), w2.float().contiguous()
    if s1 is not None:
        s1, s2 = s1.float().contiguous(), s2.float().contiguous()  # type: ignore[union-attr]
    dtype = q.dtype
    bp = bias_params.float().contiguous() if bias.per_token else None  # type: ignore[union-attr]
    ln_w = ln_b = None
    if memory.layer_norm:
        ln_w, ln_b = ln_weight.float().contiguous(), ln_bias.float().contiguous()  # type: ignore[union-attr]
    tensors = (
        q.contiguous(), k.contiguous(), v.contiguous(), bp, ln_w, ln_b,
        *coefficients(beta, f, G, m_end, s_coef), w1, w2, s1, s2, layout.cu_seqlens, layout.tile_offsets,
    )  # fmt: skip
    L = layout.tile
    if end_map != "none" and token_map != "none":
        raise ValueError("mlp_memory_chunked: end_map and token_map exclude each other")
    if simplex_scale < 0 or (lag and not simplex_scale):
        raise ValueError(
            f"mlp_memory_chunked: simplex_scale must be > 0 (0: no softmax retention) and lag needs it, got "
            f"simplex_scale={simplex_scale}, lag={lag}"
        )
    if simplex_scale and (window > 1 or read_start or end_map != "none" or token_map != "none"):
        raise ValueError(
            "mlp_memory_chunked: the softmax retention runs without an Omega window, chunk-start reads or ℓ_q maps"
        )
    clamp = max(end_floor**end_q, 1e-30) if "paper" in (end_map, token_map) else 1e-30
    tiles_per_chunk = chunk_size // L
    every, inner = checkpoint_chunks(layout.max_chunks, checkpoint_every, layout.wide)
    config = LaunchConfig(
        tile=L,
        activation=ACTIVATIONS[memory.activation],
        bias_kind=BIAS_KINDS.index(bias.kind),
        p=bias.p,
        eps=bias.eps,
        sharpness=bias.sharpness,
        ln_eps=memory.ln_eps,
        residual=memory.residual,
        tiles_per_chunk=tiles_per_chunk,
        read_start=read_start,
        checkpoint_every=every * tiles_per_chunk,
        prefix=window - 1,
        max_tiles=layout.max_tiles,
        dot_precision=DOT_PRECISIONS[dot_precision],
        hidden_block=(hidden_block or default_hidden_block(DOT_PRECISIONS[dot_precision]))
        if layout.wide
        else 0,
        recompute_every=inner * tiles_per_chunk,
        end_map=END_MAPS[end_map],
        token_map=END_MAPS[token_map],
        end_q=end_q,
        end_floor=clamp,
        simplex_scale=simplex_scale,
        lag=lag,
    )
    y, w1f, w2f, s1f, s2f, w1a, w2a, *_ = ops.mlp_memory_fwd(*tensors, *config)
    if memory.residual:  # M(φ(q)) = q + ...: φ(x) starts with x (memnets.memory.features)
        y = y + q[..., : memory.d_out].float()
    return y.to(dtype), (w1f, w2f), None if s1 is None else (s1f, s2f), (w1a, w2a)
