"""Host time of the Titans memory kernels' launches: how long the Python side takes per call (forward,
forward + backward) at titans-760m's memory shapes, and how much of it is Triton's per-launch binding,
with :class:`memnets.kernels.relaunch.Relaunch` on (what the kernels run) and off (every launch through
``kernel[grid]``), in one run. Prints a table and writes JSON.

Without a GPU (the default off CUDA) Triton's driver is replaced by one that names an sm_90 device and
compiled kernels by ones that do nothing: Triton's binding, specialisation, cache lookup and launch
metadata run as on a GPU, the kernels do not, and nothing is compiled (the table counts the variants
Triton would compile). The tensors are on the CPU, so the PyTorch work around the kernels computes
for real (one sequence and head keep it small; its cost per launch on a GPU is similar). On CUDA the
kernels run: ``host_ms`` is the time until the call returns (launches queued), ``total_ms`` until the
GPU is done; host-bound when the two are close.

    python scripts/bench_host_launches.py --out host_launches.json            # no GPU
    python scripts/bench_host_launches.py --device cuda --B 4 --H 16          # on a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import timeit
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
import triton

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):  # memnets beside this script, uninstalled; the benchmark's inputs
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_titans_kernels import memory_step  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from benchmarks.no_gpu_launch import no_gpu  # noqa: E402
from memnets.kernels import relaunch  # noqa: E402
from memnets.kernels.mlp_memory import config as mlp_config  # noqa: E402
from memnets.memory import MemoryMLP  # noqa: E402
from memnets.memory.kernel_bridge import titans_mlp_chunked  # noqa: E402

JIT_RUN, RELAUNCH_CALL = JITFunction.run, relaunch.Relaunch.__call__  # before counting() wraps them


class Counts:
    """Launches per kernel, those through Triton's path (``kernel[grid]``), and compiles (no GPU)."""

    def __init__(self, compiles: Counter) -> None:
        self.launches, self.triton, self.compiles = Counter(), Counter(), compiles
        self.seconds = 0.0  # in the launches (Relaunch's calls, the other kernel[grid] calls)
        self.direct, self.direct_seconds = 0, 0.0  # the Relaunch calls that took no kernel[grid]
        self.sample: tuple | None = None  # a Relaunch that launched directly, and its arguments
        self.inside = threading.local()  # in a Relaunch call: its Triton-path launch is not another


@contextlib.contextmanager
def counting(counts: Counts, fake: bool, use_relaunch: bool) -> Iterator[None]:
    def run(self, *args, **kwargs):
        counts.triton[self.__name__] += 1
        if getattr(counts.inside, "on", False):
            return JIT_RUN(self, *args, **kwargs)
        counts.launches[self.__name__] += 1
        start = time.perf_counter()
        try:
            return JIT_RUN(self, *args, **kwargs)
        finally:
            counts.seconds += time.perf_counter() - start

    def call(self, *args):
        counts.launches[self.kernel.__name__] += 1
        counts.inside.on = True
        before = counts.triton.total()
        start = time.perf_counter()
        try:
            if use_relaunch:
                return RELAUNCH_CALL(self, *args)
            return self.kernel[self.grid](*args, **self.kwargs)
        finally:
            seconds = time.perf_counter() - start
            counts.seconds += seconds
            if counts.triton.total() == before:
                counts.direct += 1
                counts.direct_seconds += seconds
                counts.sample = (self, args)
            counts.inside.on = False

    JITFunction.run, relaunch.Relaunch.__call__ = run, call
    try:
        with (
            no_gpu(on_compile=lambda fn: counts.compiles.update([fn.__name__]))
            if fake
            else contextlib.nullcontext()
        ):
            yield
    finally:
        JITFunction.run, relaunch.Relaunch.__call__ = JIT_RUN, RELAUNCH_CALL


