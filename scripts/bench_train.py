"""End-to-end training throughput of any config: tokens/s (and MFU on a known GPU) over a few optimizer
steps after warm-up, using memnets.trainer's own train step (data, autocast, accumulation, clipping,
AdamW; evaluation and checkpoints are not run).

    python scripts/bench_train.py configs/mqar/titans.yaml
    python scripts/bench_train.py configs/lm/attention-tiny.yaml data.path=notes.txt --steps 20 --json out.json

MFU = model FLOPs per step (benchmarks/flops.py: dense matmuls ×3 + each mixer's core op fwd+bwd)
/ step time / the datasheet dense peak of the precision in use; "n/a" on CPU, on an unknown GPU or
when a mixer has no FLOP formula.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.env import configure_threads, environment, title, write_json  # noqa: E402
from benchmarks.flops import model_flops, peak_tflops  # noqa: E402
from benchmarks.run import use_tree  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(config: str, overrides: list[str], warmup: int, steps: int) -> dict:
    from memnets.config import load_config
    from memnets.environment import peak_memory_mb
    from memnets.trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cfg = load_config(config, [*overrides, f"train.steps={warmup + steps}", f"run.dir={tmp}/run"])
        trainer = Trainer(cfg)
        logging.getLogger("memnets").setLevel(logging.WARNING)
        device = trainer.device
        for _ in range(warmup):
            trainer.train_step()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step()
            _sync(device)
            times.append(time.perf_counter() - start)
    B, T = cfg.train.batch_size, cfg.data.seq_len
    step_s = sorted(times)[len(times) // 2]
    flops = model_flops(trainer.model, B, T)
    dtype = torch.bfloat16 if trainer.amp else torch.float32
    peak = peak_tflops(device, dtype)
    achieved = None if flops is None else flops[1] / step_s / 1e12
    return {
        "config": config,
        "overrides": overrides,
        "env": environment(device),
        "precision": "bf16" if trainer.amp else "fp32",
        "batch_size": B,
        "seq_len": T,
        "params": trainer.model.num_params(),
        "warmup_steps": warmup,
        "steps": steps,
        "step_s_median": step_s,
        "step_s_all": times,
        "tokens_per_s": B * T / step_s,
        "tokens_per_s_mean": B * T * steps / sum(times),
        "model_tflops_per_step": None if flops is None else flops[1] / 1e12,
        "achieved_tflops": achieved,
        "mfu_pct": None if achieved is None or peak is None else 100 * achieved / peak,
        # in 10^6 bytes, as the trainer logs it: the CUDA allocator's peak after warm-up, on CPU the
        # process's peak resident set size
        "peak_mem_mb": peak_memory_mb(device),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.batch_size=16 train.device=cpu")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU, see benchmarks/env.py)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not any(o.startswith("train.device=cpu") for o in args.overrides)
    configure_threads(args.threads, torch.device("cuda" if cuda else "cpu"))
    if os.environ.get("MEMNETS_BENCH_ROOT"):  # another checkout's memnets, as profile_chunks allows
        use_tree(Path(os.environ["MEMNETS_BENCH_ROOT"]))
    r = bench_train(args.config, args.overrides, args.warmup, args.steps)
    fmt = lambda x, s: "n/a" if x is None else format(x, s)
    print(f"# {title(r['env'])} | {r['precision']}")
    print(
        f"{args.config}: {r['params'] / 1e6:.2f}M params, batch {r['batch_size']} x T {r['seq_len']} | "
        f"step {1e3 * r['step_s_median']:.1f} ms (median of {r['steps']}) | {r['tokens_per_s']:,.0f} tokens/s | "
        f"{fmt(r['achieved_tflops'], '.2f')} TFLOP/s | MFU {fmt(r['mfu_pct'], '.1f')}% | "
        f"peak mem {fmt(r['peak_mem_mb'], '.0f')} MB"
    )
    if args.json:
        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
