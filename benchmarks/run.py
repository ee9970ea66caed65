"""Run the benchmark registry on the present device and print one table (fla's ops/run.py protocol).

    python -m benchmarks.run                                   # every entry, default shapes
    python -m benchmarks.run --names titans,sdpa --shapes B2_T4096_H8_D64 --modes fwdbwd
    python -m benchmarks.run --kinds mixer --fast --json out.json
    python -m benchmarks.run --compare main                    # same table for main, speed ratio
    python -m benchmarks.run --kinds mixer --names moneta --option gates=channel   # a mixer option

Per row: median ms with p20/p80, tokens/s, model TFLOP/s (benchmarks/flops.py; "n/a" without a
formula) and % of the dtype's datasheet peak on a known GPU (pct_peak) and of an 8192³ GEMM measured at
the start of the run (pct_gemm), memory in megabytes of 10^6 bytes, as the trainer logs it (GPU: peak
allocated during the call; CPU: saved for backward). ``--compare REF`` checks REF out in a temporary git
worktree, runs this same harness against that tree's memnets in a subprocess, and prints ref/current time
ratios (> 1: the current tree is faster).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent

GPU_SHAPES = ["B8_T1024_H8_D64", "B4_T2048_H16_D64", "B2_T4096_H16_D128", "B1_T8192_H16_D128"]
CPU_SHAPES = ["B1_T128_H2_D32", "B1_T256_H2_D32"]
FAST_SHAPES = ["B1_T32_H2_D8"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def use_tree(root: Path) -> None:
    """Make ``import memnets`` (``memnets.kernels`` with it) load from ``root`` instead of the editable
    install: ``--compare``'s child process, or any run with ``MEMNETS_BENCH_ROOT=/other/checkout``."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__name__", "").lower()]
    sys.path.insert(0, str(root))


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def run_benches(
    benches: list[Any],
    shapes: list[Any],
    device: torch.device,
    dtype: torch.dtype,
    modes: tuple[str, ...] = ("fwd", "fwdbwd"),
    budget: Any = None,
    overrides: dict[str, Any] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Time every (bench, shape, mode); unavailable or failing entries give a row with a status."""
    from .flops import peak_tflops
    from .timing import bench, gemm_ceiling_tflops, peak_memory_mb, saved_for_backward_mb

    peak = peak_tflops(device, dtype)
    ceiling = gemm_ceiling_tflops(device, dtype)
    rows = []
    for b in benches:
        why = b.unavailable(device)
        for shape in shapes:
            base = {"name": b.name, "kind": b.kind, "shape": str(shape), "B": shape.B, "T": shape.T}
            base.update({"H": shape.H, "D": shape.D})
            if why:
                rows += [{**base, "mode": m, "status": f"skipped: {why}"} for m in modes]
                continue
            try:
                torch.manual_seed(0)
                case = b.build(shape, device, dtype, overrides or {})
            except Exception as e:
                rows += [{**base, "mode": m, "status": f"failed: {type(e).__name__}: {e}"} for m in modes]
                if verbose:
                    traceback.print_exc()
                continue
            for mode in modes:
                row = {**base, "mode": mode}
                try:
                    fn = case.fwd if mode == "fwd" else case.fwdbwd
                    t = bench(fn, device, budget, grad_to_none=case.grads if mode == "fwdbwd" else None)
                    row.update(t.to_dict())
                    row["tokens_per_s"] = shape.B * shape.T / (t.median_ms / 1e3)
                    flops = None if case.flops is None else case.flops[0 if mode == "fwd" else 1]
                    row["tflops"] = None if flops is None else flops / (t.median_ms / 1e3) / 1e12
                    tf = row["tflops"]
                    row["pct_peak"] = None if tf is None or peak is None else 100 * tf / peak
                    row["pct_gemm"] = None if tf is None or ceiling is None else 100 * tf / ceiling
                    row["peak_mem_mb"] = peak_memory_mb(fn, device)
                    if mode == "fwdbwd" and case.forward_with_grad is not None:
                        row["saved_mb"] = saved_for_backward_mb(case.forward_with_grad, case.grads)
                        for g in case.grads:
                            g.grad = None
                    row["status"] = "ok"
                except Exception as e:
                    row["status"] = f"failed: {type(e).__name__}: {e}"
                    if verbose:
                        traceback.print_exc()
                rows.append(row)
                if verbose:
                    print(format_rows([row], header=False), flush=True)
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


COLUMNS = [
    ("name", "<34", None),
    ("shape", "<18", None),
    ("mode", "<7", None),
    ("median_ms", ">10", ".3f"),
    ("p20_ms", ">9", ".3f"),
    ("p80_ms", ">9", ".3f"),
    ("tokens_per_s", ">12", ",.0f"),
    ("tflops", ">8", ".3f"),
    ("pct_peak", ">7", ".1f"),
    ("pct_gemm", ">7", ".1f"),
    ("peak_mem_mb", ">9", ".1f"),
    ("saved_mb", ">9", ".1f"),
]


def format_rows(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = []
    if header:
        lines.append(" ".join(format(c, w) for c, w, _ in COLUMNS))
    for r in rows:
        if r.get("status", "ok") != "ok":
            lines.append(" ".join(format(str(r[c]), w) for c, w, _ in COLUMNS[:3]) + "  " + r["status"][:100])
            continue
        cells = [format(str(r[c]) if f is None else _fmt(r.get(c), f), w) for c, w, f in COLUMNS]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown (for benchmarks/RESULTS.md)."""
    names = [c for c, _, _ in COLUMNS]
    lines = [
        "| " + " | ".join(names) + " |",
        "|" + "|".join("---" if f is None else "---:" for _, _, f in COLUMNS) + "|",
    ]
    for r in rows:
        if r.get("status", "ok") != "ok":
            cells = [str(r[c]) for c in names[:3]] + [r["status"][:80]] + [""] * (len(names) - 4)
        else:
            cells = [str(r[c]) if f is None else _fmt(r.get(c), f) for c, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_rows(cur: list[dict[str, Any]], ref: list[dict[str, Any]]) -> str:
    """Table of ref/current median time per (name, shape, mode) present and ok in both."""
    key = lambda r: (r["name"], r["shape"], r["mode"])
    ref_by = {key(r): r for r in ref if r.get("status") == "ok"}
    lines = [f"{'name':<34} {'shape':<18} {'mode':<7} {'ref_ms':>10} {'cur_ms':>10} {'ref/cur':>8}"]
    for r in cur:
        o = ref_by.get(key(r))
        if r.get("status") != "ok" or o is None:
            continue
        ratio = o["median_ms"] / r["median_ms"]
        lines.append(
            f"{r['name']:<34} {r['shape']:<18} {r['mode']:<7} {o['median_ms']:>10.3f} {r['median_ms']:>10.3f} {ratio:>8.2f}"
        )
    return "\n".join(lines)


def run_reference(ref: str, argv: list[str]) -> dict[str, Any]:
    """Run this harness with ``argv`` against revision ``ref`` of the repository (a temporary git
    worktree) in a subprocess; returns that run's JSON."""
    repo = HERE.parent
    tmp = Path(tempfile.mkdtemp(prefix="memnets-bench-"))
    tree = tmp / "ref"
    try:
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), ref], check=True)
        shutil.copytree(
            HERE, tmp / "harness" / "benchmarks", ignore=shutil.ignore_patterns("__pycache__", "*.png")
        )
        out = tmp / "ref.json"
        env = {**os.environ, "PYTHONPATH": str(tmp / "harness"), "MEMNETS_BENCH_ROOT": str(tree)}
        cmd = [sys.executable, "-m", "benchmarks.run", *argv, "--json", str(out)]
        subprocess.run(cmd, check=True, cwd=tmp, env=env)
        return json.loads(out.read_text())
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _strip_option(argv: list[str], option: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def _options(items: list[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` items as mixer options, each value read as YAML (``4``, ``true``, ``channel``)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option {item!r}: expected KEY=VALUE, e.g. gates=channel")
        out[key] = yaml.safe_load(value)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--names", default=None, help="comma list; an entry runs if any item is a substring of its name"
    )
    p.add_argument("--kinds", default="mixer,model,peer", help="comma list of mixer, model, peer")
    p.add_argument("--shapes", default=None, help="comma list of B2_T1024_H8_D64 shapes (default by device)")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--chunk-size", type=int, default=None, help="chunk_size for every entry that takes one")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a mixer option (YAML value) for every entry that takes it, e.g. gates=channel; repeatable",
    )
    p.add_argument("--fast", action="store_true", help="tiny shapes and few repetitions (smoke test)")
    p.add_argument("--json", default=None, help="write rows and the environment header here")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    p.add_argument(
        "--compare", default=None, metavar="REF", help="also run git revision REF and print ratios"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU, see benchmarks/env.py)",
    )
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if os.environ.get("MEMNETS_BENCH_ROOT"):
        use_tree(Path(os.environ["MEMNETS_BENCH_ROOT"]))

    from .env import configure_threads, environment, resolve_device, title, write_json
    from .registry import Shape, all_benches
    from .timing import Budget

    device = resolve_device(args.device)
    configure_threads(args.threads, device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    shapes = args.shapes.split(",") if args.shapes else None
    shapes = shapes or (FAST_SHAPES if args.fast else GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    shapes = [Shape.parse(s) for s in shapes]
    kinds = set(args.kinds.split(","))
    names = args.names.split(",") if args.names else None
    benches = [
        b for b in all_benches() if b.kind in kinds and (names is None or any(n in b.name for n in names))
    ]
    if not benches:
        print(f"no benchmark matches --names {args.names} --kinds {args.kinds}", file=sys.stderr)
        return 2
    overrides = _options(args.option) | ({} if args.chunk_size is None else {"chunk_size": args.chunk_size})
    env = environment(device)
    print(f"# {title(env)} | dtype {str(dtype).removeprefix('torch.')}", flush=True)
    rows = run_benches(
        benches,
        shapes,
        device,
        dtype,
        tuple(args.modes.split(",")),
        Budget.fast() if args.fast else Budget(),
        overrides,
        verbose=args.verbose,
    )
    print(format_rows(rows))
    result = {"env": env, "dtype": str(dtype), "args": vars(args), "rows": rows}
    if args.compare:
        child_argv = _strip_option(_strip_option(_strip_option(argv, "--compare"), "--json"), "--markdown")
        ref = run_reference(args.compare, child_argv)
        result["compare"] = {"ref": args.compare, "env": ref["env"], "rows": ref["rows"]}
        print(f"\n# speed ratio vs {args.compare} ({ref['env'].get('git')}): ref_ms / current_ms")
        print(compare_rows(rows, ref["rows"]))
    if args.markdown:
        Path(args.markdown).write_text(
            f"{title(env)} | dtype {str(dtype).removeprefix('torch.')}\n\n" + markdown_rows(rows)
        )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
