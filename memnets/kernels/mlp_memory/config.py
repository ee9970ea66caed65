"""The MLP-memory kernels' launch configuration: one named structure (:class:`LaunchConfig`) from the
launcher down to the compile-time constants, flattened into scalars only at the ``torch.library``
custom-op boundary (whose arguments must be tensors and scalars): :func:`op_schema` writes the ops'
schemas from its fields, and the ops rebuild it with ``LaunchConfig(*scalars)``."""

from __future__ import annotations

from typing import NamedTuple, get_type_hints

import torch
import triton
from torch import Tensor

from ..precision import DOT_PRECISIONS
from ..specs import BIAS_KINDS

ACTIVATIONS = {"gelu": 0, "silu": 1, "tanh": 2}
# maps of the weights at every complete chunk's end (Miras arXiv 2504.13173 §5.3, Moneta's parallel form):
# none, W·max(‖W‖_q, floor)^{−(q−2)} (Eq. 24's scale) and W/‖W‖_q
END_MAPS = {"none": 0, "paper": 1, "unit": 2}
# bias kinds (compile-time): 0 L2, 1 ℓ_p, 2 Huber "norm" (δ per token), 3 Huber "coord" (δ per channel)
L2, LP, HUBER_NORM, HUBER_COORD = (BIAS_KINDS.index(k) for k in ("l2", "lp", "huber_norm", "huber_coord"))
# warps per program of the whole-state kernels (the benchmark's --num-warps sets it; see
# benchmarks/RESULTS.md §9 for the register spills at 4 and 8)
NUM_WARPS = 4
# warps per program of the wide-state kernels where set (the benchmark's --num-warps); None: wide_num_warps
WIDE_NUM_WARPS: int | None = None
# programs per (sequence, head) of the wide-state forward where set; None: wide_split
WIDE_SPLIT: int | None = None
# int arguments that change from one launch to the next over the same tensors (the checkpoint segment's
# first chunk C0 and its chunks NC; the split kernels add the chunk): Triton would compile one more variant
# for each value that is 1 or a multiple of 16: 30 variants of the wide kernels at titans-760m's shapes
# fwd+bwd instead of 9 (scripts/bench_host_launches.py counts them), each compiled for seconds
SEGMENT_INTS = ("C0", "NC")
# the GPU the programs are counted against where there is none to ask (the interpreter): an H100's SMs
TARGET_SMS = 132


# the wide-state kernels with several programs per (sequence, head): the split recurrences
# (:mod:`.wide_split`, :mod:`.wide_split_backward`) and the backward's reads, a program per chunk
# (:mod:`.wide_reads`); :func:`wide_num_warps` gives them two warpgroups at every head dim
SHARED_HEAD_KERNELS = frozenset(
    {"_wide_split_kernel", "_wide_split_backward_kernel", "_wide_read_backward_kernel"}
)


def wide_num_warps(block_d: int, kernel: str) -> int:
    """Warps per program of the wide-state ``kernel`` (its name) at padded head dim ``block_d``. One
    program per (sequence, head) runs alone on its SM, so with one warpgroup each scheduler holds one
    warp and waits out every load and barrier in turn (the first GPU run, benchmarks/RESULTS.md §26).
    At a padded head dim of 128 (titans-760m, yaad-760m) two warpgroups halve each warp's instructions,
    loads and spills and give each scheduler a second warp: the static report's exposed latency per
    chunk falls 3.6x forward and backward (§27). At 64 and below the one-program kernels' second
    warpgroup would repeat the other's rows in the chunk-row products (replicated-warp mma.sync) and
    spill more in the backward: one warpgroup. The :data:`SHARED_HEAD_KERNELS` take two there too:
    the split kernels' replicated products stay as few, their spill falls, and the exposed latency per
    chunk about halves (§56: tnt-150m's local memory and titans-mac-170m); the reads launch's falls
    2.6x at those two (§57)."""
    if WIDE_NUM_WARPS is not None:
        return WIDE_NUM_WARPS
    return 8 if block_d >= 128 or kernel in SHARED_HEAD_KERNELS else 4


