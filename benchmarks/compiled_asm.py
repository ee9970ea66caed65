"""What the sm_90 compile made of a kernel, read from its PTX, TTGIR and SASS text: the tensor-core
instructions, their operand types, every matmul's shape and loop depth, and the instructions one step
issues per warp by kind (the latency-bound floor's inputs). Plain text processing (no Triton import),
so tests can feed it lines in-process; ``benchmarks/kernel_report.py`` applies it to each compiled
launch."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from typing import Any

_MMA_ENC = re.compile(
    r"^#(mma\d*) = #ttg\.nvidia_mma<\{versionMajor = (\d), .*?warpsPerCTA = \[(\d+), (\d+)\]"
)
_DOT = re.compile(r"= (tt\.dot|ttng\.warp_group_dot) .*?-> tensor<(\d+)x(\d+)xf32, #(mma\d*)>")
_A_TYPE = re.compile(r":\s*(?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x(\w+)")


_TRIPS = re.compile(r"scf\.for %\S+ = %c0_i32 to %c(\d+)_i32 step %c1_i32")


def _loop_nest(ttgir: str, inner: int) -> Iterator[tuple[list[int], int | None, str]]:
    """(trip counts of the ``scf.for`` loops around the line, outermost first; the trip count of the loop
    the line opens, or None; line) of every line of the kernel's TTGIR: its regions are indented one
    level deeper than the op that opens them, so a line at or left of a loop's indent (its closing
    brace included) is outside that loop. Trip counts are read from constant bounds (the wide
    kernels' hidden and key blocks), ``inner`` where a bound is not a constant."""
    stack: list[tuple[int, int]] = []  # (indent, trip count) of the enclosing loops
    for line in ttgir.splitlines():
        indent = len(line) - len(line.lstrip())
        while stack and indent <= stack[-1][0]:
            stack.pop()
        opens = None
        if "scf.for " in line and line.rstrip().endswith("{"):
            m = _TRIPS.search(line)
            opens = int(m.group(1)) if m else inner
        yield [trips for _, trips in stack], opens, line
        if opens is not None:
            stack.append((indent, opens))


def _loop_weights(ttgir: str, inner: int, step_loop: bool = True) -> Iterator[tuple[int, str]]:
    """(runs per step, line) of every line of the TTGIR: the product of the trip counts of the loops
    around it inside the outermost (the chunk loop), or of all of them where the kernel has no step
    loop (``step_loop=False``: one step per launch or per program)."""
    for enclosing, _, line in _loop_nest(ttgir, inner):
        yield math.prod(enclosing[1 if step_loop else 0 :]), line


def _ttgir_loops(ttgir: str, inner: int) -> list[tuple[int, int]]:
    """(nesting depth, trip count) of every ``scf.for`` of the TTGIR in source order."""
    return [(len(enclosing), opens) for enclosing, opens, _ in _loop_nest(ttgir, inner) if opens is not None]


_SASS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_HEX = re.compile(r"0x([0-9a-f]+)")
# per-warp instruction kinds of the latency floor (benchmarks.kernel_roofline.LATENCY_CYCLES)
SASS_KINDS = {"LDG": "global_loads", "LDL": "local_loads", "LDS": "shared_loads", "BAR": "barriers"}


def _kept_loops(loops: list[tuple[int, int]], depth: list[int]) -> list[tuple[int, int]] | None:
    """The TTGIR's loops ((depth, trip count), source order) that the SASS's loops (their depths, in
    address order) are: all of them where the depths agree; where the SASS has fewer, the compiler
    unrolled some innermost loops completely (their copies are straight-line code, which the count
    weights by the loops still around it, as it runs), so every way of dropping that many innermost
    loops that leaves the SASS's depths is tried, and kept where they all leave the same loops (e.g.
    any of several sibling loops with one trip count). None where none or several differ."""
    if [d for d, _ in loops] == depth:
        return loops
    if len(depth) > len(loops):
        return None
    innermost = [i for i, (d, _) in enumerate(loops) if i + 1 == len(loops) or loops[i + 1][0] <= d]
    left = {
        tuple(loop for i, loop in enumerate(loops) if i not in dropped)
        for dropped in itertools.combinations(innermost, len(loops) - len(depth))
    }
    matching = [kept for kept in left if [d for d, _ in kept] == depth]
    return list(matching[0]) if len(matching) == 1 else None


def sass_per_step(sass: str, ttgir: str, inner: int, step_loop: bool = True) -> dict[str, float] | None:
    """The instructions one step (one chunk) issues per warp, by kind: ``instructions`` in all and
    ``global_loads`` (LDG), ``local_loads`` (LDL: spilled registers read back), ``shared_loads``
    (LDS, LDSM) and ``barriers`` (BAR). The SASS's loops are its backward branches; they are matched,
    in address order, to the TTGIR's ``scf.for`` loops in source order, whose trip counts weight them
    (the outermost loops walk the chunks: once per step, as is code outside them; without a
    ``step_loop`` every loop is inside the step). Innermost loops the compiler unrolled completely are
    matched as :func:`_kept_loops` says. None when the two loop nests do not match otherwise (a loop
    split, or an unrolled one that cannot be told apart)."""
    rows = [(int(a, 16), op, rest) for a, op, rest in _SASS.findall(sass)]
    branches = [
        (int(m.group(1), 16), a) for a, op, rest in rows if op == "BRA" for m in [_HEX.search(rest)] if m
    ]
    sass_loops = sorted((target, a) for target, a in branches if target < a)
    depth = [sum(s0 <= s < e <= e0 and (s0, e0) != (s, e) for s0, e0 in sass_loops) for s, e in sass_loops]
    loops = _kept_loops(_ttgir_loops(ttgir, inner), depth)
    if not rows or loops is None:
        return None
    counts = dict.fromkeys(["instructions", *SASS_KINDS.values()], 0.0)
    for addr, op, _ in rows:
        enclosing = [(d, trips) for (s, e), (d, trips) in zip(sass_loops, loops) if s <= addr <= e]
        # once per step outside the loops inside the chunk loop, as _loop_weights counts (a kernel
        # without a chunk loop is one step; a chunk loop's prologue is counted once per chunk, a bound)
        weight = math.prod(trips for d, trips in enclosing if d > 0 or not step_loop)
        counts["instructions"] += weight
        kind = SASS_KINDS.get(op[:3])
        if kind:
            counts[kind] += weight
    return counts


def tensor_cores(ptx: str, ttgir: str, inner: int, step_loop: bool = True) -> dict[str, Any]:
    """The tensor-core work of one compiled kernel.

    From the PTX: the static count of ``mma.sync`` (Ampere-style, per warp) and ``wgmma`` (Hopper,
    per warpgroup) instructions and their operand types. From the TTGIR: every matmul (``tt.dot`` →
    mma.sync, ``ttng.warp_group_dot`` → wgmma) with its shape M×N×K and operand type, weighted by the
    loops around it: a matmul in the chunk loop runs once per step, one in loops inside it as often as
    their trip counts multiply (:func:`_loop_weights`: the wide kernels' hidden and key blocks;
    ``inner`` where a bound is not a constant; every loop where there is no ``step_loop``); ``replicated``: mma.sync products whose rows are fewer
    than 16 × the warps the encoding lays along them (those warps compute the same rows)."""
    mma_ops = re.findall(r"\bmma\.sync\.aligned\.[\w.]+", ptx)
    wgmma_ops = re.findall(r"\bwgmma\.mma_async\.sync\.aligned\.[\w.]+", ptx)
    encodings = {
        m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4)))
        for m in map(_MMA_ENC.match, ttgir.splitlines())
        if m
    }
    per_step: dict[str, float] = {}  # "wgmma.bf16" -> tensor FLOP per step (padded shapes, tf32x3 ×3)
    dots = replicated = 0
    for weight, line in _loop_weights(ttgir, inner, step_loop):
        m = _DOT.search(line)
        if not m:
            continue
        op, M, N, enc = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        a = _A_TYPE.search(line, max(line.find(" : "), 0))  # the type list after the op's attributes
        K = int(a.group(2)) if a else 16
        dtype = {"f32": "tf32", "bf16": "bf16", "f16": "fp16"}.get(a.group(3) if a else "f32", "tf32")
        passes = 3 if "tf32x3" in line else 1
        version, wm, wn = encodings.get(enc, (2, 1, 1))
        copies = 1
        if version == 2 and (16 * wm > M or 8 * wn > N):
            copies = max(wm * 16 // max(M, 1), 1) * max(wn * 8 // max(N, 1), 1)
            replicated += weight
        kind = (
            f"{'wgmma' if op.endswith('warp_group_dot') else 'mma.sync'}.{dtype}{'x3' if passes == 3 else ''}"
        )
        per_step[kind] = per_step.get(kind, 0.0) + 2.0 * M * N * K * passes * copies * weight
        dots += weight
    return {
        "mma_sync": len(mma_ops),
        "wgmma": len(wgmma_ops),
        "operand_types": sorted(
            {op.split(".")[-2] if op.startswith("wgmma") else op.split(".")[-3] for op in mma_ops + wgmma_ops}
        ),
        "instructions": sorted(set(mma_ops + wgmma_ops)),
        "dots_per_step": dots,
        "replicated_dots": replicated,
        "tensor_flop_per_step": per_step,
    }
