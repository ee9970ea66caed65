"""``benchmarks.kernel_calibration``: the static report's per-kernel estimates beside a GPU run's
measured kernels (what the GPU check prints for the next lent GPU), on a report and a benchmark
written here, and on the committed flagship report."""

import json

import pytest
from helpers import ROOT

from benchmarks.kernel_calibration import bench_calibration, calibration_rows, estimated_ms


def _launch(kernel: str, role: str, ms: float) -> dict:
    return {"kernel": f"mlp_memory.mod.{kernel}", "role": role, "est_ms": ms}


REPORT = {
    "meta": {"batch": 4, "seq": 4096, "triton": "3.9.0", "arch": 90},
    "rows": [
        {"config": "other", "chunk_size": 8, "kernel": {"launches": [_launch("_x_kernel", "fwd", 1.0)]}},
        {
            "config": "titans-760m",
            "chunk_size": 16,
            "kernel": {
                "launches": [
                    _launch("_split_kernel", "fwd (split)", 7.0),
                    _launch("_read_kernel", "fwd (reads)", 0.5),
                    _launch("_split_kernel", "fwd (store, split)", 12.0),  # the same kernel, recomputing
                    _launch("_bwd_kernel", "bwd (split)", 13.0),
                ]
            },
        },
    ],
}


def test_estimates_per_kernel_and_pass():
    """The forward's launches without the backward's recompute; fwd+bwd every launch, a kernel's
    launches added up."""
    assert estimated_ms(REPORT, "titans-760m", "fwd") == {"_split_kernel": 7.0, "_read_kernel": 0.5}
    assert estimated_ms(REPORT, "titans-760m", "fwd+bwd") == {
        "_split_kernel": 19.0,
        "_read_kernel": 0.5,
        "_bwd_kernel": 13.0,
    }
    with pytest.raises(KeyError, match="'nope' has no kernel launches"):
        estimated_ms(REPORT, "nope", "fwd")
    with pytest.raises(ValueError, match="passes='bwd'"):
        estimated_ms(REPORT, "titans-760m", "bwd")


def test_rows_pair_estimates_with_measurements():
    """A kernel measured but not estimated (or the reverse) keeps its row with no ratio; the largest
    measured first."""
    measured = {"_split_kernel": {"ms": 38.0, "launches": 512}, "_extra_kernel": {"ms": 1.0, "launches": 1}}
    rows = calibration_rows({"_split_kernel": 19.0, "_bwd_kernel": 13.0}, measured)
    assert [r["kernel"] for r in rows] == ["_split_kernel", "_extra_kernel", "_bwd_kernel"]
    assert rows[0]["measured_over_est"] == pytest.approx(2.0)
    assert rows[0]["launches"] == 512
    assert rows[1]["est_ms"] is None and rows[1]["measured_over_est"] is None
    assert rows[2]["measured_ms"] is None and rows[2]["measured_over_est"] is None


def test_bench_calibration_only_at_the_reports_shapes():
    """A table per Triton row at the config's chunk size with measured kernels; nothing where the
    benchmark ran other shapes (the CPU smoke run) or rows without kernels (CPU: no profiler split)."""
    kernels = {"_split_kernel": {"ms": 38.0, "launches": 512}}
    rows = [
        {"backend": "triton", "chunk_size": 16, "pass": "fwd+bwd", "kernels": kernels},
        {"backend": "triton (4 warps)", "chunk_size": 16, "pass": "fwd+bwd", "kernels": kernels},
        {"backend": "triton", "chunk_size": 64, "pass": "fwd", "kernels": kernels},
        {"backend": "triton", "chunk_size": 16, "pass": "fwd"},
    ]
    bench = {"meta": {"B": 4, "T": 4096, "H": 16, "D": 96}, "rows": rows}
    lines = bench_calibration(bench, REPORT, "titans-760m", 16, 96)
    assert sum(line.startswith("Static estimates") for line in lines) == 1
    assert "C = 16, fwd+bwd" in lines[1]
    assert "| _split_kernel | 19.00 | 38.00 | 512 | 2.00 |" in lines
    smoke = {**bench, "meta": {"B": 1, "T": 32, "H": 2, "D": 16}}
    assert bench_calibration(smoke, REPORT, "titans-760m", 16, 96) == []
    # a report made at 4 warps (kernel_report.py --wide-num-warps 4) takes the 4-warp rows
    four = {**REPORT, "meta": {**REPORT["meta"], "wide_num_warps": 4}}
    lines = bench_calibration(bench, four, "titans-760m", 16, 96)
    assert [line for line in lines if line.startswith("Static")] == [
        "Static estimates (Triton 3.9.0, sm_90) against the measured kernels: titans-760m's memory, "
        "C = 16, fwd+bwd, triton (4 warps)"
    ]


def test_committed_flagship_report_has_every_titans_kernel():
    """The report the GPU check reads names the kernels the titans-760m memory launches."""
    report = json.loads((ROOT / "benchmarks/results/kernel_report_flagships/report.json").read_text())
    both = estimated_ms(report, "titans-760m", "fwd+bwd")
    assert set(estimated_ms(report, "titans-760m", "fwd")) < set(both)
    assert {"_wide_split_kernel", "_wide_read_backward_kernel", "_wide_split_backward_kernel"} <= set(both)
    assert all(ms > 0 for ms in both.values())


def test_gpu_check_report_prints_the_calibration(tmp_path):
    """The GPU check's markdown (``benchmarks.gpu_report``) sets the committed reports' estimates beside
    a benchmark at titans-760m's shapes: one table per Triton row, the default warps against the
    flagship report and the 4-warp row against the 4-warp one."""
    from benchmarks.gpu_report import markdown

    kernels = {"_wide_split_kernel": {"ms": 30.0, "launches": 729}}
    rows = [
        {"backend": b, "chunk_size": 16, "pass": "fwd+bwd", "ms": 60.0, "tflops": 8.0, "kernels": kernels}
        for b in ("triton", "triton (4 warps)")
    ]
    env = {"date": "today", "device": "H100", "versions": {"torch": "x"}}
    bench = {"status": "passed", "rows": rows, "meta": {"B": 4, "T": 4096, "H": 16, "D": 96}}
    report = {"env": env, "cpu_smoke": False, "seconds": 1, "steps": {"bench": bench}}
    text = markdown(report, ROOT, {"H": 16, "D": 96})
    tables = [line for line in text.splitlines() if line.startswith("Static estimates")]
    assert [t.rsplit(", ", 1)[-1] for t in tables] == ["triton", "triton (4 warps)"]
    assert "| _wide_split_kernel |" in text
