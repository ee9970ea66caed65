"""Every Triton kernel in memnets/kernels/ still compiles for an H100 (sm_90) with the installed Triton and fits
its shared memory: scripts/check_kernels_compile.py --quick (one case per kernel) in a subprocess, since
this test session may interpret the kernels (TRITON_INTERPRET=1), and interpreted kernels cannot be
compiled."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, compiling_env, sm90_toolchain_problem

# the kernel test modules collected after this one interpret their kernels; Triton's own @triton.jit
# library functions (tl.sigmoid, ...) are made when it is imported, so importing it here first without
# the variable breaks their interpreted kernels ("Cannot call @triton.jit'd outside of the scope of a
# kernel") when this file runs before them
os.environ.setdefault("TRITON_INTERPRET", "1")

SCRIPT = ROOT / "scripts" / "check_kernels_compile.py"

pytest.importorskip("triton")


PROBLEM = sm90_toolchain_problem()


@pytest.mark.slow
@pytest.mark.skipif(PROBLEM is not None, reason=f"cannot compile for sm_90: {PROBLEM}")
def test_every_kernel_compiles_for_sm90(tmp_path):
    out = tmp_path / "compile.json"
    env = compiling_env()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--arch", "90", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    kernels = {row["kernel"] for row in report["rows"]}
    assert report["meta"]["missing"] == []
    assert {"linear_memory._forward_kernel", "linear_memory._backward_kernel"} <= kernels
    # the MLP-memory kernels at their smallest case, D=16, hidden=64, chunk 16; the wide-state ones at
    # D=16, hidden=128 (blocks of 32), chunk 16, but the one-program backward, which runs where the
    # reads stay in the recurrence (here OmegaNet's MQAR keys, 560 wide): each module compiles exactly
    # its kernels there
    for names, shape in (
        (("forward._forward_kernel", "backward._backward_kernel"), "D=16 DH=64 L=16"),
        (("wide_forward._wide_forward_kernel",), "D=16 DH=128 L=16"),
        (("wide_backward._wide_backward_kernel",), "D=32 DH=32 L=8 DI=560"),
        (
            (
                "wide_split_backward._wide_split_backward_kernel",
                "wide_split_backward._wide_split_backward_sums_kernel",
            ),
            "DI=16 L=16",
        ),
        (("wide_split._wide_split_kernel", "wide_split._wide_split_read_kernel"), "D=16 L=16"),
        (("wide_reads._wide_read_backward_kernel",), "D=16 DH=128 L=16"),
        (
            ("muon_forward._muon_forward_kernel", "muon_backward._muon_backward_kernel"),
            "D=16 DH=16 L=8 DI=152",
        ),
        (
            (
                "token_muon_forward._token_muon_forward_kernel",
                "token_muon_backward._token_muon_backward_kernel",
            ),
            "D=16 DH=16 L=8 DI=152",
        ),
        # Memora's softmax retention at the mixer's tiny and MQAR heads
        (
            ("simplex._simplex_forward_kernel", "simplex_backward._simplex_backward_kernel"),
            "D=32 DH=128 L=16",
        ),
        (
            (
                "wide_simplex._wide_simplex_forward_kernel",
                "wide_simplex_backward._wide_simplex_backward_kernel",
            ),
            "D=16 DH=64 L=16",
        ),
    ):
        names = {f"mlp_memory.{name}" for name in names}
        modules = tuple(name.rsplit(".", 1)[0] + "." for name in names)
        rows = [row for row in report["rows"] if row["kernel"].startswith(modules)]
        assert {row["kernel"] for row in rows} == names
        assert all(set(shape.split()) <= set(row["constexprs"].split()) for row in rows), rows
    assert len(kernels) == 24, sorted(kernels)
    for row in report["rows"]:
        assert row["status"] == "ok" and 0 <= row["shared"] <= 227 * 1024, row
