"""``bash scripts/gpu_check.sh --cpu-smoke`` (the GPU check's steps at tiny shapes on CPU, kernels in
Triton's interpreter) writes its report, and every step passed or was skipped with a reason."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    cmd = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert f"report: {out}" in run.stdout
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("# GPU check")
    steps = report["steps"]
    assert set(steps) == {"kernels", "train", "bench", "peers"}
    for name, step in steps.items():
        assert step["status"] in ("passed", "skipped"), (name, step)
        if step["status"] == "skipped":
            assert step["reason"], name
    # (a) the interpreted kernel test ran and passed
    assert "passed" in steps["kernels"]["summary"] and "failed" not in steps["kernels"]["summary"]
    # (b) every config family took a finite step, and each layer's path was read from its dispatches
    rows = steps["train"]["rows"]
    families = {r["family"] for r in rows}
    assert {"titans", "tnt", "gated_deltanet", "attention"} <= families
    for r in rows:
        assert r["finite"] and r["paths"], r
    titans = next(r for r in rows if r["family"] == "titans")
    assert titans["paths"]["titans op"]["path"] == "chunked"  # auto on CPU
    # (c) the kernel benchmark has a Triton row, and a missing peer is a row that says why
    bench = steps["bench"]["rows"]
    assert any(r["backend"] == "triton" and r.get("ms", 0) > 0 for r in bench)
    assert any(r["backend"] == "chunked" and r.get("ms", 0) > 0 for r in bench)
    peers = steps["peers"]["rows"]
    assert any(r["backend"] == "sdpa" and r["ms"] > 0 for r in peers)
    assert all(r.get("ms", 0) > 0 or r.get("skipped") for r in peers)
