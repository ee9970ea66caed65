"""Time the Titans memory kernels against the engine's chunked PyTorch form (eager and compiled) and
titans-pytorch, forward and forward + backward, per chunk size, in one run. Prints a table, writes
JSON and, with ``--png``, a plot of time against chunk size.

Backends (each row is one backend, chunk size C and pass):

* ``chunked``: ``memnets.memory.memory_chunked`` in eager PyTorch.
* ``chunked_compiled``: the same under ``torch.compile`` (``--compile-backend``, default inductor;
  ``dynamic=False``; compiled afresh per chunk size and pass). ``--compile-scope chunk`` (default)
  is the library's ``compiled`` backend (:mod:`memnets.compiled`): the engine's per-chunk step
  compiled, the loop over chunks in Python (compile time does not grow with T), matmul operands in
  the inputs' dtype.
  ``--compile-scope function`` compiles all of ``memory_chunked``, which unrolls its T/C chunks
  into one graph (no per-chunk Python or launch overhead, the stronger baseline) but compiles for
  minutes once T/C reaches the hundreds. The first call (forward + backward for fwd+bwd), compile
  included, is timed apart as ``compile_s`` (inductor's on-disk caches stay on: shapes that an
  earlier run compiled compile faster); the rows time the calls after warm-up. A failed compile
  (common on CPU) becomes a skipped row with the error's first line; ``--no-compile`` leaves the
  backend out.
* ``titans_pytorch`` (``--titans-pytorch``, the ``bench`` extra): lucidrains' ``NeuralMemory``. It
  includes its own projections and chunk-pooled gates, so its rows are a rough peer, not the same op;
  skipped with a message when it does not import.
* ``triton`` (on CUDA, or with ``--triton`` under ``TRITON_INTERPRET=1``): ``--depth 1`` the linear
  memory kernel ``memnets.kernels.linear_memory`` (L2 bias, momentum + decay, no residual or
  LayerNorm); ``--depth 2`` the two-layer MLP kernel ``memnets.kernels.mlp_memory`` (D → E·D →
  D, GELU, residual + LayerNorm: Titans' default memory; ``--no-layer-norm`` drops the LayerNorm). The
  kernel's own ``supports(arch, bias, chunk_size)`` decides which chunk sizes run; the others are
  skipped rows that give its reason. Its rows also give ``tri/cmp`` and ``tri/eag``: the Triton time
  over the compiled and the eager chunked time at the same C and pass (below 1: Triton is faster).

    python scripts/bench_titans_kernels.py --depth 2 --out bench_titans_kernels.json   # CPU: PyTorch
    python scripts/bench_titans_kernels.py --device cuda --depth 2 --B 1 --T 8192 --H 16 --D 32 \\
        --titans-pytorch --png bench_titans_kernels.png      # chunk sizes 8..256, bf16 inputs
    python scripts/bench_titans_kernels.py --depth 2 --T 64 --chunk-sizes 8 16 --fast --no-compile
    TRITON_INTERPRET=1 python scripts/bench_titans_kernels.py --depth 2 --T 32 --chunk-sizes 16 \\
        --fast --no-compile --triton      # CPU smoke test of the kernels in Triton's interpreter

Timing: ``benchmarks.timing.bench`` (GPU: ``do_bench`` median with p20/p80 after a warm-up loop, with
the gradients reset between calls; CPU: ``torch.utils.benchmark`` blocks, one thread unless
``--threads``). fwd runs under ``torch.no_grad``; fwd+bwd backpropagates random cotangents of the
output and of the final weights and momenta (never ones: a cotangent of ones lets errors that sum to
zero across a row pass unseen). ``peak_mb`` (GPU only): ``benchmarks.timing.peak_memory_mb`` over
one more call.

Model FLOP per token and head (1 multiply-add = 2 FLOP), C = chunk size:

* depth 1 (the linear memory, one layer with momentum)::

      fwd 10·D² + 4·C·D;   fwd+bwd 46·D² + 16·C·D   (counted from the kernels' products)

* depth 2: ``benchmarks.flops.mlp_memory_fwd`` (key path forward + backward,
  read through the updated memory, the in-chunk correction 2·C·(d_in + d_out) per layer, and the
  per-chunk state update); fwd+bwd = 3.5 × fwd (``benchmarks.flops.BWD_FACTOR``, ±20%).

TFLOP/s = model FLOP / time (not hardware FLOP). % of peak, on a GPU only
("-" in the table and null in the JSON on CPU): ``%bf16`` of the datasheet dense bf16 peak (989.4 on
H100/H200, ``benchmarks.flops.PEAKS``), ``%gemm`` of the bf16 GEMM ceiling (an 8192³ GEMM on random
data timed at the start of the run; ``--table-ceiling``: the 798 / 788 measured earlier, from
``PEAKS``), and ``%tf32`` of the datasheet TF32 peak: with ``--dot-precision tf32x3`` (three TF32 MMAs
per product, what float32 inputs run) a third of that peak is the kernels' ceiling. The default,
``auto``, runs what the mixers run: bf16 operands on bf16 inputs (the static kernel report's case).
Issue targets: ≥ 15% of bf16 peak at C = 64 and ≥ 40% at C ≥ 256, faster than compiled chunked
PyTorch at every chunk size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.env import configure_threads, environment, resolve_device, title  # noqa: E402
from benchmarks.flops import BWD_FACTOR, PEAKS, mlp_memory_fwd  # noqa: E402
from benchmarks.timing import Budget, bench, gemm_ceiling_tflops, peak_memory_mb  # noqa: E402
from memnets.compiled import compiled_steps  # noqa: E402
from memnets.memory import MemoryMLP, memory_chunked  # noqa: E402

PASSES = ("fwd", "fwd+bwd")
DEFAULT_CHUNKS = {1: [16, 32, 64], 2: [8, 16, 32, 64, 128, 256]}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def flops(B: int, T: int, H: int, D: int, C: int, backward: bool, depth: int, expansion: float) -> float:
    if depth == 1:
        per_token = (46 * D * D + 16 * C * D) if backward else (10 * D * D + 4 * C * D)
        return float(per_token * B * T * H)
    fwd = mlp_memory_fwd(B, T, H, D, C, expansion, depth)
    return BWD_FACTOR * fwd if backward else fwd


def memory_inputs(
    B: int, T: int, H: int, D: int, dtype: torch.dtype, device, grad: bool
) -> list[torch.Tensor]:
    """q, k, v (unit rows, ``dtype``) and the gates lr, mom, keep (float32) in the ranges the mixers
    produce, ``[B, T, H(, D)]``, seeded, as leaves that take gradients with ``grad``."""
    torch.manual_seed(0)
    q, k, v = (F.normalize(torch.randn(B, T, H, D, device=device), dim=-1).to(dtype) for _ in range(3))
    lr = 0.1 * torch.rand(B, T, H, device=device)
    mom = 0.8 + 0.2 * torch.rand(B, T, H, device=device)
    keep = 0.9 + 0.1 * torch.rand(B, T, H, device=device)
    return [t.requires_grad_(grad) for t in (q, k, v, lr, mom, keep)]


def memory_step(fn: Callable, arch: MemoryMLP, B: int, T: int, C: int, dtype: torch.dtype, device, backward):
    """One call of ``fn`` (memory_chunked or a drop-in kernel) as a closure, and the leaf tensors whose
    gradients the timer resets between calls."""
    inputs = memory_inputs(B, T, arch.num_heads, arch.dim, dtype, device, backward)
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                fn(arch, *inputs, chunk_size=C)

        return forward, []

    # random cotangents for the output and the final weights and momenta (shapes from the engine)
    with torch.no_grad():
        y, st = memory_chunked(arch, *inputs, chunk_size=C)
    cotangents = [torch.randn_like(t) for t in (y, *st.weights, *st.momentum)]

    def forward_backward() -> None:
        y, st = fn(arch, *inputs, chunk_size=C)
        torch.autograd.backward([y, *st.weights, *st.momentum], cotangents)

    return forward_backward, [*inputs, *arch.parameters()]


def titans_pytorch_step(B: int, T: int, H: int, D: int, C: int, dtype: torch.dtype, device, backward):
    """titans-pytorch's ``NeuralMemory`` on ``x [B, T, H·D]``; float32 module and input, run under
    autocast when ``dtype`` is bf16 (as a model trains), since it does not take bf16 input directly."""
    from titans_pytorch import NeuralMemory

    torch.manual_seed(0)
    mem = NeuralMemory(dim=H * D, chunk_size=C, heads=H, dim_head=D).to(device)
    x = torch.randn(B, T, H * D, device=device, requires_grad=backward)
    dy = torch.randn(B, T, H * D, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def forward() -> None:
        with torch.no_grad(), autocast:
            mem(x)

    def forward_backward() -> None:
        with autocast:
            y = mem(x)[0]
        y.backward(dy.to(y.dtype))

    return (forward_backward, [x, *mem.parameters()]) if backward else (forward, [])


def compiled(backend: str, scope: str) -> Callable:
    """``memory_chunked`` under ``torch.compile`` (fixed shapes). ``scope="function"`` compiles the
    whole call, which unrolls the loop over chunks; ``"chunk"`` is the library's compiled backend
    (what ``auto`` runs on CUDA where no kernel applies, :mod:`memnets.compiled`): the engine's
    per-chunk step compiled, the loop in Python, matmul operands in the inputs' dtype (bf16 inputs:
    bf16 operands, float32 state)."""
    torch._dynamo.reset()  # a fresh cache per chunk size and pass: no recompile limit, honest compile_s
    if scope == "function":
        return torch.compile(memory_chunked, backend=backend, dynamic=False)

    def run(arch: MemoryMLP, q: torch.Tensor, *args, **kwargs):
        operands = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.float32
        with compiled_steps(operands, backend):
            return memory_chunked(arch, q, *args, **kwargs)

    return run


def build_step(
    name: str, fn: Callable | None, a: argparse.Namespace, arch: MemoryMLP, C: int, dtype, device, backward
):
    """The timed closure of one backend, chunk size and pass, and the leaves whose gradients the timer
    resets between calls."""
    if name == "titans_pytorch":
        return titans_pytorch_step(a.B, a.T, a.H, a.D, C, dtype, device, backward)
    if name == "chunked_compiled":
        fn = compiled(a.compile_backend, a.compile_scope)
    return memory_step(fn, arch, a.B, a.T, C, dtype, device, backward)


def device_split(step: Callable, device: torch.device) -> dict[str, Any]:
    """One more call under ``torch.profiler`` on CUDA: the device time of all its kernels and of the
    memory's own Triton kernels (names ``_..._kernel``), in ms, beside the call's timed ms: what is
    the kernel, what is PyTorch around it, what is the host's gap; and per own kernel name its ms and
    launches (``kernels``: what ``benchmarks.kernel_calibration`` sets beside the static report's
    estimates)."""
    if device.type != "cuda":
        return {"device_ms": None, "memory_kernels_ms": None}
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize(device)
    except RuntimeError as e:  # a profiler that cannot start (no CUPTI) costs the split, not the row
        return {"device_ms": None, "memory_kernels_ms": None, "profiler_error": str(e)[:200]}
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    total = sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    by_name: dict[str, dict[str, float]] = {}
    for e in kernels:
        if re.fullmatch(r"_\w+_kernel", e.name):
            entry = by_name.setdefault(e.name, {"ms": 0.0, "launches": 0})
            entry["ms"] += e.time_range.elapsed_us() / 1e3
            entry["launches"] += 1
    own = sum(entry["ms"] for entry in by_name.values())
    return {"device_ms": total, "memory_kernels_ms": own, "kernels": by_name}


def first_call_s(step: Callable, device: torch.device) -> float:
    """Seconds of the first call: compiling (forward and, on its first backward, the backward graph),
    autotuning and allocating, all kept out of the timed calls."""
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


HEADER = (
    f"{'backend':>16} {'C':>4} {'pass':>7} {'ms':>9} {'p20':>9} {'p80':>9} {'TFLOP/s':>9} "
    f"{'%bf16':>6} {'%gemm':>6} {'%tf32':>6} {'tri/cmp':>7} {'tri/eag':>7} {'compile_s':>9}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['backend']:>16} {r['chunk_size']:>4} {r['pass']:>7} {r['ms']:>9.3f} {r['p20_ms']:>9.3f} "
        f"{r['p80_ms']:>9.3f} {r['tflops']:>9.4f} {fmt(r['pct_peak_bf16'], '.2f'):>6} {fmt(r['pct_gemm_bf16'], '.2f'):>6} "
        f"{fmt(r['pct_peak_tf32'], '.2f'):>6} {fmt(r['triton_over_compiled'], '.2f'):>7} "
        f"{fmt(r['triton_over_eager'], '.2f'):>7} {fmt(r['compile_s'], '.1f'):>9}"
        + (
            f"  device {fmt(r['device_ms'], '.3f')} ms, memory kernels {fmt(r['memory_kernels_ms'], '.3f')} ms"
            if r.get("device_ms") is not None
            else ""
        )
    )


def card(device: torch.device) -> dict[str, float] | None:
    """The device's ``PEAKS`` entry (datasheet peaks, table GEMM ceiling); None on CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS.items() if k in name), None)


