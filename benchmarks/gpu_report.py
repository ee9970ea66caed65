"""The GPU check's report as markdown (``scripts/gpu_check.py`` writes it beside report.json): one
table of steps, then what each step found."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.kernel_calibration import bench_calibration


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(report: dict[str, Any], root: Path, titans: dict[str, int]) -> str:
    """The GPU check's report.json as markdown: the steps, failed kernel tests, the training rows, the
    benchmark's and peers' rows, and the static model's per-kernel estimates beside the measured
    kernels (``titans``: the benchmark's memory, heads ``H`` of dim ``D``; the committed reports
    under ``root``)."""
    env = report["env"]
    lines = [
        f"# GPU check {env['date']}",
        "",
        f"{env['device']}; torch {env['versions']['torch']}, triton {env['versions'].get('triton')}, "
        f"CUDA {env['versions'].get('cuda')}, driver {report.get('driver') or '-'}; memnets {env.get('git')}; "
        f"mode {'cpu-smoke' if report['cpu_smoke'] else 'gpu'}; {report['seconds']} s",
        "",
        "| step | status | detail |",
        "|---|---|---|",
    ]
    for name, s in report["steps"].items():
        detail = s.get("reason") or s.get("summary") or ""
        if any(s.get("ended", {}).values()):
            detail += " (ended: " + ", ".join(f"{n} {k.lower()}" for k, n in s["ended"].items() if n) + ")"
        lines.append(f"| {name} | {s['status']} | {detail} ({s.get('seconds', '-')} s) |")
    failed = report["steps"].get("kernels", {}).get("failed_tests", [])
    if failed:
        lines += ["", "Failed kernel tests:", *(f"- `{t}`" for t in failed)]
    train = report["steps"].get("train", {}).get("rows", [])
    if train:
        lines += ["", "| family | config | loss | paths (layers) | s |", "|---|---|---|---|---|"]
        for r in train:
            if "error" in r:
                lines.append(f"| {r['family']} | {r['config']} | error | {r['error']} | |")
                continue
            paths = "; ".join(f"{k}: {v['path']}" for k, v in r["paths"].items())
            lines.append(f"| {r['family']} | {r['config']} | {r['loss']:.3f} | {paths} | {r['seconds']} |")
    bench = report["steps"].get("bench", {})
    rows = bench.get("rows", []) + report["steps"].get("peers", {}).get("rows", [])
    if rows:
        lines += [
            "",
            "| backend | C | pass | ms | TFLOP/s | % GEMM | peak MB | device ms (memory kernels) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "skipped" in r:
                lines.append(
                    f"| {r['backend']} | {r.get('chunk_size', '-')} | {r.get('pass') or '-'} | skipped: {r['skipped']} | | | | |"
                )
                continue
            lines.append(
                f"| {r['backend']} | {r.get('chunk_size', '-')} | {r['pass']} | {_fmt(r['ms'], '.3f')} | "
                f"{_fmt(r['tflops'], '.3f')} | {_fmt(r.get('pct_gemm_bf16'))} | {_fmt(r.get('peak_mb'), '.0f')} | "
                f"{_fmt(r.get('device_ms'), '.3f')} ({_fmt(r.get('memory_kernels_ms'), '.3f')}) |"
            )
    # the static model's per-kernel estimates beside the measured kernels, in the kernels' own layout and
    # at 4 warps (the report's two files: RESULTS.md §57)
    for name in ("kernel_report_flagships", "kernel_report_titans_4warps"):
        path = root / "benchmarks" / "results" / name / "report.json"
        if rows and path.exists():
            static = json.loads(path.read_text())
            lines += bench_calibration(bench, static, "titans-760m", titans["H"], titans["D"])
    skips = [
        f"- {f}: {why}" for f, why in report["steps"].get("kernels", {}).get("files_not_run", {}).items()
    ]
    skips += [f"- bench: {n}" for n in bench.get("notes", [])]
    if skips:
        lines += ["", "Skipped:", *skips]
    return "\n".join(lines) + "\n"
