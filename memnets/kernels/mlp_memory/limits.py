"""What the MLP-memory kernels cover and how they tile a chunk: the on-chip limits that decide between the
whole-state kernels and the wide-state ones, and :func:`supports`, which names the reason a
configuration does not run. The limits come from ahead-of-time sm_90 compiles
(``scripts/check_kernels_compile.py``; the shared memory of each shape is in benchmarks/RESULTS.md §9):
an H100 has 228 KB of shared memory per SM."""

from __future__ import annotations

import torch

from ..precision import DOT_PRECISIONS
from ..specs import BiasSpec, NetSpec
from .config import ACTIVATIONS, block

MAX_TILE = 64
# largest D·Dh per padded tile (rows) whose whole-state kernels fit an H100's shared memory; 128-row
# tiles never fit, even at D·Dh = 16·64 (several tiles per chunk cost no more shared memory)
MAX_STATE_FOR_TILE = {16: 32 * 128, 32: 32 * 128, 64: 16 * 64}
# largest head dim (padded) per padded chunk tile (rows) whose wide-state kernels fit: the chunk's
# [L, D] rows and [L, L] tiles stay on chip
MAX_WIDE_DIM_FOR_TILE = {16: 128, 32: 128, 64: 64}
# hidden columns per block of the wide-state kernels with half operands: 64, the M of one Hopper
# warpgroup's wgmma, so that the hidden-major products (the hidden block as M) run on wgmma without
# replicated warps (16 and 32 compile to mma.sync with warps computing the same rows;
# benchmarks/RESULTS.md §22)
DEFAULT_HIDDEN_BLOCK = 64
# with float32 operands (tf32x3, tf32): 32, where MAX_WIDE_DIM_FOR_TILE was measured; at 64 their
# float32 tiles outgrow the shared memory (240 KB at head dim 64, chunk 32) and spill 2-3x more
FLOAT32_HIDDEN_BLOCK = 32
# whether backend="auto" may pick the wide-state kernels: their in-place global-memory updates rely on
# barriers between a program's threads, which the interpreter cannot test; turn on once the kernel
# tests have passed on a GPU (benchmarks/RESULTS.md §9). backend="triton" runs them either way.
WIDE_IN_AUTO = False


def default_hidden_block(dot: int) -> int:
    """The wide-state kernels' hidden block for operand mode ``dot`` (a ``DOT_PRECISIONS`` code)."""
    return (
        DEFAULT_HIDDEN_BLOCK
        if dot in (DOT_PRECISIONS["float16"], DOT_PRECISIONS["bfloat16"])
        else FLOAT32_HIDDEN_BLOCK
    )


def tile(chunk_size: int, state: int, prefix: int = 0) -> int | None:
    """The tile of a chunk: the chunk itself, or its largest divisor in 8..``MAX_TILE``, whose padded
    tile (with ``prefix`` more key rows: the Omega window's reach) fits ``state`` (padded D·Dh) on
    chip; ``None`` if there is none."""
    fits = [
        t
        for t in range(min(chunk_size, MAX_TILE), 0, -1)
        if chunk_size % t == 0
        and (t >= 8 or t == chunk_size)
        and state <= MAX_STATE_FOR_TILE.get(block(t + prefix), 0)
    ]
    return fits[0] if fits else None


def on_chip_state_too_large(d_in: int, d_hidden: int, chunk_size: int | None, prefix: int = 0) -> bool:
    """Whether no tile of this chunk size (``None``: of any) keeps the state on chip (both widths padded
    to powers of two >= 16: the padded state is what occupies the chip), so that the wide-state kernels
    run instead."""
    state = block(d_in) * block(d_hidden)
    if chunk_size is None:
        return state > max(MAX_STATE_FOR_TILE.values())
    return chunk_size < 1 or tile(chunk_size, state, prefix) is None


def runs_wide(memory: NetSpec, chunk_size: int | None, prefix: int = 0) -> bool:
    """Whether this memory runs the wide-state kernels: keys wider than values (polynomial features),
    which only they take, or a state no tile of the chunk keeps on chip."""
    return memory.d_in != memory.d_out or on_chip_state_too_large(
        memory.d_in, memory.d_hidden, chunk_size, prefix
    )


