"""What the sm_90 compile made of a kernel, read from its PTX and TTGIR text: the tensor-core
instructions, their operand types, and every matmul's shape and loop depth. Plain text processing (no
Triton import), so tests can feed it lines in-process; ``benchmarks/kernel_report.py`` applies it to
each compiled launch."""

from __future__ import annotations

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


def _loop_weights(ttgir: str, inner: int) -> Iterator[tuple[int, str]]:
    """(runs per step, line) of every line of the kernel's TTGIR: its
    regions are indented one level deeper than the op that opens them, so a line at or left of a
    loop's indent (its closing brace included) is outside that loop. Runs per step: the product of the
    trip counts of the loops inside the outermost (the chunk loop), read from their constant bounds
    (the wide kernels' hidden and key blocks), ``inner`` for a loop whose bound is not a constant."""
    stack: list[tuple[int, int]] = []  # (indent, trip count) of the enclosing loops
    for line in ttgir.splitlines():
        indent = len(line) - len(line.lstrip())
        while stack and indent <= stack[-1][0]:
            stack.pop()
        yield math.prod(trips for _, trips in stack[1:]), line
        if "scf.for " in line and line.rstrip().endswith("{"):
            m = _TRIPS.search(line)
            stack.append((indent, int(m.group(1)) if m else inner))


def tensor_cores(ptx: str, ttgir: str, inner: int) -> dict[str, Any]:
    """The tensor-core work of one compiled kernel.

    From the PTX: the static count of ``mma.sync`` (Ampere-style, per warp) and ``wgmma`` (Hopper,
    per warpgroup) instructions and their operand types. From the TTGIR: every matmul (``tt.dot`` →
    mma.sync, ``ttng.warp_group_dot`` → wgmma) with its shape M×N×K and operand type, weighted by the
    loops around it: a matmul in the chunk loop runs once per step, one in loops inside it as often as
    their trip counts multiply (:func:`_loop_weights`: the wide kernels' hidden and key blocks;
    ``inner`` where a bound is not a constant); ``replicated``: mma.sync products whose rows are fewer
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
    for weight, line in _loop_weights(ttgir, inner):
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