def pct(tflops: float, peak: float | None) -> float | None:
    return None if peak is None else 100 * tflops / peak


def ratio(ms: float, other_ms: float | None) -> float | None:
    return None if other_ms is None else ms / other_ms


def target_pct(C: int) -> float | None:
    """The % of bf16 peak the depth-2 kernel is meant to reach at chunk size C (benchmarks/RESULTS.md §9)."""
    return 40.0 if C >= 256 else 15.0 if C == 64 else None


def targets(rows: list[dict]) -> list[dict]:
    """Each Triton row (or chunk size it skips) against the issue's targets: the % of bf16 peak where
    one is set, and faster than compiled chunked PyTorch (a skipped chunk size meets neither)."""
    out = []
    for r in rows:
        if r["backend"] != "triton":
            continue
        if "skipped" in r:
            out.append(dict(chunk_size=r["chunk_size"], **{"pass": None}, met=False, why=r["skipped"]))
            continue
        want, got, over = target_pct(r["chunk_size"]), r["pct_peak_bf16"], r["triton_over_compiled"]
        checks, notes = [], []
        if want is not None:
            checks.append(None if got is None else got >= want)
            notes.append(f"{'n/a' if got is None else f'{got:.1f}'}% of bf16 peak (target {want:.0f}%)")
        checks.append(None if over is None else over < 1)
        notes.append("no compiled time" if over is None else f"{over:.2f}x the compiled time")
        met = None if None in checks else all(checks)
        out.append(dict(chunk_size=r["chunk_size"], **{"pass": r["pass"]}, met=met, why=", ".join(notes)))
    return out


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def plot(rows: list[dict], path: str, heading: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print(f"note: matplotlib is not installed, no plot written to {path}")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, PASSES):
        for name in dict.fromkeys(r["backend"] for r in rows):
            pts = sorted(
                (r["chunk_size"], r["ms"]) for r in rows if r["backend"] == name and r["pass"] == kind
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 20, not 2x10^1
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        chunks = sorted({r["chunk_size"] for r in rows})
        ax.set_xticks(chunks, [str(c) for c in chunks])
        ax.set_xlabel("chunk size")
        ax.set_ylabel("ms (median)")
        ax.set_title(kind)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.suptitle(heading, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--depth", type=int, choices=(1, 2), default=1)
    p.add_argument("--expansion", type=float, default=4.0, help="hidden width / D (depth 2)")
    p.add_argument("--no-layer-norm", action="store_true", help="depth 2: memory without LayerNorm")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--H", type=int, default=2)
    p.add_argument("--D", type=int, default=32)
    p.add_argument("--dtype", choices=sorted(DTYPES), help="q, k, v dtype (default bf16 on CUDA, else fp32)")
    p.add_argument(
        "--chunk-sizes", type=int, nargs="+", help="default 16 32 64 (depth 1), 8 16 32 64 128 256 (depth 2)"
    )
    p.add_argument("--fast", action="store_true", help="short timing budget (smoke tests)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 1 on CPU, see benchmarks/env.py)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile'd chunked form")
    p.add_argument(
        "--compile-scope",
        choices=("chunk", "function"),
        default="chunk",
        help="compile the per-chunk steps (loop in Python) or all of memory_chunked (unrolls T/C chunks)",
    )
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (aot_eager: quick, for tests)"
    )
    p.add_argument("--triton", action="store_true", help="time the kernels off CUDA too (TRITON_INTERPRET=1)")
    p.add_argument(
        "--dot-precision",
        default="auto",
        choices=("auto", "tf32x3", "tf32", "float16", "bfloat16"),
        help="depth 2: the MLP kernel's matmul operands (auto, the mixers' default: the inputs' half type, "
        "else tf32x3, float32 accurate; the others trade accuracy for rate)",
    )
    p.add_argument(
        "--num-warps",
        type=int,
        help="depth 2: warps per kernel program (default: the kernels' own: NUM_WARPS, 4, for the whole-state "
        "kernels; config.wide_num_warps for the wide-state ones: 8 for the split kernels and the backward's "
        "reads launch, and at head dims 65-128, else 4)",
    )
    p.add_argument("--titans-pytorch", action="store_true", help="also time titans-pytorch's NeuralMemory")
    p.add_argument(
        "--kernel-only", action="store_true", help="time only the Triton kernel (layout comparisons)"
    )
    p.add_argument(
        "--table-ceiling", action="store_true", help="%%gemm of the GEMM ceiling in PEAKS, not one timed now"
    )
    p.add_argument("--out", default="bench_titans_kernels.json")
    p.add_argument("--png", help="also plot time against chunk size here")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    configure_threads(a.threads, device)
    dtype = DTYPES[a.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    chunk_sizes = a.chunk_sizes or DEFAULT_CHUNKS[a.depth]
    if a.depth == 1:
        arch = MemoryMLP(a.H, a.D, depth=1, residual=False, layer_norm=False).to(device)
    else:
        arch = MemoryMLP(a.H, a.D, depth=2, expansion=a.expansion, layer_norm=not a.no_layer_norm).to(device)

    # backend name -> fn(arch, q, k, v, lr, mom, keep, chunk_size=C), None where build_step makes it.
    # Timed in the order kernel, eager, titans-pytorch, compiled (slowest to build last: a time limit
    # around the run then cuts the compile, not the kernel's rows); the kernel's ratios to the chunked
    # forms are filled in once every backend at that C has run.
    backends: dict[str, Callable | None] = {}
    peers: dict[str, Callable | None] = {"chunked": memory_chunked}
    if a.titans_pytorch:
        try:
            import titans_pytorch  # noqa: F401

            peers["titans_pytorch"] = None
        except ImportError as e:
            print(f"note: titans-pytorch is not installed ({e}); its rows are skipped")

    if device.type == "cuda" or a.triton:
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit(
                "--triton off CUDA needs TRITON_INTERPRET=1 (the kernels run in Triton's interpreter)"
            )
        from memnets.memory import kernel_bridge, linear_kernel

        if a.depth == 1:
            backends["triton"] = linear_kernel.titans_linear_chunked
            supports = linear_kernel.supports_linear
        else:
            from memnets.kernels.mlp_memory import config as mlp_config
            from memnets.kernels.mlp_memory import forward as mlp_forward

            if a.num_warps is not None:  # read at each launch: both kernel families
                mlp_forward.NUM_WARPS = mlp_config.WIDE_NUM_WARPS = a.num_warps
            num_warps = a.num_warps
            backends["triton"] = functools.partial(
                kernel_bridge.titans_mlp_chunked, dot_precision=a.dot_precision
            )
            supports = kernel_bridge.supports_mlp
    else:
        print("note: no CUDA device, the Triton kernel is not timed (--triton runs it in the interpreter)")
    if not a.kernel_only:
        backends.update(peers)
        if not a.no_compile:
            backends["chunked_compiled"] = None

    env = environment(device)
    peaks = card(device)
    if a.table_ceiling:
        gemm = None if peaks is None else peaks["measured_bf16"]
        gemm_source = "benchmarks.flops.PEAKS"
    else:
        gemm = gemm_ceiling_tflops(device, torch.bfloat16)  # None on CPU
        gemm_source = "an 8192^3 bf16 GEMM timed in this run"
    peak_bf16 = None if peaks is None else peaks["bf16"]
    peak_tf32 = None if peaks is None else peaks["tf32"]
    budget = Budget.fast() if a.fast else Budget()

    print(f"# {title(env)}")
    print(
        f"depth={a.depth} B={a.B} T={a.T} H={a.H} D={a.D} E={a.expansion if a.depth == 2 else '-'} dtype={dtype}"
    )
    print(
        f"peaks TFLOP/s: bf16 {fmt(peak_bf16, '.1f')}, gemm {fmt(gemm, '.1f')}, tf32 {fmt(peak_tf32, '.1f')}"
    )
    formula = (
        "fwd 10D^2+4CD, fwd+bwd 46D^2+16CD"
        if a.depth == 1
        else f"benchmarks.flops.mlp_memory_fwd, fwd+bwd = {BWD_FACTOR} x fwd"
    )
    meta = dict(
        depth=a.depth,
        expansion=a.expansion if a.depth == 2 else None,
        layer_norm=arch.layer_norm,
        residual=arch.residual,
        B=a.B,
        T=a.T,
        H=a.H,
        D=a.D,
        dtype=str(dtype),
        dot_precision=a.dot_precision if a.depth == 2 else None,
        num_warps=num_warps if "triton" in backends and a.depth == 2 else None,  # None: the kernels' own
        chunk_sizes=chunk_sizes,
        backends=list(backends),
        budget="fast" if a.fast else "default",
        compile_backend=None if a.no_compile else a.compile_backend,
        compile_scope=None if a.no_compile else a.compile_scope,
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
        flop_formula=formula,
        peak_bf16_tflops=peak_bf16,
        gemm_bf16_tflops=gemm,
        gemm_bf16_source=gemm_source if gemm is not None else None,
        peak_tf32_tflops=peak_tf32,
    )

    def save(rows: list[dict], goals: list[dict]) -> None:
        """The JSON so far: written after every row, so a run cut by a time limit keeps what it timed."""
        with open(a.out, "w") as f:
            json.dump(dict(env=env, meta=meta, rows=rows, targets=goals), f, indent=1)

    print(HEADER)
    rows: list[dict] = []
    for C in chunk_sizes:
        ms_at: dict[tuple[str, str], float] = {}  # (backend, pass) -> median ms at this C
        for name, fn in backends.items():
            if name == "triton":
                reason = supports(arch, chunk_size=C)
                if reason is not None:
                    print(f"{name:>16} {C:>4}   skipped: unsupported {reason}")
                    rows.append(
                        dict(backend=name, chunk_size=C, **{"pass": None}, skipped=f"unsupported {reason}")
                    )
                    continue
            for kind in PASSES:
                backward = kind == "fwd+bwd"
                try:
                    step, leaves = build_step(name, fn, a, arch, C, dtype, device, backward)
                    first_s = first_call_s(step, device)
                    t = bench(step, device, budget, grad_to_none=leaves)
                except Exception as e:  # torch.compile and titans-pytorch fail in many ways; the run goes on
                    if name not in ("chunked_compiled", "titans_pytorch"):
                        raise
                    first = (str(e).strip().splitlines() or [""])[0]
                    why = f"{type(e).__name__}: {first}"
                    print(f"{name:>16} {C:>4} {kind:>7}   skipped: {why}")
                    rows.append(dict(backend=name, chunk_size=C, **{"pass": kind}, skipped=why))
                    continue
                ms_at[name, kind] = t.median_ms
                tf = flops(a.B, a.T, a.H, a.D, C, backward, a.depth, a.expansion) / (t.median_ms / 1e3) / 1e12
                row = dict(
                    backend=name,
                    chunk_size=C,
                    **{"pass": kind},
                    ms=t.median_ms,
                    p20_ms=t.p20_ms,
                    p80_ms=t.p80_ms,
                    tflops=tf,
                    pct_peak_bf16=pct(tf, peak_bf16),
                    pct_gemm_bf16=pct(tf, gemm),
                    pct_peak_tf32=pct(tf, peak_tf32),
                    triton_over_compiled=None,  # filled in below, once the chunked forms ran
                    triton_over_eager=None,
                    compile_s=first_s if name == "chunked_compiled" else None,
                    peak_mb=peak_memory_mb(step, device),  # one more call (None on CPU)
                )
                if name == "triton":
                    row.update(device_split(step, device))
                rows.append(row)
                save(rows, [])
                print(format_row(row))
        # the Triton time over the chunked forms' at this C and pass; its rows were printed when timed
        # (so that a time limit keeps them) and again here only where a ratio was filled in
        for row in rows:
            if row["backend"] == "triton" and row["chunk_size"] == C and "ms" in row:
                row["triton_over_compiled"] = ratio(row["ms"], ms_at.get(("chunked_compiled", row["pass"])))
                row["triton_over_eager"] = ratio(row["ms"], ms_at.get(("chunked", row["pass"])))
                if row["triton_over_compiled"] is not None or row["triton_over_eager"] is not None:
                    print(f"{format_row(row)}   (with its ratios)")

    goals = targets(rows) if a.depth == 2 else []
    if goals:
        print(
            "issue targets (Triton, depth 2: >= 15% of bf16 peak at C=64, >= 40% at C>=256, faster than compiled):"
        )
        for g in goals:
            verdict = {True: "met", False: "NOT met", None: "n/a"}[g["met"]]
            print(f"  C={g['chunk_size']:<4} {g['pass'] or '':>7}  {verdict:>7}: {g['why']}")
    save(rows, goals)
    print(f"wrote {a.out}")
    if a.png:
        plot(
            [r for r in rows if "ms" in r],
            a.png,
            f"{title(env)}\ndepth {a.depth} B{a.B} T{a.T} H{a.H} D{a.D} {dtype}",
        )


if __name__ == "__main__":
    main()
