"""Time the memory engine: forward + backward of ``memory_chunked`` (and ``memory_reference`` on short
sequences) for a few shapes and chunk sizes. Prints a table and writes JSON.

    python scripts/bench_memory.py --out bench_memory.json            # CPU
    python scripts/bench_memory.py --device cuda --T 4096 --heads 16  # GPU
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
from memnets.memory import MemoryMLP, memory_chunked, memory_reference  # noqa: E402


def bench(fn, arch, B, T, H, D, C, device, repeats):
    q, k, v = (F.normalize(torch.randn(B, T, H, D, device=device), dim=-1).requires_grad_() for _ in range(3))
    gates = [torch.rand(B, T, H, device=device).requires_grad_() for _ in range(3)]

    def run() -> None:
        y, st = fn(arch, q, k, v, gates[0] * 0.1, gates[1], gates[2], chunk_size=C)
        (y.float().sum() + sum(w.sum() for w in st.weights)).backward()

    return best_time(run, repeats, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--depth", type=int, nargs="+", default=[1, 2])
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 64])
    p.add_argument("--reference-max-T", type=int, default=256, help="skip the reference above this T")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench_memory.json")
    a = p.parse_args()
    device = torch.device(a.device)
    rows = []
    print(f"{'depth':>5} {'C':>4} {'path':>9} {'ms (fwd+bwd)':>13} {'tok/s':>10}")
    for depth in a.depth:
        arch = MemoryMLP(a.heads, a.dim, depth=depth).to(device)
        for C in a.chunks:
            paths = [("chunked", memory_chunked)]
            if a.reference_max_T >= a.T:
                paths.append(("reference", memory_reference))
            for name, fn in paths:
                s = bench(fn, arch, a.B, a.T, a.heads, a.dim, C, device, a.repeats)
                row = {
                    "depth": depth,
                    "chunk_size": C,
                    "path": name,
                    "seconds": s,
                    "tokens_per_s": a.B * a.T / s,
                }
                rows.append({**vars(a), **row})
                print(f"{depth:>5} {C:>4} {name:>9} {1e3 * s:>13.1f} {a.B * a.T / s:>10.0f}")
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
