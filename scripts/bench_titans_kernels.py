"""Time the linear Titans memory (depth 1, L2 bias, momentum + decay): the Triton kernels
(``memnets.kernels.titans_linear_triton``) against the engine's chunked PyTorch form, forward and
forward + backward, per chunk size. Prints a table and writes JSON.

    python scripts/bench_titans_kernels.py --out bench_titans_kernels.json            # CPU: PyTorch only
    python scripts/bench_titans_kernels.py --device cuda --B 1 --T 8192 --H 16 --D 128

Model FLOP per token and head (1 multiply-add = 2 FLOP), the linear-memory case of performance.md
§2.4 (one layer, E = 1, with momentum), C = chunk size::

    fwd     : K·W0, Q·W0, Q·S0, Kᵀ(G⊙Δ) into W, Kᵀ(s⊙Δ) into S  → 10·D²;  Q·Kᵀ, (·)·Δ → 4·C·D
    bwd     : recompute the chunk states (6·D²) + 15 D×D-sized products (30·D²) + 6 C×C-sized (12·C·D)
    fwd+bwd : 46·D² + 16·C·D

(the D² terms dominate below C = D; TFLOP/s = model FLOP / time, not hardware FLOP).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from memnets.memory import MemoryMLP, memory_chunked


def flops(B: int, T: int, H: int, D: int, C: int, backward: bool) -> float:
    per_token = (46 * D * D + 16 * C * D) if backward else (10 * D * D + 4 * C * D)
    return float(per_token * B * T * H)


def bench(fn, arch, B, T, H, D, C, device, repeats, backward):
    torch.manual_seed(0)
    q, k, v = (F.normalize(torch.randn(B, T, H, D, device=device), dim=-1).requires_grad_() for _ in range(3))
    lr = (0.1 * torch.rand(B, T, H, device=device)).requires_grad_()
    mom = (0.8 + 0.2 * torch.rand(B, T, H, device=device)).requires_grad_()
    keep = (0.9 + 0.1 * torch.rand(B, T, H, device=device)).requires_grad_()
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            y, st = fn(arch, q, k, v, lr, mom, keep, chunk_size=C)
            if backward:
                (y.float().sum() + st.weights[0].sum() + st.momentum[0].sum()).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first run warms up (and compiles the kernels)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--H", type=int, default=2)
    p.add_argument("--D", type=int, default=32)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench_titans_kernels.json")
    a = p.parse_args()
    device = torch.device(a.device)
    arch = MemoryMLP(a.H, a.D, depth=1, residual=False, layer_norm=False).to(device)
    backends = {"chunked": memory_chunked}
    if device.type == "cuda":
        from memnets.kernels.titans_linear_triton import titans_linear_chunked

        backends["triton"] = titans_linear_chunked
    else:
        print("note: no CUDA device, timing the chunked PyTorch path only (the Triton kernels need a GPU)")
    rows = []
    print(f"B={a.B} T={a.T} H={a.H} D={a.D} device={device}")
    print(f"{'backend':>8} {'C':>4} {'pass':>8} {'ms':>10} {'TFLOP/s':>9}")
    for C in a.chunk_sizes:
        for name, fn in backends.items():
            for backward in (False, True):
                t = bench(fn, arch, a.B, a.T, a.H, a.D, C, device, a.repeats, backward)
                tf = flops(a.B, a.T, a.H, a.D, C, backward) / t / 1e12
                kind = "fwd+bwd" if backward else "fwd"
                print(f"{name:>8} {C:>4} {kind:>8} {t * 1e3:>10.3f} {tf:>9.4f}")
                rows.append(dict(backend=name, chunk_size=C, **{"pass": kind}, ms=t * 1e3, tflops=tf))
    meta = dict(
        B=a.B, T=a.T, H=a.H, D=a.D, device=str(device), flop_formula="fwd 10D^2+4CD, fwd+bwd 46D^2+16CD"
    )
    with open(a.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
