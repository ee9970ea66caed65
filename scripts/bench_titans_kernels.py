"""Time the Titans memory kernels against the engine's chunked PyTorch form, forward and forward +
backward, per chunk size. Prints a table and writes JSON.

* ``--depth 1``: the linear memory (L2 bias, momentum + decay, no residual or LayerNorm):
  ``memnets.kernels.titans_linear_triton`` (chunk sizes 16/32/64).
* ``--depth 2``: the two-layer MLP memory (D → E·D → D, GELU, residual + LayerNorm: Titans' default
  memory; ``--no-layer-norm`` drops the LayerNorm): ``memnets.kernels.titans_mlp_triton`` (chunk
  sizes up to 128; larger ones are reported as unsupported rows). With ``--titans-pytorch`` the
  ``NeuralMemory`` of lucidrains' titans-pytorch is timed beside them when it imports (skipped with a
  message otherwise; it includes its own projections and chunk-pooled gates, so its rows are a rough
  peer, not an identical op).

    python scripts/bench_titans_kernels.py --out bench_titans_kernels.json      # CPU: PyTorch only
    python scripts/bench_titans_kernels.py --device cuda --depth 2 --B 1 --T 8192 --H 16 --D 32 \\
        --chunk-sizes 8 16 32 64 128 256 --titans-pytorch
    TRITON_INTERPRET=1 python scripts/bench_titans_kernels.py --depth 2 --T 32 --chunk-sizes 16 \\
        --repeats 1 --triton          # CPU smoke test of the kernels in Triton's interpreter

Model FLOP per token and head (1 multiply-add = 2 FLOP), C = chunk size:

* depth 1 (the linear case of performance.md §2.4, one layer with momentum)::

      fwd 10·D² + 4·C·D;   fwd+bwd 46·D² + 16·C·D   (counted from the kernels' products)

* depth 2: performance.md §2.4 as ``benchmarks.flops.mlp_memory_fwd`` (key path forward + backward,
  read through the updated memory, the in-chunk correction 2·C·(d_in + d_out) per layer, and the
  per-chunk state update); fwd+bwd = 3.5 × fwd (``benchmarks.flops.BWD_FACTOR``, ±20%).

TFLOP/s = model FLOP / time (not hardware FLOP). On a known GPU the JSON also gives % of the
datasheet TF32 dense peak (``benchmarks.flops.PEAKS``): the kernels compute in float32 with tf32x3
dots (three TF32 MMAs per product), so a third of that peak is their ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.flops import BWD_FACTOR, PEAKS, mlp_memory_fwd  # noqa: E402
from memnets.memory import MemoryMLP, memory_chunked  # noqa: E402


def flops(B: int, T: int, H: int, D: int, C: int, backward: bool, depth: int, expansion: float) -> float:
    if depth == 1:
        per_token = (46 * D * D + 16 * C * D) if backward else (10 * D * D + 4 * C * D)
        return float(per_token * B * T * H)
    fwd = mlp_memory_fwd(B, T, H, D, C, expansion, depth)
    return BWD_FACTOR * fwd if backward else fwd


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(step, device: torch.device, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i:  # the first run warms up (and compiles the kernels)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(fn, arch, B, T, H, D, C, device, repeats, backward):
    torch.manual_seed(0)
    q, k, v = (F.normalize(torch.randn(B, T, H, D, device=device), dim=-1).requires_grad_() for _ in range(3))
    lr = (0.1 * torch.rand(B, T, H, device=device)).requires_grad_()
    mom = (0.8 + 0.2 * torch.rand(B, T, H, device=device)).requires_grad_()
    keep = (0.9 + 0.1 * torch.rand(B, T, H, device=device)).requires_grad_()

    def step() -> None:
        with torch.set_grad_enabled(backward):
            y, st = fn(arch, q, k, v, lr, mom, keep, chunk_size=C)
            if backward:
                loss = y.float().sum() + sum(w.sum() for w in (*st.weights, *st.momentum))
                loss.backward()

    return _median_time(step, device, repeats)


def bench_titans_pytorch(B, T, H, D, C, device, repeats, backward):
    from titans_pytorch import NeuralMemory

    mem = NeuralMemory(dim=H * D, chunk_size=C, heads=H, dim_head=D).to(device)
    x = torch.randn(B, T, H * D, device=device, requires_grad=True)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            y = mem(x)[0]
            if backward:
                y.float().sum().backward()

    return _median_time(step, device, repeats)


def _peak_tf32(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    card = next((v for k, v in PEAKS.items() if k in name), None)
    return None if card is None else card["tf32"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--depth", type=int, choices=(1, 2), default=1)
    p.add_argument("--expansion", type=float, default=4.0, help="hidden width / D (depth 2)")
    p.add_argument("--no-layer-norm", action="store_true", help="depth 2: memory without LayerNorm")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--H", type=int, default=2)
    p.add_argument("--D", type=int, default=32)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--triton", action="store_true", help="time the kernels off CUDA too (TRITON_INTERPRET=1)")
    p.add_argument("--titans-pytorch", action="store_true", help="also time titans-pytorch's NeuralMemory")
    p.add_argument("--out", default="bench_titans_kernels.json")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if a.depth == 1:
        arch = MemoryMLP(a.H, a.D, depth=1, residual=False, layer_norm=False).to(device)
    else:
        arch = MemoryMLP(a.H, a.D, depth=2, expansion=a.expansion, layer_norm=not a.no_layer_norm).to(device)
    backends = {"chunked": memory_chunked}
    kernel = None
    if device.type == "cuda" or a.triton:
        if a.triton and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit(
                "--triton off CUDA needs TRITON_INTERPRET=1 (the kernels run in Triton's interpreter)"
            )
        if a.depth == 1:
            from memnets.kernels import titans_linear_triton as kernel

            backends["triton"] = kernel.titans_linear_chunked
        else:
            from memnets.kernels import titans_mlp_triton as kernel

            backends["triton"] = kernel.titans_mlp_chunked
    else:
        print("note: no CUDA device, timing the chunked PyTorch path only (the Triton kernels need a GPU)")
    if a.titans_pytorch:
        try:
            import titans_pytorch  # noqa: F401

            backends["titans_pytorch"] = None  # type: ignore[assignment]
        except ImportError as e:
            print(f"note: titans-pytorch is not installed ({e}); its rows are skipped")
    peak = _peak_tf32(device)
    rows = []
    print(f"depth={a.depth} B={a.B} T={a.T} H={a.H} D={a.D} device={device}")
    print(f"{'backend':>14} {'C':>4} {'pass':>8} {'ms':>10} {'TFLOP/s':>9} {'%tf32':>6}")
    for C in a.chunk_sizes:
        for name, fn in backends.items():
            if name == "triton":
                reason = kernel.supports(arch, chunk_size=C)  # type: ignore[union-attr]
                if reason is not None:
                    print(f"{name:>14} {C:>4}   skipped: unsupported {reason}")
                    rows.append(dict(backend=name, chunk_size=C, skipped=f"unsupported {reason}"))
                    continue
            for backward in (False, True):
                if fn is None:
                    t = bench_titans_pytorch(a.B, a.T, a.H, a.D, C, device, a.repeats, backward)
                else:
                    t = bench(fn, arch, a.B, a.T, a.H, a.D, C, device, a.repeats, backward)
                tf = flops(a.B, a.T, a.H, a.D, C, backward, a.depth, a.expansion) / t / 1e12
                pct = None if peak is None else 100 * tf / peak
                kind = "fwd+bwd" if backward else "fwd"
                pct_text = "n/a" if pct is None else f"{pct:.2f}"
                print(f"{name:>14} {C:>4} {kind:>8} {t * 1e3:>10.3f} {tf:>9.4f} {pct_text:>6}")
                rows.append(
                    dict(
                        backend=name, chunk_size=C, **{"pass": kind}, ms=t * 1e3, tflops=tf, pct_peak_tf32=pct
                    )
                )
    formula = (
        "fwd 10D^2+4CD, fwd+bwd 46D^2+16CD"
        if a.depth == 1
        else f"performance.md 2.4 (benchmarks.flops.mlp_memory_fwd), fwd+bwd = {BWD_FACTOR} x fwd"
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
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
        flop_formula=formula,
        peak_tf32_tflops=peak,
    )
    with open(a.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