def supports_wide(
    d_out: int, chunk_size: int | None, hidden_block: int | None, prefix: int = 0
) -> str | None:
    """``None`` when the wide-state kernels cover value width (head dim) ``d_out`` (any key and hidden
    width) at this chunk size (``None``: at some chunk size) with ``prefix`` more key rows per chunk
    (the Omega window's) and this hidden block size, else the reason. Their chunk's ``[P + L, D]`` rows
    stay on chip: chunks of up to ``MAX_TILE`` rows with the window's."""
    if hidden_block is not None and (hidden_block < 16 or hidden_block & (hidden_block - 1)):
        return f"hidden_block {hidden_block} (the wide-state MLP kernel takes powers of two >= 16)"
    largest = max(MAX_WIDE_DIM_FOR_TILE.values())
    if block(d_out) > largest:
        return (
            f"head dim {d_out} (the wide-state MLP Triton kernel covers head dims <= {largest}: the "
            "chunk's rows stay on chip)"
        )
    if chunk_size is None:
        return None
    rows = block(chunk_size + prefix)
    reach = f" with {prefix} more key rows (the Omega window's)" if prefix else ""
    if chunk_size < 1 or rows not in MAX_WIDE_DIM_FOR_TILE:
        return (
            f"chunk_size {chunk_size}{reach} (the wide-state MLP Triton kernel takes chunks of up to "
            f"{MAX_TILE} rows)"
        )
    if block(d_out) > MAX_WIDE_DIM_FOR_TILE[rows]:
        return (
            f"head dim {d_out} at chunk_size {chunk_size}{reach} (the wide-state MLP Triton kernel "
            f"exceeds the GPU's shared memory; use chunk_size <= 32 or head dim <= "
            f"{MAX_WIDE_DIM_FOR_TILE[rows]})"
        )
    return None


def supports(
    memory: NetSpec,
    bias: BiasSpec,
    chunk_size: int | None = None,
    window: int = 1,
    no_wide: str | None = None,
) -> str | None:
    """``None`` when the kernels cover this memory, bias, chunk size and Omega window, else the reason
    they do not. Keys wider than values and states too large for the chip run the wide-state kernels
    (chunk sizes up to ``MAX_TILE`` with the window's rows) unless ``no_wide`` says why they may not run
    here (chunk-start reads, packed sequences, ``backend="auto"`` while ``WIDE_IN_AUTO`` is off)."""
    if window > 1 and bias.per_token:
        return (
            f"attentional bias {bias.kind} with an Omega window (per-token thresholds of the window's rows)"
        )
    if memory.depth != 2:
        return f"memory depth {memory.depth} (the MLP Triton kernel covers depth 2)"
    if memory.activation not in ACTIVATIONS:
        return f"activation {memory.activation!r} (the MLP Triton kernel covers {list(ACTIVATIONS)})"
    if memory.dtype != torch.float32:
        return f"memory dtype {memory.dtype} (the MLP Triton kernel runs in float32)"
    d_in, d_hidden, P = memory.d_in, memory.d_hidden, window - 1
    if not runs_wide(memory, chunk_size, P):
        return None
    if no_wide is None:
        return supports_wide(memory.d_out, chunk_size, None, P)
    note = f"; the wide-state kernels do not run {no_wide}"
    if d_in != memory.d_out:
        return (
            f"key width {d_in} != value width {memory.d_out} (feature maps of degree > 1: only the "
            f"wide-state MLP Triton kernels take wider keys{note})"
        )
    # (D = 8, hidden 128 at chunk 64 passed an unpadded check and needs 232 KB in the backward)
    state = block(d_in) * block(d_hidden)
    largest = max(MAX_STATE_FOR_TILE.values())
    if state > largest:
        return (
            f"head dim {d_in} with hidden width {d_hidden} (the MLP Triton kernel keeps the whole state "
            f"on chip and covers head dim x hidden <= {largest}, both padded to powers of two >= 16{note})"
        )
    tiles = ", ".join(f"{t} rows: D x hidden <= {s}" for t, s in MAX_STATE_FOR_TILE.items())
    reach = f" and window {window} ({window - 1} more key rows per tile)" if window > 1 else ""
    return (
        f"chunk_size {chunk_size}{reach} with head dim {d_in} and hidden width {d_hidden} (a chunk runs "
        f"in tiles of a divisor of it in 8..{MAX_TILE} (or the whole chunk if shorter) whose padded "
        f"tile fits the GPU's shared memory: {tiles}{note})"
    )
