"""Time the Omega rule: forward + backward of ``omega_chunked`` without Muon, with Muon once per chunk
and with Muon every token, for a few windows and chunk sizes. Prints a table and writes JSON.

    python scripts/bench_atlas.py --out bench_atlas.json               # CPU, tiny
    python scripts/bench_atlas.py --device cuda --T 4096 --heads 16 --dim 64 --degree 2
    python scripts/bench_atlas.py --device cuda --T 4096 --heads 16 --dim 64 --windows 8 --chunks 16 \
        --muon chunk chunk-triton      # atlas-760m's memory: the engine against the Muon kernel

``chunk-triton`` runs Muon once per chunk in its Triton kernel
(:func:`memnets.memory.muon_kernel.omega_muon_chunked`; on CPU only under ``TRITON_INTERPRET=1``, far
too slow to time); ``chunk-compiled`` and ``token-compiled`` run the engine's per-chunk steps under
``torch.compile`` with ``--dtype`` matmul operands (:mod:`memnets.compiled`, what ``backend: auto`` runs
on CUDA where no kernel applies; the first call compiles and is not timed). ``--dtype bfloat16`` gives
q, k, v in bf16, so the kernel's operands follow them as in training under bf16 autocast. The
``muon=token`` rows show the price of per-token Newton–Schulz (ATLAS Eq. 40): every token's momentum is
orthogonalised, on its coordinates in the span of the chunk's momenta where the key path is wider than
that span (:func:`memnets.memory.omega._token_layer`), else materialised.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package sits beside memnets, uninstalled
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.timing import best_time  # noqa: E402
from memnets.compiled import compiled_steps  # noqa: E402
from memnets.memory.features import FeatureMemoryMLP, PolynomialFeatures  # noqa: E402
from memnets.memory.omega import omega_chunked  # noqa: E402


def omega_muon_chunked(*args, **kwargs):  # the kernel entry, imported on use: it needs Triton
    from memnets.memory.muon_kernel import omega_muon_chunked as kernel

    return kernel(*args, **kwargs)


def bench(arch, phi, B, T, H, D, window, C, muon, device, dtype, repeats):
    with torch.no_grad():
        q, k = (phi(F.normalize(torch.randn(B, T, H, D, device=device), dim=-1)).to(dtype) for _ in range(2))
    q, k = q.requires_grad_(), k.requires_grad_()
    v = torch.randn(B, T, H, D, device=device, dtype=dtype, requires_grad=True)
    mode = muon.removesuffix("-compiled")
    lr, mom, keep = (torch.rand(B, T, H, device=device).requires_grad_() for _ in range(3))
    gate = torch.rand(B, T, H, window, device=device).requires_grad_() if window > 1 else None

    def run() -> None:
        if muon == "chunk-triton":
            y, st = omega_muon_chunked(arch, q, k, v, lr * 0.1, mom, keep, gate, window=window, chunk_size=C)
        else:
            y, st = omega_chunked(
                arch, q, k, v, lr * 0.1, mom if mode != "none" else None, keep, gate,
                window=window, chunk_size=C, muon=None if mode == "none" else mode,
            )  # fmt: skip
        (y.float().sum() + sum(w.sum() for w in st.memory.weights)).backward()

    if muon.endswith("-compiled"):
        with compiled_steps(dtype):
            run()  # compiles every step shape once, outside the timing
            return best_time(run, repeats, device)
    return best_time(run, repeats, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--expansion", type=float, default=1.0)
    p.add_argument("--windows", type=int, nargs="+", default=[1, 4])
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 32])
    modes = ["none", "chunk", "token"]
    p.add_argument(
        "--muon",
        nargs="+",
        default=modes,
        choices=[*modes, *(f"{m}-compiled" for m in modes), "chunk-triton"],
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="q, k, v; compiled operands"
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench_atlas.json")
    a = p.parse_args()
    device = torch.device(a.device)
    phi = PolynomialFeatures(a.dim, a.degree).to(device)
    arch = FeatureMemoryMLP(a.heads, a.dim, phi.out_dim, depth=2, expansion=a.expansion).to(device)
    dtype = getattr(torch, a.dtype)
    rows = []
    print(f"features {phi.out_dim}, memory shapes {arch.shapes}")
    print(f"{'window':>6} {'C':>4} {'muon':>14} {'ms (fwd+bwd)':>13} {'tok/s':>10}")
    for window in a.windows:
        for C in a.chunks:
            for muon in a.muon:
                s = bench(arch, phi, a.B, a.T, a.heads, a.dim, window, C, muon, device, dtype, a.repeats)
                row = {
                    "window": window,
                    "chunk_size": C,
                    "muon": muon,
                    "seconds": s,
                    "tokens_per_s": a.B * a.T / s,
                }
                rows.append({**vars(a), **row, "feature_dim": phi.out_dim})
                print(f"{window:>6} {C:>4} {muon:>14} {1e3 * s:>13.1f} {a.B * a.T / s:>10.0f}")
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
