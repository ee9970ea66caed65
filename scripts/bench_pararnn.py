"""Parallel (Newton + scan) vs sequential application of the ParaGRU / ParaLSTM cells.

For each cell and sequence length T it times the forward pass (under no_grad) and forward + backward
(backward of a random cotangent into the inputs and the cell's parameters), for the sequential loop and
for the Newton solver, and records the Newton iterations and the final residual max|h_t - f(h_{t-1}, u_t)|.
Like the paper's Fig. 1 this is cell application only (the input projection is computed beforehand).
Prints a table and writes JSON with ``--out``.

    python scripts/bench_pararnn.py --out bench_pararnn.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks package sits beside memnets, uninstalled
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import best_time  # noqa: E402
from memnets.mixers.pararnn import ParaGRUCell, ParaLSTMCell  # noqa: E402
from memnets.newton import NewtonOptions, NewtonStats, newton_solve, sequential_solve  # noqa: E402

CELLS = {"paragru": ParaGRUCell, "paralstm": ParaLSTMCell}


def bench_one(name: str, T: int, args: argparse.Namespace, device: torch.device) -> dict:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    cell = CELLS[name](args.d_hidden).to(device=device, dtype=dtype)
    u = torch.randn(args.batch, T, 3, args.d_hidden, device=device, dtype=dtype, requires_grad=True)
    cot = torch.randn_like(cell.zero_state(u))
    options = NewtonOptions(max_iters=args.newton_iters)
    stats = NewtonStats()
    leaves = [u, *cell.parameters()]

    def parallel_fwd() -> None:
        with torch.no_grad():
            newton_solve(cell, u, options=options, stats=stats)

    def parallel_fwd_bwd() -> None:
        torch.autograd.grad(newton_solve(cell, u, options=options, stats=stats), leaves, cot)

    def sequential_fwd() -> None:
        with torch.no_grad():
            sequential_solve(cell, u)

    def sequential_fwd_bwd() -> None:
        torch.autograd.grad(sequential_solve(cell, u), leaves, cot)

    row = {"cell": name, "T": T}
    row["parallel_fwd_s"] = best_time(parallel_fwd, args.repeat, device)
    row["newton_iters"], row["residual"], row["fallback"] = stats.iters, stats.residual, stats.fallback
    row["parallel_fwd_bwd_s"] = best_time(parallel_fwd_bwd, args.repeat, device)
    seq_repeat = max(1, args.repeat // 2) if T >= 8192 else args.repeat
    row["sequential_fwd_s"] = best_time(sequential_fwd, seq_repeat, device)
    row["sequential_fwd_bwd_s"] = best_time(sequential_fwd_bwd, seq_repeat, device)
    with torch.no_grad():
        ref = sequential_solve(cell, u)
        out = newton_solve(cell, u, options=options)
        row["max_abs_diff"] = (ref - out).abs().max().item()
    row["speedup_fwd"] = row["sequential_fwd_s"] / row["parallel_fwd_s"]
    row["speedup_fwd_bwd"] = row["sequential_fwd_bwd_s"] / row["parallel_fwd_bwd_s"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="paragru,paralstm")
    p.add_argument("--lengths", default="256,1024,4096,16384")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--d-hidden", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--newton-iters", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (the CI box shares 2 cores)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    header = (
        f"{'cell':9} {'T':>6} {'it':>2} {'residual':>9} {'maxdiff':>9} {'seq fwd':>9} {'par fwd':>9} "
        f"{'x':>6} {'seq f+b':>9} {'par f+b':>9} {'x':>6}"
    )
    print(
        f"device={device} dtype={args.dtype} batch={args.batch} d_hidden={args.d_hidden} threads={args.threads}"
    )
    print(header)
    for name in args.cells.split(","):
        for T in (int(t) for t in args.lengths.split(",")):
            r = bench_one(name, T, args, device)
            rows.append(r)
            print(
                f"{name:9} {T:>6} {r['newton_iters']:>2} {r['residual']:>9.1e} {r['max_abs_diff']:>9.1e} "
                f"{r['sequential_fwd_s'] * 1e3:>7.1f}ms {r['parallel_fwd_s'] * 1e3:>7.1f}ms {r['speedup_fwd']:>5.1f}x "
                f"{r['sequential_fwd_bwd_s'] * 1e3:>7.1f}ms {r['parallel_fwd_bwd_s'] * 1e3:>7.1f}ms "
                f"{r['speedup_fwd_bwd']:>5.1f}x",
                flush=True,
            )
    if args.out:
        meta = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor(),
            "torch": torch.__version__,
            **{k: v for k, v in vars(args).items() if k != "out"},
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
