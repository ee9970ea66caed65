"""One call of the wide-state MLP-memory kernels at a flagship shape, for Nsight Compute.

The static kernel report (``scripts/kernel_report.py``) estimated titans-760m's wide forward at 5 ms
(47 ms with its exposed-latency floor) where the first H200 run measured 156 ms (benchmarks/RESULTS.md
§26). This script is the workload that tells the two apart on a GPU: it compiles the kernels on a
warm-up call outside any NVTX range, then runs the measured call inside the range ``profile`` (one
forward, or one forward and backward), and prints the CUDA-event time of that call (also without
Nsight Compute, as a kernel-only timing).

Run under Nsight Compute (Firecracker machines only: on gVisor ncu cannot read the counters),
profiling the first kernels inside the range::

    ncu --clock-control none --nvtx --nvtx-include "profile/" --launch-count 3 \\
        --section SpeedOfLight --section LaunchStats --section Occupancy \\
        --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \\
        --section ComputeWorkloadAnalysis --section SourceCounters \\
        -o wide python scripts/ncu_wide_kernel.py --backward
    ncu --import wide.ncu-rep --page details > wide_details.txt

``scripts/ncu_wide_kernel.sh OUT`` runs exactly that. Without CUDA (``--device cpu`` under
``TRITON_INTERPRET=1``) it runs at whatever shape is given, to test the script itself.

Defaults are titans-760m's memory (head dim 96, hidden 384, LayerNorm, residual, momentum, chunk 16,
bf16 operands) at 4 × 1024 tokens, 16 heads: the same 64 programs and per-chunk work as the 4 × 4096
micro-batch, a quarter of its chunks (checkpoint segments launch the forward per segment, so every
launch covers √chunks chunks).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):  # memnets beside this script, uninstalled; the benchmark's inputs
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_titans_kernels import memory_inputs  # noqa: E402

from memnets.memory import MemoryMLP  # noqa: E402
from memnets.memory.kernel_bridge import titans_mlp_chunked  # noqa: E402


def call(arch: MemoryMLP, xs: list[torch.Tensor], a: argparse.Namespace) -> None:
    y, st = titans_mlp_chunked(
        arch, *xs, chunk_size=a.C, dot_precision=a.dot_precision, hidden_block=a.hidden_block
    )
    if a.backward:
        outs = [y, *st.weights, *st.momentum]
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])


def main(argv: list[str] | None = None) -> float:
    """Runs the workload; returns the measured call's time in ms."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--D", type=int, default=96)
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--C", type=int, default=16, help="chunk size")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument(
        "--dot-precision", default="auto", help="the kernels' matmul operands (auto: from the dtype)"
    )
    p.add_argument(
        "--hidden-block",
        type=int,
        help="the wide kernels' hidden block (default: theirs, where the state is too large)",
    )
    p.add_argument("--num-warps", type=int, help="override config.wide_num_warps (default: the kernels' own)")
    p.add_argument(
        "--split",
        type=int,
        help="programs per (sequence, head) of the forward (config.WIDE_SPLIT; default config.wide_split's "
        "choice, 1: one program each)",
    )
    p.add_argument("--backward", action="store_true", help="measure forward and backward, not the forward")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("ncu_wide_kernel: off CUDA the kernels need TRITON_INTERPRET=1")
    from memnets.kernels.mlp_memory import config

    if a.num_warps is not None:
        config.WIDE_NUM_WARPS = a.num_warps
    config.WIDE_SPLIT = a.split
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    arch = MemoryMLP(a.H, a.D, depth=2, expansion=a.expansion).to(device)
    xs = memory_inputs(a.B, a.T, a.H, a.D, dtype, device, a.backward)
    cuda = device.type == "cuda"

    call(arch, xs, a)  # compiles every kernel the measured call launches, outside the profiled range
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.nvtx.range("profile"):
            start.record()
            call(arch, xs, a)
            end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        call(arch, xs, a)
        ms = 1e3 * (time.perf_counter() - t0)
    what = "forward + backward" if a.backward else "forward"
    split = "default" if a.split is None else a.split
    print(
        f"ncu_wide_kernel: {what}, B={a.B} T={a.T} H={a.H} D={a.D} hidden={int(a.D * a.expansion)} C={a.C} "
        f"{a.dtype} split={split} on {device}: {ms:.2f} ms for the measured call"
    )
    return ms


if __name__ == "__main__":
    main()
