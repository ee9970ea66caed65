"""Time memnets ops forward and forward+backward, per backend, printing ms, TFLOP/s and GB/s.

``--op gated_delta`` (default): the gated delta rule.
Backends: ``chunked`` (PyTorch chunk form), ``triton`` (CUDA only) and fla's ``chunk_gated_delta_rule``
when the ``fla`` package is importable. FLOPs and bytes are counted from the chunked WY/UT delta rule, per
token-head (:func:`benchmarks.flops.gated_delta_fwd`)::

    F_fwd     = 6CK + 4CV + 6KV + (2/3) C^2          F_fwd+bwd ~= 3.5 F_fwd (+-20%)
    bytes_fwd = (2K + 2V + 2) * elt                 (read q, k, v, g, beta; write o)
    bytes_bwd = (4K + 3V + 4) * elt                 (re-read inputs, read do; write dq, dk, dv, dg, dbeta)

On CUDA the timer is ``triton.testing.do_bench`` (median with p20/p80, inputs prepared outside the timed
call, a warm-up call first so Triton compiles before timing); on CPU ``torch.utils.benchmark``.

``--op titans_linear``: the linear Titans memory (depth 1, L2 bias, momentum and decay gates), backends
``chunked`` (the engine's PyTorch chunk form, ``memnets.memory.memory_chunked``), ``triton``
(``memnets.kernels.linear_memory``, CUDA only) and, as the peer with the same state size, fla's
``chunk_gated_delta_rule`` on the same shape. Model FLOPs per token-head (1 multiply-add = 2 FLOP, C =
chunk size): fwd 10 D^2 + 4 C D, fwd+bwd 46 D^2 + 16 C D (``scripts/bench_titans_kernels.py``). Minimum
bytes: fwd reads q, k, v and writes y (4 D elt) plus 3 float32 gates; the backward re-reads q, k, v,
reads dy and writes dq, dk, dv (7 D elt) plus 3 float32 gate gradients. The chunk coefficients the
kernels read (C + 3 float32 per token-head) are not counted.

``--varlen N`` packs the B*T tokens of a shape into N sequences of unequal lengths (B = 1 with
``cu_seqlens``; gated_delta and titans_linear): fla and the Triton kernels take them in one call, the
titans ``chunked`` backend runs them one by one (what the mixer does without the kernel).

``--op scan``: the linear-recurrence scan of ParaRNN (``memnets.kernels.scan``), backends ``chunked`` and
``triton``; a shape B,T,H,D scans H*D channels (``--scan-block`` for 2x2 blocks: H*D blocks). Model FLOPs
count the sequential recurrence (per channel-step: diagonal 2 fwd, 5 fwd+bwd; 2x2 block 8 fwd, 20
fwd+bwd); bytes read a, b and write h (diagonal 3 elt fwd, 8 fwd+bwd; block 8 and 22).

Examples::

    python scripts/bench_ops.py                                  # defaults for the device found
    python scripts/bench_ops.py --shapes 4,2048,16,128 --chunk-size 64 --dtype bf16 --out bench.json
    python scripts/bench_ops.py --op scan --ops chunked,triton --dtype fp32 --shapes 8,4096,1,1024
    python scripts/bench_ops.py --op titans_linear --shapes 8,2048,16,128 --chunk-size 32 --varlen 16 --out titans.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from memnets.kernels.gated_delta import gated_delta_rule
from memnets.kernels.scan import linear_scan
from memnets.memory import MemoryMLP, memory_chunked

# fla's registry shapes (B, T, H, D) for direct comparison with its tables; CPU gets one tiny shape.
CUDA_SHAPES = [(1, 8192, 96, 128), (2, 16384, 16, 128), (4, 2048, 16, 128), (4, 4096, 64, 128), (8, 2048, 32, 256), (8, 1024, 8, 64)]  # fmt: skip
CPU_SHAPES = [(1, 512, 2, 64)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# datasheet peaks (dense bf16 TFLOP/s, HBM TB/s; NVIDIA's H100 SXM and H200 datasheets)
PEAKS = {"H100": (989.4, 3.35), "H200": (989.4, 4.8)}


def flops(B: int, T: int, H: int, K: int, V: int, C: int, mode: str) -> float:
    fwd = B * T * H * (6 * C * K + 4 * C * V + 6 * K * V + 2 / 3 * C * C)
    return fwd if mode == "fwd" else 3.5 * fwd


def min_bytes(B: int, T: int, H: int, K: int, V: int, elt: int, mode: str) -> float:
    fwd = B * T * H * (2 * K + 2 * V + 2) * elt
    return fwd if mode == "fwd" else fwd + B * T * H * (4 * K + 3 * V + 4) * elt


def titans_flops_bytes(B: int, T: int, H: int, D: int, C: int, elt: int, mode: str) -> tuple[float, float]:
    n = B * T * H
    if mode == "fwd":
        return n * (10 * D * D + 4 * C * D), n * (4 * D * elt + 3 * 4)
    return n * (46 * D * D + 16 * C * D), n * (11 * D * elt + 6 * 4)


def pack_lengths(total: int, n: int) -> torch.Tensor:
    """cu_seqlens of ``n`` sequences of unequal lengths (fixed seed) covering ``total`` tokens."""
    if not 1 <= n <= total:
        raise ValueError(f"--varlen must lie in [1, B*T={total}], got {n}")
    g = torch.Generator().manual_seed(0)
    cuts = torch.randperm(total - 1, generator=g)[: n - 1] + 1
    return [*F.pad(torch.sort(cuts).values, (1, 0)).tolist(), total]


def make_titans_inputs(B: int, T: int, H: int, D: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    q, k, v = (F.normalize(torch.randn(B, T, H, D, device=device), dim=-1).to(dtype) for _ in range(3))
    lr = 0.1 * torch.rand(B, T, H, device=device)
    mom = 0.8 + 0.2 * torch.rand(B, T, H, device=device)
    keep = 0.9 + 0.1 * torch.rand(B, T, H, device=device)
    return [t.requires_grad_() for t in (q, k, v, lr, mom, keep)]


def titans_fn(
    name: str, arch: MemoryMLP, chunk_size: int, cu: list[int] | None
) -> Callable[..., torch.Tensor]:
    """The linear Titans memory as f(q, k, v, lr, mom, keep) -> y."""
    if name == "triton":
        from memnets.memory.linear_kernel import titans_linear_chunked

        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=arch.init_weights[0].device)
        return lambda *x: titans_linear_chunked(arch, *x, chunk_size=chunk_size, cu_seqlens=cu_t)[0]
    if name != "chunked":
        raise ValueError(f"unknown titans_linear backend {name!r}; choose from chunked, triton, fla")
    if cu is None:
        return lambda *x: memory_chunked(arch, *x, chunk_size=chunk_size)[0]
    bounds = list(itertools.pairwise(cu))
    return lambda *x: torch.cat(
        [memory_chunked(arch, *(t[:, s:e] for t in x), chunk_size=chunk_size)[0] for s, e in bounds], 1
    )


def scan_flops_bytes(B: int, T: int, S: int, block: bool, elt: int, mode: str) -> tuple[float, float]:
    per = (8, 20, 8, 22) if block else (2, 5, 3, 8)
    f, by = (per[0], per[2]) if mode == "fwd" else (per[1], per[3])
    return B * T * S * f, B * T * S * by * elt


def make_scan_inputs(
    B: int, T: int, S: int, block: bool, dtype: torch.dtype, device: str
) -> list[torch.Tensor]:
    if block:  # 2x2 transitions near 0.3 I + noise, so long scans stay finite
        a = torch.rand(B, T, 2, 2, S, device=device) * 0.7 + 0.3 * torch.eye(2, device=device)[:, :, None]
        b = torch.randn(B, T, 2, S, device=device)
    else:
        a, b = torch.rand(B, T, S, device=device), torch.randn(B, T, S, device=device)
    return [t.to(dtype).requires_grad_() for t in (a, b)]


def make_inputs(B: int, T: int, H: int, D: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    q = F.normalize(torch.randn(B, T, H, D, device=device), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, device=device), dim=-1)
    v = torch.randn(B, T, H, D, device=device)
    g = F.logsigmoid(torch.randn(B, T, H, device=device))
    beta = torch.sigmoid(torch.randn(B, T, H, device=device))
    return [t.to(dtype).requires_grad_() for t in (q, k, v, g, beta)]


def op_fn(
    name: str, chunk_size: int, scan: bool, cu: list[int] | None = None
) -> Callable[..., torch.Tensor] | None:
    """The op as f(*inputs) -> output, or None when it cannot run here; ``cu``: packed sequences."""
    if scan:
        if name not in ("chunked", "triton", "reference"):
            raise ValueError(f"unknown scan backend {name!r}; choose from chunked, triton, reference")
        return lambda a, b: linear_scan(a, b, backend=name, chunk_size=max(2, chunk_size))

    def cu_on(t: torch.Tensor) -> torch.Tensor | None:  # int64, as fla documents
        return None if cu is None else torch.tensor(cu, dtype=torch.long, device=t.device)

    if name in ("chunked", "triton"):
        return lambda q, k, v, g, beta: gated_delta_rule(
            q, k, v, g, beta, chunk_size=chunk_size, backend=name, cu_seqlens=cu_on(q)
        )[0]
    if name == "fla":
        try:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        except ImportError:
            return None
        return lambda q, k, v, g, beta: chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu_on(q))[0]
    raise ValueError(f"unknown op {name!r}; choose from chunked, triton, fla")


def time_ms(fn: Callable[[], object], device: str, grads: list[torch.Tensor]) -> tuple[float, float, float]:
    """(median, p20, p80) in ms."""
    fn()  # compile / autotune outside the timed region
    if device == "cuda":
        import triton

        p50, p20, p80 = triton.testing.do_bench(
            fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8], grad_to_none=grads
        )
        return p50, p20, p80
    from torch.utils import benchmark

    m = benchmark.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=1.0)
    times = sorted(t * 1e3 for t in m.times)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return m.median * 1e3, q[1], q[7]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--op", choices=["gated_delta", "scan", "titans_linear"], default="gated_delta")
    parser.add_argument("--varlen", type=int, default=0, help="pack each shape into N sequences (B = 1)")
    parser.add_argument("--scan-block", action="store_true", help="scan 2x2 blocks instead of diagonal")
    parser.add_argument("--shapes", nargs="*", help="B,T,H,D (K = V = D); default depends on the device")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--ops", default="chunked,triton,fla", help="backends (fla: gated_delta only)")
    parser.add_argument("--modes", default="fwd,fwdbwd")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()

    device = args.device
    dtype = DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")]
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else None
    shapes = shapes or (CUDA_SHAPES if device == "cuda" else CPU_SHAPES)
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak = next((p for key, p in PEAKS.items() if key in name), None)
    scan = args.op == "scan"
    print(
        f"Machine: {name} | torch {torch.__version__} | op {args.op} | dtype {dtype} | chunk {args.chunk_size}"
    )

    if scan and args.varlen:
        parser.error("--varlen applies to gated_delta and titans_linear, not scan")
    backends = []
    for op in args.ops.split(","):
        if op == "triton" and device != "cuda":
            print("note: skipping triton (needs CUDA; the CPU interpreter is for tests, not timing)")
        elif op == "fla" and scan:
            continue
        elif op == "fla" and op_fn("fla", args.chunk_size, False) is None:
            print("note: skipping fla (package not importable)")
        else:
            backends.append(op)

    header = f"{'op':8} {'mode':7} {'B':>3} {'T':>6} {'H':>3} {'D':>4} {'ms p50 (p20-p80)':>24} {'TFLOP/s':>8} {'GB/s':>8}"
    print(header + ("  %peak(TF, BW)" if peak else ""))
    rows = []
    for B, T, H, D in shapes:
        cu = pack_lengths(B * T, args.varlen) if args.varlen else None
        Bp, Tp = (1, B * T) if cu else (B, T)  # packed sequences: one row of B*T tokens
        if cu:
            lens = [e - s for s, e in itertools.pairwise(cu)]
            print(f"packed: {len(lens)} sequences of {min(lens)} to {max(lens)} tokens")
        for op in backends:
            if scan:
                inputs = make_scan_inputs(B, T, H * D, args.scan_block, dtype, device)
                fn = op_fn(op, args.chunk_size, scan)
            elif args.op == "titans_linear" and op != "fla":
                arch = MemoryMLP(H, D, depth=1, residual=False, layer_norm=False).to(device)
                inputs = make_titans_inputs(Bp, Tp, H, D, dtype, device)
                fn = titans_fn(op, arch, args.chunk_size, cu)
            else:
                inputs = make_inputs(Bp, Tp, H, D, dtype, device)
                fn = op_fn(op, args.chunk_size, False, cu)
            do = (
                torch.randn_like(inputs[1]) if scan else torch.randn(Bp, Tp, H, D, device=device, dtype=dtype)
            )
            for mode in args.modes.split(","):
                if mode == "fwd":

                    def call(fn=fn, inputs=inputs, do=do):
                        with torch.no_grad():
                            return fn(*inputs)

                else:

                    def call(fn=fn, inputs=inputs, do=do):
                        fn(*inputs).backward(do)

                try:
                    p50, p20, p80 = time_ms(call, device, inputs)
                except (RuntimeError, ValueError, torch.OutOfMemoryError) as err:
                    print(
                        f"{op:8} {mode:7} {B:>3} {T:>6} {H:>3} {D:>4}  failed: {str(err).splitlines()[0][:80]}"
                    )
                    continue
                if scan:
                    n_flop, n_byte = scan_flops_bytes(B, T, H * D, args.scan_block, dtype.itemsize, mode)
                elif args.op == "titans_linear" and op != "fla":
                    n_flop, n_byte = titans_flops_bytes(B, T, H, D, args.chunk_size, dtype.itemsize, mode)
                else:  # fla's row counts the gated delta rule's own work
                    n_flop = flops(B, T, H, D, D, args.chunk_size, mode)
                    n_byte = min_bytes(B, T, H, D, D, dtype.itemsize, mode)
                tflops, gbps = n_flop / p50 / 1e9, n_byte / p50 / 1e6
                line = f"{op:8} {mode:7} {B:>3} {T:>6} {H:>3} {D:>4} {p50:>9.3f} ({p20:.3f}-{p80:.3f}) {tflops:>8.2f} {gbps:>8.1f}"
                if peak:
                    line += f"  {100 * tflops / peak[0]:.1f}%, {100 * gbps / (1e3 * peak[1]):.1f}%"
                print(line)
                rows.append(
                    dict(op=args.op, backend=op, block=args.scan_block if scan else None, mode=mode, B=B, T=T, H=H, K=D, V=D, chunk_size=args.chunk_size, dtype=str(dtype),
                         varlen=args.varlen or None, cu_seqlens=cu, ms_p50=p50, ms_p20=p20, ms_p80=p80, tflops=tflops, gbps=gbps, device=name,
                         torch=torch.__version__)
                )  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
