"""Compile every Triton kernel in ``memnets/kernels/`` for a GPU target, without a GPU, and report its shared
memory and registers: catches kernels that stop compiling with a new Triton, or that outgrow the
GPU's shared memory, on a machine with no GPU (CI, a laptop).

    python scripts/check_kernels_compile.py                     # every case, sm_90 (H100)
    python scripts/check_kernels_compile.py --only titans --json compile.json
    python scripts/check_kernels_compile.py --arch 80           # A100
    python scripts/check_kernels_compile.py --only mlp --mlp 16,64,16 32,128,32   # MLP memory at (D, hidden, chunk)

Each case compiles one ``@triton.jit`` kernel at representative constexpr values (head dims 32/64/128,
chunk 16-64, every HAS_*/STORE_* branch the launchers use; for the MLP-memory kernels the largest
states ``mlp_memory.supports`` admits per chunk tile, which is where its limits
``MAX_STATE_FOR_TILE`` and ``MAX_TILE`` come from; for the wide-state ones Titans at head dim 64 and
the largest head dims per tile, ``MAX_WIDE_DIM_FOR_TILE``) with ``triton.compile`` on an ``ASTSource``
for ``GPUTarget("cuda", arch, 32)``: Triton lowers to PTX and its bundled ``ptxas`` assembles the cubin,
which needs no driver. Pointer arguments get the 16-byte divisibility a real launch usually has.
Registers and spills (stack bytes) come from the bundled ``cuobjdump``; shared memory is the dynamic
shared memory Triton launches the kernel with. The exit code is 1 if any case fails to compile or
needs more shared memory than the target has, or if a kernel has no case (so a new kernel cannot be
left out silently).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

# compile real kernels even when run from a shell (or test) that interprets them: under
# TRITON_INTERPRET=1 @triton.jit makes interpreter functions, which cannot be compiled
os.environ.pop("TRITON_INTERPRET", None)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend

MODULES = (
    "gated_delta_triton",
    "scan_triton",
    "linear_memory",
    "mlp_memory.forward",
    "mlp_memory.backward",
    "mlp_memory.wide_forward",
    "mlp_memory.wide_backward",
    "mlp_memory.wide_split",
    "mlp_memory.wide_reads",
    "mlp_memory.wide_split_backward",
    "mlp_memory.simplex",
    "mlp_memory.simplex_backward",
    "mlp_memory.wide_simplex",
    "mlp_memory.wide_simplex_backward",
    "mlp_memory.muon_forward",
    "mlp_memory.muon_backward",
    "mlp_memory.token_muon_forward",
    "mlp_memory.token_muon_backward",
)
# opt-in dynamic shared memory per block (CUDA programming guide, compute capabilities table)
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclasses.dataclass
class Case:
    """One kernel at one set of constexprs. ``types``: the Triton type of every non-constexpr argument
    that is not a float32 pointer (``"*bf16"``, ``"i32"``, ``"fp32"``); a constexpr ``None`` stands for
    a pointer the launcher passes as ``None``."""

    module: str
    kernel: str
    constexprs: dict[str, object]
    types: dict[str, str] = dataclasses.field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return f"{self.module}.{self.kernel}"

    def describe(self) -> str:
        shown = {k: v for k, v in self.constexprs.items() if v is not None}
        dtypes = sorted({t for t in self.types.values() if t.startswith("*")})
        parts = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in shown.items()]
        return " ".join(parts + dtypes + [f"w{self.num_warps}s{self.num_stages}"])


def _titans_cases() -> list[Case]:
    from memnets.kernels.linear_memory import MAX_DIM_FOR_CHUNK

    half = {"q": "*bf16", "k": "*bf16", "v": "*bf16", "NC": "i32"}
    bwd = {**half, "dq": "*bf16", "dk": "*bf16", "dv": "*bf16"}
    cases = []
    # the largest head dim the kernels claim to support at each chunk size, and a small one (quick to
    # compile: the CI test's case)
    for L, D in [(16, 32), *MAX_DIM_FOR_CHUNK.items()]:
        # bf16 operands (DOT 3, what dot_precision="auto" runs on bf16 inputs); the backward also with
        # tf32x3 (DOT 0), whose float32 tiles set MAX_DIM_FOR_CHUNK's shared-memory limit
        shape = {"H": 8, "D": D, "L": L, "BD": max(16, triton.next_power_of_2(D)), "DOT": 3}
        for mom in (True, False):
            for store in (False, True):
                c = {**shape, "HAS_MOM": mom, "STORE": store}
                cases.append(Case("linear_memory", "_forward_kernel", c, half, num_stages=1))
            for dot in (3, 0):
                c = {**shape, "HAS_MOM": mom, "DOT": dot}
                cases.append(Case("linear_memory", "_backward_kernel", c, bwd, num_stages=1))
    return cases


def _gated_delta_cases() -> list[Case]:
    from memnets.kernels.gated_delta_triton import SEQUENTIAL_STAGES as seq

    cases = []
    mod = "gated_delta_triton"
    for K in (32, 64, 128):  # 32: small and quick to compile (the CI test's case)
        V, C = K, min(K, 64)
        BK, BV = max(16, triton.next_power_of_2(K)), min(max(16, triton.next_power_of_2(V)), 64)
        # bf16 operands (DOT 3): what dot_precision="auto" runs on the bf16 inputs below
        shape = {"H": 8, "K": K, "C": C, "BK": BK, "DOT": 3}
        ints = {"cu_seqlens": "*i32", "chunk_indices": "*i32", "chunk_offsets": "*i32", "scale": "fp32"}
        io = {"q": "*bf16", "k": "*bf16", "v": "*bf16", "o": "*bf16", "do": "*bf16"}
        io.update({"dq": "*bf16", "dk": "*bf16", "dv": "*bf16"})
        types = {**ints, **io}
        cases.append(Case(mod, "_prepare_kernel", shape, types))
        full = {**shape, "V": V, "BV": BV}
        for h0 in (True, False):  # the forward pass: writes o and the final state
            c = {**full, "h": None, "USE_H0": h0, "STORE_O": True, "STORE_HT": True, "STORE_H": False}
            if not h0:
                c["h0"] = None
            cases.append(Case(mod, "_forward_kernel", c, types, num_stages=seq))
        # the backward pass re-runs it to store the chunk-start states only
        c = {
            **full,
            "o": None,
            "ht": None,
            "USE_H0": True,
            "STORE_O": False,
            "STORE_HT": False,
            "STORE_H": True,
        }
        cases.append(Case(mod, "_forward_kernel", c, types, num_stages=seq))
        for dht in (True, False):
            c = {**full, "USE_DHT": dht} if dht else {**full, "dht": None, "USE_DHT": False}
            cases.append(Case(mod, "_backward_state_kernel", c, types, num_stages=seq))
        cases.append(Case(mod, "_backward_local_kernel", full, types, num_stages=seq))
        if K == 32:  # float32 inputs run tf32x3 operands
            f32 = {**types, **{n: "*fp32" for n in io}}
            cases.append(Case(mod, "_backward_local_kernel", {**full, "DOT": 0}, f32, num_stages=seq))
    return cases


def _scan_cases() -> list[Case]:
    from memnets.kernels.scan_triton import channel_block

    cases = []
    for dtype, itemsize in (("fp32", 4), ("fp64", 8)):
        ptrs = {n: f"*{dtype}" for n in ("a", "b", "h0", "h")}
        for block in (False, True):
            for reverse in (False, True):
                BS = channel_block(4096, itemsize)
                c = {"BLOCK": block, "USE_H0": not reverse, "REVERSE": reverse, "BT": 64, "BS": BS}
                if reverse:
                    c["h0"] = None
                cases.append(Case("scan_triton", "_scan_kernel", c, {**ptrs, "T": "i32", "S": "i32"}))
    return cases


def default_mlp_shapes() -> list[tuple[int, int, int]]:
    """(D, hidden, chunk) of the MLP-memory cases: a small one (quick to compile: the CI test's case) and,
    for every padded chunk tile, the largest state ``supports`` admits there at the Titans expansion
    (hidden = 4 D), at a square state and at hidden = 16 D (the same D·hidden, other tile shapes)."""
    from memnets.kernels.mlp_memory import MAX_STATE_FOR_TILE
    from memnets.kernels.mlp_memory.config import block as _block

    shapes = [(16, 64, 16)]
    for tile, state in MAX_STATE_FOR_TILE.items():
        for ratio in (4, 1, 16):
            D = math.isqrt(state // ratio)
            if _block(D) * _block(D * ratio) <= state:  # what ``supports`` admits (padded widths)
                shapes.append((D, D * ratio, tile))
    return shapes


def _mlp_branches() -> tuple[dict[str, str], dict[str, object], dict[str, object]]:
    """The MLP-memory kernels' argument types both kernel families share (bf16 inputs and their
    gradients), the branches of the Titans default memory (GELU, L2 bias, LayerNorm, residual,
    momentum: every branch that costs on-chip memory) and the other branches (SiLU, per-channel Huber
    threshold, none of the others); the callers add the operand mode (``DOT``) after their own."""
    from memnets.kernels.mlp_memory.config import ACTIVATIONS, HUBER_COORD, L2

    types = {n: "i32" for n in ("T", "C0", "NC", "NCT")} | {
        n: "fp32" for n in ("p", "eps", "sharp", "ln_eps")
    }
    types |= {n: "*bf16" for n in ("q", "k", "v", "dq", "dk", "dv")}
    full = {"ACT": ACTIVATIONS["gelu"], "BIAS": L2, "LN": True, "RES": True, "HAS_MOM": True}
    bare = {"ACT": ACTIVATIONS["silu"], "BIAS": HUBER_COORD, "LN": False, "RES": False, "HAS_MOM": False}
    return types, full, bare


def _mlp_shape(D: int, DH: int, L: int) -> dict[str, int]:
    """The shape constexprs both MLP-memory kernel families take (8 heads)."""
    from memnets.kernels.mlp_memory.config import block

    return {"H": 8, "D": D, "DH": DH, "L": L, "BL": block(L)}


def _mlp_cases(shapes: list[tuple[int, int, int]]) -> list[Case]:
    from memnets.kernels.mlp_memory.config import LP, NUM_WARPS
    from memnets.kernels.mlp_memory.config import block as _block

    fwd, bwd = "mlp_memory.forward", "mlp_memory.backward"
    types, full, bare = _mlp_branches()
    types |= {"P0": "i32", "cu": "*i32", "toff": "*i32", "end_q": "fp32", "end_floor": "fp32"}
    full |= {"KE": 1, "READ_START": False, "P": 0, "VARLEN": False, "DOT": 0, "END_MAP": 0, "TOKEN_MAP": 0}

    def shape(D: int, DH: int, L: int, BK: int | None = None) -> dict[str, int]:
        return {**_mlp_shape(D, DH, L), "BK": BK or _block(L), "BD": _block(D), "BH": _block(DH)}

    def forward(constexprs: dict[str, object], store: bool = False) -> Case:
        return Case(
            fwd, "_forward_kernel", {**constexprs, "STORE": store}, types, num_warps=NUM_WARPS, num_stages=1
        )

    def backward(constexprs: dict[str, object]) -> Case:
        return Case(bwd, "_backward_kernel", constexprs, types, num_warps=NUM_WARPS, num_stages=1)

    cases = []
    for D, DH, L in shapes:
        c = {**shape(D, DH, L), **full}
        # the forward pass; its recompute in the backward stores the states
        cases += [forward(c), forward(c, store=True), backward(c)]
    # the other branches once, at the smallest shape: per-channel Huber threshold, SiLU, no LayerNorm,
    # residual or momentum
    D, DH, L = min(shapes, key=lambda s: s[0] * s[1] * s[2])
    # and packed sequences, with bfloat16 operands in the matmuls
    bare |= {"KE": 1, "READ_START": False, "P": 0, "VARLEN": True, "DOT": 3, "END_MAP": 0, "TOKEN_MAP": 0}
    cases += [forward({**shape(D, DH, L), **bare}), backward({**shape(D, DH, L), **bare})]
    # Moneta's ℓ_q map (the ℓ_3 bias, the paper map) on every token and at chunk ends, at the smallest
    # shape
    for maps in ({"TOKEN_MAP": 1}, {"END_MAP": 1}):
        moneta = {**shape(D, DH, L), **full, "BIAS": LP, **maps}
        cases += [forward(moneta), backward(moneta)]
    # Memora's softmax retention at the largest state of 16-row tiles at the Titans expansion (the
    # mixer's tiny and MQAR heads: D 32, hidden 128)
    cases += _simplex_cases([max((s for s in shapes if s[2] == 16 and s[1] == 4 * s[0]), key=lambda s: s[0])])
    # chunks of several tiles (key path at the chunk-start weights: one more state-sized tile in the
    # backward) and TNT's chunk-start reads, at the largest state of 64-row tiles
    D, DH, L = max((s for s in shapes if s[2] == 64), key=lambda s: s[0] * s[1], default=(D, DH, L))
    for read_start in (False, True):
        c = {**shape(D, DH, L), **full, "KE": 4, "READ_START": read_start, "HAS_MOM": not read_start}
        cases += [forward(c), backward(c)]
    # the Omega window (OmegaNet, window 8): 7 more key rows per tile, a 32-row key tile at chunk 16,
    # at the largest state of 32-row tiles
    D, DH, L = max((s for s in shapes if s[2] == 32), key=lambda s: s[0] * s[1], default=(D, DH, 16))
    c = {**shape(D, DH, 16, BK=32), **full, "P": 7}
    cases += [forward(c), backward(c)]
    return cases


def _simplex_cases(shapes: list[tuple[int, int, int]]) -> list[Case]:
    """Memora's softmax retention (:mod:`memnets.kernels.mlp_memory.simplex`) at each (D, hidden, tile):
    its default memory (GELU, L2 bias, residual, no LayerNorm or momentum) with the lag token: the
    forward, its STORE recompute and the backward; then, at the last shape, every branch that costs
    on-chip memory (LayerNorm, momentum) with chunks of two tiles (the backward recomputes the lag
    token's weights from the chunk's first tile)."""
    from memnets.kernels.mlp_memory.config import block as _block
    from memnets.kernels.mlp_memory.simplex import SIMPLEX_NUM_WARPS

    types, full, _bare = _mlp_branches()
    types |= {"cu": "*i32", "toff": "*i32", "scale": "fp32"}
    memora = {**full, "LN": False, "HAS_MOM": False, "KE": 1, "VARLEN": False, "DOT": 0, "LAG": True}

    def case(module: str, kernel: str, constexprs: dict[str, object]) -> Case:
        return Case(module, kernel, constexprs, types, num_warps=SIMPLEX_NUM_WARPS, num_stages=1)

    def three(constexprs: dict[str, object]) -> list[Case]:
        fwd = ("mlp_memory.simplex", "_simplex_forward_kernel")
        return [
            case(*fwd, {**constexprs, "STORE": False}),
            case(*fwd, {**constexprs, "STORE": True}),
            case("mlp_memory.simplex_backward", "_simplex_backward_kernel", constexprs),
        ]

    cases = []
    for D, DH, L in shapes:
        cases += three({**_mlp_shape(D, DH, L), "BD": _block(D), "BH": _block(DH), **memora})
    cases += three({**cases[-1].constexprs, **full, "KE": 2})[::2]
    return cases


def _wide_simplex_cases(
    shapes: list[tuple[int, int, int, tuple[int, ...]]] | None = None, extra: bool = True
) -> list[Case]:
    """Memora's softmax retention in the wide-state kernels (:mod:`memnets.kernels.mlp_memory.wide_simplex`,
    :mod:`~memnets.kernels.mlp_memory.wide_simplex_backward`) at a small shape (head dim 16, hidden 64 in
    two blocks: the CI test's case) and at memora-340m's and memora-760m's memories (head dim 64 / 96,
    hidden 4 D, chunk 16): its default memory (GELU, L2 bias, residual, the lag token; no LayerNorm or
    momentum) per operand mode (bf16 and tf32x3: their hidden blocks differ), the forward, its STORE
    recompute and the backward; then (``extra``) every branch that costs on-chip memory (LayerNorm,
    momentum) at the larger one. ``shapes``: (D, hidden, chunk, operand modes) instead."""
    from memnets.kernels.mlp_memory.config import block as _block
    from memnets.kernels.mlp_memory.limits import default_hidden_block
    from memnets.kernels.mlp_memory.simplex import SIMPLEX_NUM_WARPS

    types, full, _bare = _mlp_branches()
    types |= {"scale": "fp32"}

    def three(c: dict[str, object]) -> list[Case]:
        fwd = ("mlp_memory.wide_simplex", "_wide_simplex_forward_kernel")
        bwd = ("mlp_memory.wide_simplex_backward", "_wide_simplex_backward_kernel")
        return [
            Case(*fwd, {**c, "STORE": False}, types, SIMPLEX_NUM_WARPS, 1),
            Case(*fwd, {**c, "STORE": True}, types, SIMPLEX_NUM_WARPS, 1),
            Case(*bwd, c, types, SIMPLEX_NUM_WARPS, 1),
        ]

    cases = []
    for D, DH, L, dots in shapes or [(16, 64, 16, (0,)), (64, 256, 16, (3, 0)), (96, 384, 16, (3, 0))]:
        for dot in dots:
            BHB = min(default_hidden_block(dot), _block(DH))
            c = {
                **_mlp_shape(D, DH, L),
                "BD": _block(D),
                "DI": D,
                "KB": _block(D),
                "BK": _block(L),
                "DOT": dot,
            }
            c |= {"BHB": BHB, "NB": -(-DH // BHB), **full, "LN": False, "HAS_MOM": False, "LAG": True}
            cases += three(c)
    if not extra:
        return cases
    larger = {k: v for k, v in cases[-6].constexprs.items() if k != "STORE"}
    cases += three({**larger, **full})[::2] + three({**larger, **full, "LAG": False})[2:]
    return cases


def default_mlp_wide_shapes() -> list[tuple[int, ...]]:
    """(D, hidden, chunk[, key width, window rows]) of the wide-state MLP-memory cases: a small one with
    several hidden blocks (the CI test's case), Titans at head dim 64 (hidden 256) at every chunk tile,
    for every padded chunk tile the largest head dim ``mlp_memory.supports_wide`` admits there (hidden
    4 D), and keys wider than values with the Omega window: OmegaNet/Atlas at 760M (degree-2 features of
    64-dim heads, 2,144 wide; hidden 64; window 8 at chunk 16) and on MQAR (560 wide, window 4 at
    chunk 8)."""
    from memnets.kernels.mlp_memory import MAX_WIDE_DIM_FOR_TILE

    shapes: list[tuple[int, ...]] = [(16, 128, 16), *((64, 256, L) for L in (16, 32, 64))]
    shapes += [(D, 4 * D, L) for L, D in MAX_WIDE_DIM_FOR_TILE.items() if (D, 4 * D, L) not in shapes]
    return [*shapes, (64, 64, 16, 2144, 7), (32, 32, 8, 560, 3)]


def _mlp_wide_cases(
    shapes: list[tuple[int, ...]], dots: tuple[int, ...] = (3, 0), maps: dict[str, int] | None = None
) -> list[Case]:
    """The wide-state kernels at each shape (D, hidden, chunk[, key width, window rows]), with every Titans
    branch, per operand mode in ``dots`` (bf16, what autocast runs, and tf32x3, what float32 inputs
    run: their hidden blocks differ), and the other branches once at the smallest shape; each shape's
    first five cases are its forward, STORE forward, backward (the split recurrence,
    :mod:`memnets.kernels.mlp_memory.wide_split_backward`, with keys as wide as values, else the
    one-program kernel), split forward and the backward's reads
    (:mod:`memnets.kernels.mlp_memory.wide_reads`) at ``dots[0]``, and with one operand mode the
    sixth its split forward's reads, the seventh its split STORE forward (the backward's
    recompute) and, where the backward splits, the eighth the split backward's sums. ``maps``: Moneta's
    maps (``END_MAP``, ``TOKEN_MAP``) the shapes' backward takes (none by default)."""
    import torch

    from memnets.kernels.mlp_memory.config import block as _block
    from memnets.kernels.mlp_memory.config import (
        chunk_state_dtype,
        split_constants,
        wide_num_warps,
        wide_split,
    )
    from memnets.kernels.mlp_memory.limits import default_hidden_block
    from memnets.kernels.mlp_memory.wide_forward import key_block
    from memnets.kernels.mlp_memory.wide_reads import splits_reads

    maps = maps or {"END_MAP": 0, "TOKEN_MAP": 0}

    types, full, bare = _mlp_branches()
    types |= {"P0": "i32", "c": "i32", "n": "i32", "end_q": "fp32", "end_floor": "fp32"}

    def shape(D: int, DH: int, L: int, dot: int, DI: int | None = None, P: int = 0) -> dict[str, int]:
        BHB = min(default_hidden_block(dot), _block(DH))
        DI = DI or D
        KB = key_block(DI, D)
        return {
            **_mlp_shape(D, DH, L),
            **{"BD": _block(D), "DI": DI, "KB": KB, "NI": -(-DI // KB), "P": P, "BK": _block(P + L)},
            **{"BHB": BHB, "NB": -(-DH // BHB), "DOT": dot},
        }

    def case(kernel: str, constexprs: dict[str, object]) -> Case:
        mod = next(
            m for m in ("split_backward", "read_backward", "backward", "split", "forward") if m in kernel
        )
        mod = "reads" if mod == "read_backward" else mod
        warps = wide_num_warps(int(constexprs["BD"]), kernel)  # type: ignore[call-overload]
        # the chunk-start states in the type the launchers keep them in for this operand mode
        kept = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}[
            chunk_state_dtype(int(constexprs["DOT"]))  # type: ignore[call-overload]
        ]
        states = {f"{n}_chunks": kept for n in ("w1", "w2", "s1", "s2")}
        return Case(
            f"mlp_memory.wide_{mod}", kernel, constexprs, {**types, **states}, num_warps=warps, num_stages=1
        )

    def sizes(constexprs: dict[str, object]) -> dict[str, int]:
        """The split kernels' sizes at the programs per head of a 4 x 16-head micro-batch (the flagships')."""
        nb = int(constexprs["NB"])  # type: ignore[call-overload]
        return split_constants(wide_split(64, nb), nb)

    def split(constexprs: dict[str, object], first: bool = False, store: bool = False) -> Case:
        """The split forward; with ``store`` the backward's recompute."""
        return case("_wide_split_kernel", {**constexprs, **sizes(constexprs), "FIRST": first, "STORE": store})

    def splits(constexprs: dict[str, object], maps: dict[str, int]) -> bool:
        """Whether the backward at these sizes and maps splits (wide_reads.splits_reads)."""
        DI, D = int(constexprs["DI"]), int(constexprs["D"])  # type: ignore[call-overload]
        return splits_reads(maps["TOKEN_MAP"], DI, D, maps["END_MAP"])

    def backward(constexprs: dict[str, object], maps: dict[str, int], first: bool = False) -> Case:
        """The backward's recurrence: split where the reads leave it, else one program per (sequence,
        head) with ``maps``."""
        if not splits(constexprs, maps):
            return case("_wide_backward_kernel", {**constexprs, **maps})
        return case("_wide_split_backward_kernel", {**constexprs, **sizes(constexprs), "FIRST": first})

    def sums(constexprs: dict[str, object]) -> Case:
        keep = ("H", "DI", "L", "BL", "P", "BK", "BD", "KB", "NI", "DOT", "HAS_MOM")
        kept = {k: constexprs[k] for k in keep}
        return case("_wide_split_backward_sums_kernel", {**kept, "SPLIT": sizes(constexprs)["SPLIT"]})

    def reads(constexprs: dict[str, object]) -> Case:
        keep = ("H", "D", "L", "BL", "BD", "P", "BK", "DOT", "LN")
        return case("_wide_split_read_kernel", {**{k: constexprs[k] for k in keep}, "SPLIT": 2})

    cases = []
    for D, DH, L, *keys in shapes:  # keys: the key width and the Omega window's rows, where given
        for dot in dots:
            for store in (False, True):
                c = {**shape(D, DH, L, dot, *keys), **full, "STORE": store, "END_MAP": 0, "TOKEN_MAP": 0}
                cases.append(case("_wide_forward_kernel", c))
            cases.append(backward({**shape(D, DH, L, dot, *keys), **full}, maps))
            cases.append(split({**shape(D, DH, L, dot, *keys), **full}))
            cases.append(case("_wide_read_backward_kernel", {**shape(D, DH, L, dot, *keys), **full}))
        cases.append(reads({**shape(D, DH, L, dots[0], *keys), **full}))
        cases.append(split({**shape(D, DH, L, dots[0], *keys), **full}, store=True))
        if splits(shape(D, DH, L, dots[0], *keys), maps):
            cases.append(sums({**shape(D, DH, L, dots[0], *keys), **full}))
    # the other branches once, at the smallest shape with keys as wide as values where there is one;
    # Moneta's chunk-end map and per-token map ("paper") at the largest such shape
    small = shape(*min(shapes, key=lambda s: (len(s) > 3, s[0] * s[1] * s[2]))[:3], dots[0])
    cases.append(
        case("_wide_forward_kernel", {**small, **bare, "STORE": False, "END_MAP": 0, "TOKEN_MAP": 0})
    )
    none = {"END_MAP": 0, "TOKEN_MAP": 0}
    cases += [backward({**small, **bare}, none), backward({**small, **full}, none, first=True)]
    cases.append(case("_wide_read_backward_kernel", {**small, **bare}))
    cases += [split({**small, **bare}), split({**small, **full}, first=True)]
    large = shape(*max(shapes, key=lambda s: (len(s) == 3, s[0] * s[1] * s[2]))[:3], dots[0])
    for store in (False, True):
        cases.append(
            case("_wide_forward_kernel", {**large, **full, "STORE": store, "END_MAP": 1, "TOKEN_MAP": 0})
        )
        cases.append(
            case("_wide_forward_kernel", {**large, **full, "STORE": store, "END_MAP": 0, "TOKEN_MAP": 1})
        )
    for end_map, token_map in ((1, 0), (0, 1)):
        cases.append(backward({**large, **full}, {"END_MAP": end_map, "TOKEN_MAP": token_map}))
    return cases


def default_muon_shapes() -> list[tuple[int, int, int, int, int]]:
    """(D, hidden, chunk, key width, window rows) of the Muon kernels: a small one (the CI
    test's case: degree-2 features of 16-dim heads, 152 wide), Atlas on MQAR (560 wide, window 4 at chunk
    8) and Atlas at 340M/760M (2,144 wide, hidden 64, window 8 at chunk 16)."""
    return [(16, 16, 8, 152, 2), (32, 32, 8, 560, 3), (64, 64, 16, 2144, 7)]


def _muon_cases(
    shapes: list[tuple[int, int, int, int, int]], dots: tuple[int, ...] = (3, 0), token: bool = False
) -> list[Case]:
    """The Muon kernels (:mod:`memnets.kernels.mlp_memory.muon_launch`: once per chunk, or with ``token``
    on every token) at each shape with Atlas's branches (GELU, LayerNorm, residual), per operand mode in
    ``dots``; each shape's first three cases are its forward, STORE forward and backward at ``dots[0]``."""
    from memnets.kernels.mlp_memory.config import ACTIVATIONS
    from memnets.kernels.mlp_memory.config import block as _block
    from memnets.kernels.mlp_memory.muon_ops import MUON_NUM_WARPS, ns_dot
    from memnets.kernels.mlp_memory.wide_forward import key_block

    types = {n: "i32" for n in ("T", "P0", "C0", "NC", "NCT")}
    types |= {n: "fp32" for n in ("ln_eps", "na", "nb", "nc", "ns_eps")}
    cases = []
    for D, DH, L, DI, P in shapes:
        KB = key_block(DI, D)
        for dot in dots:
            c = {
                **_mlp_shape(D, DH, L),
                **{"BD": _block(D), "DI": DI, "KB": KB, "NI": -(-DI // KB), "BHB": _block(DH), "P": P},
                **{"BK": _block(P + L), "ACT": ACTIVATIONS["gelu"], "DOT": dot, "LN": True, "RES": True},
                "STEPS": 5,
                "NSD": ns_dot(dot),
            }
            warps, name = MUON_NUM_WARPS, "token_muon" if token else "muon"
            for store in (False, True):
                kernel = {**c, "STORE": store}
                cases.append(
                    Case(f"mlp_memory.{name}_forward", f"_{name}_forward_kernel", kernel, types, warps, 1)
                )
            cases.append(Case(f"mlp_memory.{name}_backward", f"_{name}_backward_kernel", c, types, warps, 1))
    return cases


def all_cases(mlp_shapes: list[tuple[int, int, int]] | None = None) -> list[Case]:
    mlp = _mlp_cases(default_mlp_shapes() if mlp_shapes is None else mlp_shapes)
    wide = _mlp_wide_cases(default_mlp_wide_shapes() if mlp_shapes is None else mlp_shapes)
    wide += _wide_simplex_cases()
    muon = _muon_cases(default_muon_shapes()) + _muon_cases(default_muon_shapes(), token=True)
    return _gated_delta_cases() + _scan_cases() + _titans_cases() + mlp + wide + muon


def quick(cases: list[Case]) -> list[Case]:
    """One case per kernel: the one with the smallest tiles (the cheapest to compile)."""

    def size(c: Case) -> int:
        return sum(v for v in c.constexprs.values() if isinstance(v, int) and not isinstance(v, bool))

    chosen: dict[str, Case] = {}
    for c in sorted(cases, key=size):
        chosen.setdefault(c.name, c)
    return [c for c in cases if chosen.get(c.name) is c]


def launched_kernels() -> list[str]:
    """Every top-level ``@triton.jit`` kernel (name ending in ``_kernel``; the others are helpers
    inlined into them) of the modules in :data:`MODULES`."""
    names = []
    for mod_name in MODULES:
        mod = importlib.import_module(f"memnets.kernels.{mod_name}")
        for attr, obj in vars(mod).items():
            if isinstance(obj, triton.runtime.jit.JITFunction) and attr.endswith("_kernel"):
                names.append(f"{mod_name}.{attr}")
    return names


def cuobjdump(cubin: bytes, *flags: str) -> str | None:
    """``cuobjdump FLAGS`` of a cubin with the tool Triton ships, or None where it has none."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, *flags, f.name], capture_output=True, text=True).stdout


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers per thread, stack bytes) from ``cuobjdump --dump-resource-usage``."""
    out = cuobjdump(cubin, "--dump-resource-usage")
    if out is None:
        return None, None
    fields = dict(tok.split(":", 1) for tok in out.split() if tok.startswith(("REG:", "STACK:")))
    reg, stack = fields.get("REG"), fields.get("STACK")
    return (int(reg) if reg else None), (int(stack) if stack else None)


def compile_case(case: Case, arch: int) -> dict[str, object]:
    """Compile one case; the row of the report."""
    fn = getattr(importlib.import_module(f"memnets.kernels.{case.module}"), case.kernel)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    signature = {}
    for arg in fn.arg_names:
        if arg in case.constexprs:
            signature[arg] = "constexpr"
        else:
            signature[arg] = case.types.get(arg, "*fp32")
    attrs = {(i,): backend.parse_attr("D") for i, arg in enumerate(fn.arg_names) if signature[arg][0] == "*"}
    row: dict[str, object] = {"kernel": case.name, "constexprs": case.describe()}
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Triton's notices about changing defaults
            kernel = triton.compile(
                ASTSource(fn, signature, case.constexprs, attrs),
                target=target,
                options={"num_warps": case.num_warps, "num_stages": case.num_stages},
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        row.update(status="error", error=f"{type(e).__name__}: {first}"[:300])
        return row
    shared = int(kernel.metadata.shared)
    registers, stack = _resources(kernel.asm["cubin"])
    limit = SHARED_LIMIT.get(arch)
    status = "ok" if limit is None or shared <= limit else f"shared > {limit}"
    row.update(status=status, shared=shared, registers=registers, stack=stack)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def environment_problem() -> str | None:
    """Why this Triton cannot compile for NVIDIA targets here, or ``None``."""
    if "nvidia" not in triton.backends.backends:
        return "Triton has no NVIDIA backend"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and not os.environ.get("TRITON_PTXAS_PATH"):
        return f"no ptxas (looked for {ptxas} and TRITON_PTXAS_PATH)"
    return None


def _shape(text: str) -> tuple[int, int, int]:
    try:
        D, hidden, chunk = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected D,HIDDEN,CHUNK (three integers), got {text!r}") from None
    if min(D, hidden, chunk) < 1:
        raise argparse.ArgumentTypeError(f"D, HIDDEN and CHUNK must be >= 1, got {text!r}")
    return D, hidden, chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (H100), 80 (A100)")
    parser.add_argument("--only", default="", help="run the cases whose kernel name contains this")
    parser.add_argument("--quick", action="store_true", help="one case per kernel, its smallest (for CI)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--mlp",
        nargs="+",
        type=_shape,
        default=None,
        metavar="D,HIDDEN,CHUNK",
        help="the MLP-memory kernels' shapes, instead of the defaults (e.g. --mlp 16,64,16 32,128,32)",
    )
    parser.add_argument(
        "--num-warps", type=int, default=None, help="compile every case at this many warps (spill studies)"
    )
    args = parser.parse_args(argv)
    problem = environment_problem()
    if problem:
        print(f"cannot compile: {problem}", file=sys.stderr)
        return 2
    cases = all_cases(args.mlp)
    missing = sorted(set(launched_kernels()) - {c.name for c in cases})
    cases = [c for c in cases if args.only in c.name]
    if args.quick:
        cases = quick(cases)
    if args.num_warps is not None:
        cases = [dataclasses.replace(c, num_warps=args.num_warps) for c in cases]
    print(f"Triton {triton.__version__}, target sm_{args.arch}")
    wide = max([len("constexprs"), *(len(c.describe()) for c in cases)])
    header = f"{'kernel':45} {'constexprs':{wide}} {'status':8} {'shared B':>9} {'regs':>5} {'stack B':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for case in cases:
        row = compile_case(case, args.arch)
        rows.append(row)
        cols = [str(row.get(k, "")) for k in ("shared", "registers", "stack")]
        print(
            f"{row['kernel']:45} {row['constexprs']:{wide}} {row['status']:8} {cols[0]:>9} {cols[1]:>5} {cols[2]:>8}"
        )
        if "error" in row:
            print(f"    {row['error']}")
    for name in missing:
        print(f"{name}: no compile case (add one in scripts/check_kernels_compile.py)")
    failed = [r for r in rows if r["status"] != "ok"]
    print(
        f"{len(rows) - len(failed)}/{len(rows)} compiled within limits"
        + (f"; {len(missing)} kernels without a case" if missing else "")
    )
    if args.json:
        mlp_shapes = default_mlp_shapes() if args.mlp is None else args.mlp
        meta = {"triton": triton.__version__, "arch": args.arch, "missing": missing, "mlp_shapes": mlp_shapes}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
