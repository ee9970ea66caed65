"""Forward + backward time of the ``tnt`` mixer against ``titans`` at the same (local) chunk size.

TNT's claim (arXiv 2511.07343 §5, Fig. 4/5): with every local shard
restarting from the same initial state, shards run as a batch, so the sequential chain is S_L / C_L
chunk steps instead of T / C; the global memory adds T / C_G steps with large chunks. The paper
reports 5.1x over Titans at 32K tokens for C_L = C = 16 (JAX on TPU). This script measures the same
comparison on whatever device is present (``chunked`` backend on CPU).

    python scripts/bench_tnt.py                      # T = 1K..8K, small width, prints a table
    python scripts/bench_tnt.py --out bench_tnt.json # also writes the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import memnets


def time_fwd_bwd(mixer: torch.nn.Module, x: torch.Tensor, repeats: int, clock: str) -> float:
    """Median seconds of one forward + backward (after one warm-up run). ``clock="cpu"`` counts this
    process's CPU time, robust to other processes sharing the cores (use with --threads 1)."""
    now = time.process_time if clock == "cpu" else time.perf_counter

    def once() -> float:
        sync()
        t0 = now()
        y, _ = mixer(x)
        y.float().square().mean().backward()
        sync()
        return now() - t0

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    once()
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--chunk-size", type=int, default=16, help="Titans C and TNT's local C_L")
    p.add_argument("--shard-size", type=int, default=256, help="TNT's local shard length S_L")
    p.add_argument("--global-chunk-size", type=int, default=1024, help="TNT's C_G")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time (CPU only)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit(f"--clock cpu measures CPU time; it cannot time a {device.type} device")
    torch.manual_seed(0)
    common = {"chunk_size": args.chunk_size, "backend": "chunked"}
    mixers = {
        "titans": memnets.build_mixer("titans", args.d_model, args.num_heads, **common),
        "tnt": memnets.build_mixer(
            "tnt",
            args.d_model,
            args.num_heads,
            shard_size=args.shard_size,
            global_chunk_size=args.global_chunk_size,
            **common,
        ),
    }
    mixers = {n: m.to(device) for n, m in mixers.items()}
    rows = []
    print(
        f"device {device.type} ({torch.get_num_threads()} threads), d_model {args.d_model}, heads "
        f"{args.num_heads}, batch {args.batch}, C = C_L = {args.chunk_size}, S_L = {args.shard_size}, "
        f"C_G = {args.global_chunk_size}; forward + backward ({args.clock} clock), median of {args.repeats}"
    )
    print(f"{'T':>6} | {'titans (s)':>10} | {'tnt (s)':>8} | {'speedup':>7}")
    for T in args.seq_lens:
        x = torch.randn(args.batch, T, args.d_model, device=device, requires_grad=True)
        t = {n: time_fwd_bwd(m, x, args.repeats, args.clock) for n, m in mixers.items()}
        rows.append(
            {"seq_len": T, "titans_s": t["titans"], "tnt_s": t["tnt"], "speedup": t["titans"] / t["tnt"]}
        )
        print(
            f"{T:>6} | {t['titans']:>10.3f} | {t['tnt']:>8.3f} | {t['titans'] / t['tnt']:>6.2f}x", flush=True
        )
    if args.out:
        meta = {
            "device": device.type,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            **{k: v for k, v in vars(args).items() if k != "out"},
        }
        with open(args.out, "w") as f:
            json.dump({"config": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
