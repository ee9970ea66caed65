"""The roofline model of the static kernel report (``scripts/kernel_report.py``, whose docstring
writes it out): achievable rates per instruction kind, the latency and spill floors of a kernel's
sequential step, and the launch floor of the eager chunked form. Estimates that rank designs, not
timings.

The exposed-latency floor was added after the first GPU run (benchmarks/RESULTS.md §26), where the
titans-760m forward took 30× the model's time: one program of 4 warps per SM leaves one warp per
scheduler, so nearly every load's and barrier's latency is waited out in turn. Its cycles per
instruction kind are round figures of published Hopper microbenchmarks (Luo et al., "Benchmarking and
Dissecting the Nvidia Hopper GPU Architecture", arXiv:2402.13499; L1 and shared memory ≈ 30 cycles,
L2 ≈ 260), not measured here; a barrier's 20 cycles is a guess."""

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
# per eager op (Python dispatch + launch): measured on the lent H200 (RESULTS §26: the titans-760m
# memory's eager chunked forward, 64 chunks of 126 ops, 164 ms, launch-bound: 20 µs per op, not the 5
# assumed before); per kernel of a compiled step, launched by inductor's wrapper without CUDA graphs
# (memnets.compiled says why), its guards and Python call spread over its kernels: not measured; and
# the host's cost of one Triton launch from Python (binding ~40 arguments; the split wide forward
# launches once per chunk): measured without a GPU on a 2-core box (scripts/bench_host_launches.py,
# RESULTS §58), 45-90 µs through kernel[grid], about 9 µs through memnets.kernels.relaunch, which the
# per-chunk launches take (a quarter of the wide kernels' launches still bind: per segment, per variant);
# on a GPU host not measured, 10 µs kept
LAUNCH_S = {"chunked": 20e-6, "compiled": 4e-6, "triton": 10e-6}
COMPILED_FUSION = 3.0  # eager ops per kernel after torch.compile fuses a chunk step (a guess)
L1_SPILL_BW = 200e9  # bytes/s per SM of local-memory traffic that stays in L1
L2_BW = 5.5e12  # bytes/s of the L2, shared by the SMs that run programs, once spills outgrow L1
L1_BYTES = 256 * 1024  # L1 + shared memory per SM
CLOCK_HZ = 1.755e9  # H100 SXM clock under load
L2_LATENCY_CYCLES = 260
# cycles a warp waits per instruction of each kind when no other warp on its scheduler hides them
# (compiled_asm.sass_per_step counts them): a global load from L2, a local load from L1 (or from L2
# once the spills outgrow L1), a shared-memory load, a barrier; every instruction issues in >= 1 cycle
LATENCY_CYCLES = {
    "instructions": 1,
    "global_loads": L2_LATENCY_CYCLES,
    "local_loads": 33,
    "shared_loads": 30,
    "barriers": 20,
}


def step_seconds(
    row: dict[str, Any], num_warps: int, inner: int, programs: int, state_bytes: float = 0.0
) -> dict[str, float]:
    """One program's sequential step: tensor work at the achievable rate of its instruction kinds,
    the dependent chain of matmuls, the spilled bytes stored and loaded once per inner iteration (in
    L1, or the L2's share of each of the ``min(programs, SMS)`` busy SMs), the exposed latency of its
    instructions (:func:`exposed_seconds`), and ``state_bytes``, the
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
    in_l1 = footprint + (row.get("shared") or 0) <= L1_BYTES
    exposed = exposed_seconds(row.get("sass_per_step"), num_warps, in_l1)
    if in_l1:
        spill, state = spill_bytes / L1_SPILL_BW, state_bytes / l2_share
    else:  # spills and state traffic both go to L2
        spill, state = spill_bytes / l2_share, (spill_bytes + state_bytes) / l2_share
    return {
        "compute": compute,
        "latency": latency,
        "spill": spill,
        "state": state,
        "exposed": exposed,
        "step": max(compute, latency, spill, state, exposed),
    }


def exposed_seconds(counts: dict[str, float] | None, num_warps: int, spills_in_l1: bool) -> float:
    """The latency floor of one step: each instruction kind's per-warp count times its latency
    (``LATENCY_CYCLES``; local loads at the L2's when the spills outgrow L1), summed (a scheduler with
    one warp waits them out in turn), divided by the warps each scheduler can switch between (a
    program's warps over the SM's 4 schedulers); 0 without the SASS's counts."""
    if not counts:
        return 0.0
    cycles = sum(LATENCY_CYCLES[k] * counts.get(k, 0.0) for k in LATENCY_CYCLES)
    if not spills_in_l1:
        cycles += (L2_LATENCY_CYCLES - LATENCY_CYCLES["local_loads"]) * counts.get("local_loads", 0.0)
    return cycles / CLOCK_HZ / max(1, num_warps // 4)


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