def wide_split(programs: int, blocks: int, sms: int = TARGET_SMS) -> int:
    """Programs per (sequence, head) of the wide-state forward (:mod:`.wide_split`), given ``programs``
    (sequences x heads), the hidden ``blocks`` and the GPU's ``sms``: the divisor n of ``blocks`` with
    the fewest block-steps per chunk on the busiest SM, ⌈programs·n / sms⌉ waves of blocks / n blocks
    each (a wide-state program fills its SM's registers: one per SM), the smaller n on a tie (each
    program repeats the chunk's Δ and key rows). At titans-760m's 4 × 16 heads and 6 blocks that is
    2 (128 programs, 3 blocks each, against 6 for one program per head; 3 would be 192 programs in two
    waves). 1 runs the one-program kernel. ``WIDE_SPLIT`` overrides it (it must divide ``blocks``)."""
    if WIDE_SPLIT is not None:
        if WIDE_SPLIT < 1 or blocks % WIDE_SPLIT:
            raise ValueError(f"WIDE_SPLIT={WIDE_SPLIT} must divide the {blocks} hidden blocks")
        return WIDE_SPLIT
    splits = [n for n in range(1, blocks + 1) if blocks % n == 0]
    return min(splits, key=lambda n: (-(-programs * n // sms) * (blocks // n), n))


def device_split(device: torch.device, programs: int, blocks: int) -> int:
    """:func:`wide_split` against the SMs of ``device`` (a CUDA device's own; else ``TARGET_SMS``): the
    split forward's and the split backward's programs per (sequence, head), the same for both."""
    sms = (
        torch.cuda.get_device_properties(device).multi_processor_count
        if device.type == "cuda"
        else TARGET_SMS
    )
    return wide_split(programs, blocks, sms)


def chunk_state_dtype(dot_precision: int) -> torch.dtype:
    """The type the wide-state backward's recompute (``STORE``) keeps every chunk's start state in: the
    products' half type where they run in one (``dot_precision``, a ``DOT_PRECISIONS`` code), else
    float32. Every product reads those states rounded to that type anyway; the rest of what reads them
    (the update's inner products with the cotangents, ⟨C_W, W⟩, ⟨C_S, S⟩, and Moneta's maps) takes values
    rounded once, well within the half products' own error. It halves what the recompute writes and the
    backward reads back every chunk, and the memory a segment's chunk states hold."""
    halves = {DOT_PRECISIONS["float16"]: torch.float16, DOT_PRECISIONS["bfloat16"]: torch.bfloat16}
    return halves.get(dot_precision, torch.float32)


def split_constants(split: int, blocks: int) -> dict[str, int]:
    """The split forward kernel's sizes (:mod:`.wide_split`): ``SPLIT`` programs per (sequence, head),
    ``SP2`` the power of two their shares are loaded in, ``NBJ`` hidden blocks per program."""
    return {"SPLIT": split, "SP2": triton.next_power_of_2(split), "NBJ": blocks // split}


class LaunchConfig(NamedTuple):
    """Everything but the tensors that a launch of the MLP-memory kernels needs."""

    tile: int  # tokens per tile (the wide-state kernels: per chunk)
    activation: int  # ACTIVATIONS
    bias_kind: int  # L2, LP, HUBER_NORM, HUBER_COORD
    p: float  # ℓ_p's exponent
    eps: float  # ℓ_p's smoothing
    sharpness: float  # Huber "norm" mode's tanh sharpness
    ln_eps: float  # the memory LayerNorm's epsilon
    residual: bool  # M(k) = k + ... on the key path (the read's + q is the caller's)
    tiles_per_chunk: int  # the key path's weights are refreshed every that many tiles
    read_start: bool  # every token reads its chunk-start weights (no momentum)
    checkpoint_every: int  # tiles per checkpoint segment of the backward
    prefix: int  # the Omega window's key rows before each tile (window - 1)
    max_tiles: int  # tiles of the longest sequence
    dot_precision: int  # memnets.kernels.precision.DOT_PRECISIONS
    hidden_block: int  # hidden columns per block of the wide-state kernels; 0: the whole-state kernels
    recompute_every: int  # tiles per inner segment of the backward's recompute (checkpoint_every: none)
    end_map: int = 0  # END_MAPS: the chunk-end map of the weights (Moneta's normalize_at="chunk_end")
    token_map: int = 0  # END_MAPS: the same map on every token's accumulator (Moneta's default, Eq. 24)
    end_q: float = 2.0  # the maps' ℓ_q exponent
    end_floor: float = 0.0  # the clamp on Σ|W|^q: max(floor^q, 1e-30) ("paper"), 1e-30 ("unit")
    simplex_scale: float = 0.0  # Memora's W = c·Softmax(A) on every token (c > 0; 0: none; .simplex)
    lag: bool = False  # Memora's lag token: the chunk's first token alone, the rest after it (.simplex)


_SCHEMA_TYPES = {int: "SymInt", float: "float", bool: "bool"}


def op_schema(tensors: str, returns: str, config: type = LaunchConfig) -> str:
    """The schema of a custom op taking ``tensors`` (schema text) and then the fields of ``config`` (a
    NamedTuple: :class:`LaunchConfig` by default) as scalars."""
    scalars = ", ".join(f"{_SCHEMA_TYPES[t]} {n}" for n, t in get_type_hints(config).items())
    return f"({tensors}, {scalars}) -> {returns}"


def block(n: int) -> int:
    """A width padded to the power of two >= 16 that the kernels' tiles have."""
    return max(16, triton.next_power_of_2(n))


def kernel_meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: LaunchConfig) -> tuple[tuple, dict]:
    """Runtime scalars and compile-time constants shared by the whole-state and wide-state kernels."""
    H, D = q.shape[2:]
    DH = w1.shape[-1]
    constants = dict(
        H=H,
        D=D,
        DH=DH,
        L=config.tile,
        BL=block(config.tile),
        BD=block(D),
        BH=block(DH),
        ACT=config.activation,
        BIAS=config.bias_kind,
        LN=ln_w is not None,
        RES=config.residual,
        DOT=config.dot_precision,
        num_stages=1,  # the chunk loop is a sequential recurrence: multi-buffering only costs shared memory
    )
    return (config.p, config.eps, config.sharpness, config.ln_eps), constants


def whole_state_meta(q: Tensor, w1: Tensor, ln_w: Tensor | None, config: LaunchConfig) -> tuple[tuple, dict]:
    """Runtime scalars and compile-time constants of the whole-state forward and backward kernels."""
    scalars, constants = kernel_meta(q, w1, ln_w, config)
    scalars = (*scalars, config.end_q, config.end_floor)
    constants |= dict(
        END_MAP=config.end_map,
        TOKEN_MAP=config.token_map,
        KE=config.tiles_per_chunk,
        P=config.prefix,
        BK=block(config.prefix + config.tile),
        READ_START=config.read_start,
        num_warps=NUM_WARPS,
    )
    return scalars, constants


def state_buffers(
    state: tuple, store: bool, nc: int, H: int
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """A whole-state forward launch's outputs for ``state`` (w1, w2, s1, s2; the momenta ``None`` without
    momentum): the state after its tiles (empty where absent) and, with ``store``, every tile's start
    state ``[N, H, nc, ...]`` (else empty)."""
    w1 = state[0]
    final = tuple(w1.new_empty(0) if t is None else w1.new_empty(t.shape) for t in state)
    chunks = tuple(
        w1.new_empty(w1.shape[0], H, nc, *t.shape[2:]) if store and t is not None else w1.new_empty(0)
        for t in state
    )
    return final, chunks