def measure(step, device: torch.device, repeats: int, counts: Counts) -> dict:
    step()  # compiles, then the counted calls
    counts.launches.clear()
    counts.triton.clear()
    counts.seconds, counts.direct, counts.direct_seconds = 0.0, 0, 0.0
    host = total = 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        host += time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total += time.perf_counter() - start
    launches = sum(counts.launches.values()) / repeats
    triton = sum(counts.triton.values())
    row = {
        "host_ms": 1e3 * host / repeats,
        "total_ms": 1e3 * total / repeats if device.type == "cuda" else None,
        "launches": launches,
        "triton_path": triton / repeats,
        "launch_ms": 1e3 * counts.seconds / repeats,
        "launch_us": 1e6 * counts.seconds / repeats / launches,
        # per launch through kernel[grid] and per direct one
        "triton_us": 1e6 * (counts.seconds - counts.direct_seconds) / max(triton, 1),
        "direct_us": 1e6 * counts.direct_seconds / counts.direct if counts.direct else None,
        "per_kernel": {k: v // repeats for k, v in counts.launches.items()},
    }
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    # PyTorch's work around the kernels: ATen ops called from Python (not from inside another ATen op)
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    outer = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    return {
        **row,
        "aten_ops": len(outer),
        "aten_ops_by_name": dict(Counter(e.name for e in outer).most_common(8)),
    }


def isolated(sample: tuple, number: int = 200) -> dict[str, float]:
    """µs per launch of one of the split kernels' launches alone (``timeit``, Triton's and Relaunch's own
    functions, not the counting wrappers): Relaunch's direct call, its argument check, and the same
    launch through ``kernel[grid]``. On CUDA the launches run (fewer than the launch queue holds)."""
    launch, args = sample

    def per_launch(fn) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return 1e6 * timeit.timeit(fn, number=number) / number

    return {
        "direct": per_launch(lambda: RELAUNCH_CALL(launch, *args)),
        "check": per_launch(lambda: launch._same(args)),
        "kernel_grid": per_launch(
            lambda: JIT_RUN(launch.kernel, *args, grid=launch.grid, warmup=False, **launch.kwargs)
        ),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else no GPU), cpu, cuda")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=1)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--D", type=int, default=96, help="head dim (titans-760m's)")
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--C", type=int, default=16, help="chunk size")
    p.add_argument(
        "--split",
        type=int,
        default=2,
        help="programs per (sequence, head): titans-760m's on an H100 by default",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench_host_launches.json")
    a = p.parse_args(argv)
    name = "cuda" if a.device == "auto" and torch.cuda.is_available() else a.device
    device = torch.device("cpu" if name == "auto" else name)
    fake = device.type != "cuda"
    if fake and os.environ.get("TRITON_INTERPRET") == "1":
        p.error("runs Triton's launch path: unset TRITON_INTERPRET")
    mlp_config.WIDE_SPLIT = a.split
    torch.manual_seed(0)
    arch = MemoryMLP(a.H, a.D, expansion=a.expansion, residual=True, layer_norm=True).to(device)
    rows: list[dict] = []
    compiles: Counter = Counter()  # variants compiled over the whole run (Triton's cache is shared)
    single: dict[str, float] = {}  # one launch timed alone
    for backward in (False, True):
        for use_relaunch in (True, False):
            counts = Counts(compiles)
            with counting(counts, fake, use_relaunch):
                step, _ = memory_step(
                    titans_mlp_chunked, arch, a.B, a.T, a.C, torch.bfloat16, device, backward
                )
                row = measure(step, device, a.repeats, counts)
                if counts.sample is not None and not single:
                    single = isolated(counts.sample)
            rows.append({"pass": "fwd+bwd" if backward else "fwd", "relaunch": use_relaunch, **row})
    meta = {
        "device": torch.cuda.get_device_name(device)
        if not fake
        else "none (Triton's launch path, no kernels)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shape": {k: getattr(a, k) for k in ("B", "H", "T", "D", "expansion", "C", "split")},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"host time per call, {meta['device']}, {meta['shape']}")
    print(
        "| pass | Relaunch | host ms | of which launching | total ms | launches | via kernel[grid] | µs each "
        "| µs direct | ATen ops |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        total = "-" if r["total_ms"] is None else f"{r['total_ms']:.1f}"
        print(
            f"| {r['pass']} | {'on' if r['relaunch'] else 'off'} | {r['host_ms']:.1f} | {r['launch_ms']:.1f} | "
            f"{total} | {r['launches']:.0f} | {r['triton_path']:.0f} | {r['triton_us']:.1f} | "
            f"{'-' if r['direct_us'] is None else format(r['direct_us'], '.1f')} | {r['aten_ops']} |"
        )
    if fake:
        print("variants compiled per kernel (fwd and fwd+bwd):", dict(compiles))
    meta["compiles"] = dict(compiles) if fake else None
    meta["one_launch_us"] = single
    if single:
        print(
            f"one split-kernel launch alone: {single['direct']:.1f} µs direct (of which the argument check "
            f"{single['check']:.1f}), {single['kernel_grid']:.1f} µs through kernel[grid]"
        )
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {a.out}")
    return rows


if __name__ == "__main__":
    main()
