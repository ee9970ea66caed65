"""The roofline model of the static kernel report (``scripts/kernel_report.py``, whose docstring
writes it out): achievable rates per instruction kind, the latency and spill floors of a kernel's
sequential step, and the launch floor of the eager chunked form. Estimates that rank designs, not
timings."""

from __future__ import annotations

from typing import Any

SMS = 132  # streaming multiprocessors of an H100 SXM


PEAK_BF16 = 989.4  # H100 SXM dense bf16 TFLOP/s (benchmarks.flops.PEAKS)
# achievable whole-GPU TFLOP/s per instruction kind: a fraction of the datasheet peak of its type
RATES = {
    "wgmma.bf16": 0.75 * 989.4,
    "wgmma.fp16": 0.75 * 989.4,
    "wgmma.tf32": 0.75 * 494.7,
    "mma.sync.bf16": 0.5 * 989.4,
    "mma.sync.fp16": 0.5 * 989.4,
    "mma.sync.tf32": 0.5 * 494.7,
    "fp32": 0.7 * 66.9,  # CUDA-core FMA: eager float32 matmuls with TF32 off
    "compiled.bf16": 0.3 * 989.4,  # small batched bf16 matmuls of a compiled chunk step
}
DOT_LATENCY_S = 0.1e-6  # one matmul of a program's dependent chain: issue to use, operands staged
# per eager op (Python dispatch + launch); per kernel of a compiled step, launched by inductor's wrapper
# without CUDA graphs (memnets.compiled says why), its guards and Python call spread over its kernels
LAUNCH_S = {"chunked": 5e-6, "compiled": 4e-6}
COMPILED_FUSION = 3.0  # eager ops per kernel after torch.compile fuses a chunk step (a guess)
L1_SPILL_BW = 200e9  # bytes/s per SM of local-memory traffic that stays in L1
L2_BW = 5.5e12  # bytes/s of the L2, shared by the SMs that run programs, once spills outgrow L1
L1_BYTES = 256 * 1024  # L1 + shared memory per SM


def step_seconds(
    row: dict[str, Any], num_warps: int, inner: int, programs: int, state_bytes: float = 0.0
) -> dict[str, float]:
    """One program's sequential step: tensor work at the achievable rate of its instruction kinds,
    the dependent chain of matmuls, the spilled bytes stored and loaded once per inner iteration (in
    L1, or the L2's share of each of the ``min(programs, SMS)`` busy SMs), and ``state_bytes``, the
    recurrent state the step reads and writes in global memory (the wide kernels' state blocks, the
    stored chunk states), at the L2's share; spills that outgrow L1 share that bandwidth with it. The
    step takes the largest."""
    compute = sum(
        f / (RATES.get(k, RATES["mma.sync.tf32"]) * 1e12 / SMS)
        for k, f in row.get("tensor_flop_per_step", {}).items()
    )
    latency = row.get("dots_per_step", 0) * DOT_LATENCY_S
    footprint = (row.get("stack") or 0) * 32 * num_warps
    l2_share = L2_BW / max(min(programs, SMS), 1)
    spill_bytes = 2 * footprint * inner
    if footprint + (row.get("shared") or 0) <= L1_BYTES:
        spill, state = spill_bytes / L1_SPILL_BW, state_bytes / l2_share
    else:  # spills and state traffic both go to L2
        spill, state = spill_bytes / l2_share, (spill_bytes + state_bytes) / l2_share
    return {
        "compute": compute,
        "latency": latency,
        "spill": spill,
        "state": state,
        "step": max(compute, latency, spill, state),
    }


def chunked_seconds(backend: str, launches_per_chunk: float, chunks: int, flop: float) -> float:
    """The chunked PyTorch form: per chunk, its ops' launch floor or their matmul work (eager: float32
    CUDA cores; compiled: bf16 at a small-matmul rate), whichever is larger."""
    if backend == "chunked":
        floor, rate = launches_per_chunk * LAUNCH_S["chunked"], RATES["fp32"]
    else:
        floor, rate = launches_per_chunk / COMPILED_FUSION * LAUNCH_S["compiled"], RATES["compiled.bf16"]
    return chunks * max(floor, flop / chunks / (rate * 1e12))


def estimate(flop: float | None, seconds: float) -> dict[str, float | None]:
    if flop is None or seconds <= 0:
        return {"tflops": None, "pct_bf16": None, "ms": seconds * 1e3 if seconds > 0 else None}
    tflops = flop / seconds / 1e12
    return {"tflops": tflops, "pct_bf16": 100 * tflops / PEAK_BF16, "ms": seconds * 1e3}
