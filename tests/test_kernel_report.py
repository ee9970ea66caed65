"""The static kernel report (scripts/kernel_report.py --quick) runs on a CPU, covers its configs, and is
no worse than the committed budget (benchmarks/kernel_budgets.json: spill bytes, tensor-core operand
types, programs per launch, eager ops per chunk). The script runs in a subprocess: it compiles real
kernels, which this session may be interpreting (TRITON_INTERPRET=1)."""

import copy
import json
import subprocess
import sys

import pytest
from helpers import ROOT, compiling_env, sm90_toolchain_problem

from benchmarks import kernel_budget

SCRIPT = ROOT / "scripts" / "kernel_report.py"
BUDGET = ROOT / "benchmarks" / "kernel_budgets.json"

pytest.importorskip("triton")
sys.path.insert(0, str(ROOT / "scripts"))
from kernel_report import QUICK  # noqa: E402 (the script's CI subset; it imports triton)

PROBLEM = sm90_toolchain_problem()


@pytest.mark.slow
@pytest.mark.skipif(PROBLEM is not None, reason=f"cannot compile for sm_90: {PROBLEM}")
def test_quick_report_within_budget(tmp_path):
    env = compiling_env()
    out = tmp_path / "report"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--budget", str(BUDGET)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "0 regressions" in run.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert {r["config"] for r in rows} == set(QUICK)
    for r in rows:
        assert r["auto_cuda"] in ("triton", "compiled"), r  # never eager float32 on CUDA
        if r["auto_cuda"] == "triton":
            launches = r["kernel"]["launches"]
            assert launches and all(ln["status"] == "ok" and ln["registers"] > 0 for ln in launches), r
        else:  # a path without a kernel says why and has its ops per chunk counted
            assert r["why_no_kernel"] and r["eager_launches_per_chunk"]["fwd_per_chunk"] > 0, r
    # the MLP kernels' matmuls are on tensor cores, and the estimate is a positive rate below the peak
    titans = next(r for r in rows if r["config"] == "titans-tiny")
    assert all(ln["mma_sync"] + ln["wgmma"] > 0 for ln in titans["kernel"]["launches"])
    assert 0 < titans["auto"]["fwd_bwd"]["pct_bf16"] < 100
    table = out.with_suffix(".md").read_text()
    assert all(name in table for name in QUICK) and "| config |" in table


def _rows_from_budget() -> list[dict]:
    """Report rows that reproduce the budget's entries exactly (the inverse of ``budget_entries``)."""
    entries = json.loads(BUDGET.read_text())["entries"]
    rows = []
    for key, entry in entries.items():
        if key.count("/") != 1:
            continue
        config, dispatch = key.split("/")
        row = {
            "config": config,
            "dispatch": dispatch,
            "auto_cuda": entry["auto_cuda"],
            "kernel": {"launches": []},
        }
        if "eager_ops_per_chunk_fwd" in entry:
            fwd, total = entry["eager_ops_per_chunk_fwd"], entry["eager_ops_per_chunk_fwd_bwd"]
            row["eager_launches_per_chunk"] = {"fwd_per_chunk": fwd, "fwd_bwd_per_chunk": total}
        for launch_key, launch in entries.items():
            if launch_key.startswith(key + "/"):
                name, role = launch_key[len(key) + 1 :].split(" (", 1)
                row["kernel"]["launches"].append(
                    {
                        "kernel": f"module.{name}",
                        "role": role[:-1],
                        "status": launch["status"],
                        "stack": launch["spill_bytes"],
                        "operand_types": launch["operand_types"],
                        "programs": launch["programs"],
                        "replicated_dots": launch["replicated_dots"],
                        "step_us": {"exposed": launch["exposed_us"]},
                    }
                )
        rows.append(row)
    return rows


def test_budget_check_catches_each_regression():
    rows = _rows_from_budget()
    budgets = json.loads(BUDGET.read_text())["entries"]
    assert kernel_budget.regressions(rows, budgets) == []

    def worse(change) -> list[str]:
        bad = copy.deepcopy(rows)
        change(bad)
        return kernel_budget.regressions(bad, budgets)

    def first_launch(rows: list[dict]) -> dict:
        return next(r for r in rows if r["kernel"]["launches"])["kernel"]["launches"][0]

    def eager(rows: list[dict]) -> dict:
        return next(r for r in rows if "eager_launches_per_chunk" in r)["eager_launches_per_chunk"]

    assert any(
        "spill" in p for p in worse(lambda rs: first_launch(rs).update(stack=first_launch(rs)["stack"] + 8))
    )
    assert any("operand" in p for p in worse(lambda rs: first_launch(rs).update(operand_types=["f32"])))
    assert any("programs" in p for p in worse(lambda rs: first_launch(rs).update(programs=1)))
    assert any("replicated" in p for p in worse(lambda rs: first_launch(rs).update(replicated_dots=10**6)))
    assert any("status" in p for p in worse(lambda rs: first_launch(rs).update(status="error")))
    assert any("exposed" in p for p in worse(lambda rs: first_launch(rs).update(step_us={"exposed": 1e6})))
    assert any("eager_ops" in p for p in worse(lambda rs: eager(rs).update(fwd_bwd_per_chunk=1e6)))
    assert any("not in the report" in p for p in worse(lambda rs: rs.pop()))

    def compiled_path(rows: list[dict]) -> dict:
        return next(r for r in rows if r["auto_cuda"] == "compiled")

    assert any(
        "auto runs 'chunked'" in p for p in worse(lambda rs: compiled_path(rs).update(auto_cuda="chunked"))
    )
    # better figures pass: bf16 operands, no spills, more programs
    better = copy.deepcopy(rows)
    first_launch(better).update(operand_types=["bf16"], stack=0, programs=10_000)
    assert kernel_budget.regressions(better, budgets) == []


def test_tensor_cores_reads_each_matmul_shape_and_operand_type():
    """Each TTGIR matmul counts with its M×N×K and operand type: ``tt.dot`` (mma.sync) lists its types
    after the op's attributes, ``ttng.warp_group_dot`` (wgmma) after an attribute dict that has a
    `` : `` of its own; tf32x3 counts three products, and a product in a loop inside the chunk loop
    counts ``inner`` times."""
    from benchmarks.compiled_asm import tensor_cores

    mma = "#ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 2}>"
    ttgir = "\n".join(
        [
            "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1], x}>",
            "#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 1], x}>",
            "scf.for %c = a to b step c {",
            f"  %0 = tt.dot %a, %b, %z, inputPrecision = tf32 : tensor<16x128xbf16, {mma}> * "
            f"tensor<128x32xbf16, {mma}> -> tensor<16x32xf32, #mma>",
            f"  %1 = tt.dot %a, %b, %z, inputPrecision = tf32x3 : tensor<64x32xf32, {mma}> * "
            f"tensor<32x64xf32, {mma}> -> tensor<64x64xf32, #mma>",
            "  scf.for %h = a to b step c {",
            "    %2 = ttng.warp_group_dot %a, %b, %z {inputPrecision = 0 : i32, isAsync = true} : "
            f"tensor<64x16xbf16, {mma}> * !ttg.memdesc<16x16xbf16, #s, #smem> -> tensor<64x16xf32, #mma1>",
            "  }",
            "}",
        ]
    )
    out = tensor_cores("", ttgir, inner=12)
    assert out["tensor_flop_per_step"] == {
        "mma.sync.bf16": 2.0 * 16 * 32 * 128 * 4,  # 16 rows over 4 warps along M: computed 4 times
        "mma.sync.tf32x3": 2.0 * 64 * 64 * 32 * 3,
        "wgmma.bf16": 2.0 * 64 * 16 * 16 * 12,
    }
    assert (out["dots_per_step"], out["replicated_dots"]) == (1 + 1 + 12, 1)


def test_state_traffic_term():
    """The roofline's state term: the bytes a step moves through global memory at the L2's share of the
    busy SMs, with the spills added once they outgrow L1 (they then share that bandwidth)."""
    from benchmarks.kernel_roofline import L1_BYTES, L2_BW, step_seconds

    share = L2_BW / 64
    fits = step_seconds({"stack": 64, "shared": 0}, 4, 2, 64, state_bytes=1e6)
    assert fits["state"] == pytest.approx(1e6 / share) and fits["step"] == fits["state"]
    stack = L1_BYTES // (32 * 4) + 8  # a spill footprint just past L1
    spilled = step_seconds({"stack": stack, "shared": 0}, 4, 2, 64, state_bytes=1e6)
    assert spilled["state"] == pytest.approx((2 * stack * 128 * 2 + 1e6) / share)
    assert step_seconds({"stack": 0}, 4, 1, 64)["state"] == 0


def _sass(lines: list[tuple[int, str]]) -> str:
    """cuobjdump -sass lines: ``/*addr*/  OP ... ;``."""
    return "\n".join(f"        /*{a:04x}*/                   {op} ;   /* 0x0 */" for a, op in lines)


def test_sass_per_step_weights_loops_by_the_ttgir_trip_counts():
    """An instruction counts once per step in the chunk loop and trip-count times in a loop inside it;
    code outside the chunk loop once (a loop-less kernel is one step); a SASS loop nest unlike the
    TTGIR's gives None."""
    from benchmarks.compiled_asm import sass_per_step

    ttgir = "\n".join(
        [
            "scf.for %c = %c0_i32 to %NC step %c1_i32 : i32 {",
            "  scf.for %j = %c0_i32 to %c6_i32 step %c1_i32 : i32 {",
            "  }",
            "  scf.for %j = %c0_i32 to %c3_i32 step %c1_i32 : i32 {",
            "  }",
            "}",
        ]
    )
    lines = [
        (0x00, "LDG.E.128 R0, desc[UR4][R2.64]"),  # before the chunk loop
        (0x10, "BAR.SYNC.DEFER_BLOCKING 0x0"),  # chunk loop starts
        (0x20, "LDL R4, [R1]"),  # first inner loop: x6
        (0x30, "@P0 BRA 0x20"),
        (0x40, "LDS R5, [R6]"),  # second inner loop: x3
        (0x50, "LDG.E R7, desc[UR4][R8.64]"),
        (0x60, "@!P1 BRA 0x40"),
        (0x70, "BRA 0x10"),  # chunk loop ends
        (0x80, "EXIT"),
    ]
    sass = _sass(lines)
    counts = sass_per_step(sass, ttgir, inner=99)
    assert counts == {
        "instructions": 1 + 1 + 2 * 6 + 3 * 3 + 1 + 1,
        "global_loads": 1 + 3,
        "local_loads": 6,
        "shared_loads": 3,
        "barriers": 1,
    }
    one_loop = "\n".join(["scf.for %c = %c0_i32 to %NC step %c1_i32 : i32 {", "}"])
    assert sass_per_step(sass, one_loop, inner=99) is None
    # a kernel that is one step per program (the split wide forward: a launch per chunk) has no chunk
    # loop: with step_loop=False its outermost loops run their trip counts per step
    flat = "\n".join(ttgir.splitlines()[1:-1])
    inner_sass = _sass([row for row in lines if 0x20 <= row[0] < 0x70])
    assert sass_per_step(inner_sass, flat, inner=99, step_loop=False) == {
        "instructions": 2 * 6 + 3 * 3,
        "global_loads": 3,
        "local_loads": 6,
        "shared_loads": 3,
        "barriers": 0,
    }
    assert sass_per_step(inner_sass, flat, inner=99)["instructions"] == 2 + 3  # as if a chunk loop


def test_sass_per_step_unrolled_inner_loop():
    """An innermost loop the compiler unrolled completely (its copies straight-line code in the SASS):
    matched where every sibling it could be has the same trip count, its copies counted once each;
    None where the siblings' trip counts differ (which one was unrolled cannot be told)."""
    from benchmarks.compiled_asm import sass_per_step

    def nest(*trips: int) -> str:
        inner = [f"  scf.for %j = %c0_i32 to %c{t}_i32 step %c1_i32 : i32 {{\n  }}" for t in trips]
        return "\n".join(["scf.for %c = %c0_i32 to %NC step %c1_i32 : i32 {", *inner, "}"])

    lines = [
        (0x00, "BAR.SYNC.DEFER_BLOCKING 0x0"),  # chunk loop starts
        (0x10, "LDL R4, [R1]"),  # the loop the SASS kept: x6
        (0x20, "@P0 BRA 0x10"),
        (0x30, "LDG.E R7, desc[UR4][R8.64]"),  # the other, unrolled: its 6 copies
        *[(0x40 + 0x10 * i, "LDG.E R7, desc[UR4][R8.64]") for i in range(5)],
        (0xA0, "BRA 0x0"),  # chunk loop ends
    ]
    counts = sass_per_step(_sass(lines), nest(6, 6), inner=99)
    assert counts == {
        "instructions": 1 + 2 * 6 + 6 + 1,
        "global_loads": 6,
        "local_loads": 6,
        "shared_loads": 0,
        "barriers": 1,
    }
    assert sass_per_step(_sass(lines), nest(6, 3), inner=99) is None


def test_exposed_latency_term():
    """The exposed-latency floor: per-warp counts × cycles, local loads at the L2's latency once the
    spills outgrow L1, divided by the warps per scheduler; it sets the step when it is the largest."""
    from benchmarks.kernel_roofline import CLOCK_HZ, L1_BYTES, L2_LATENCY_CYCLES, LATENCY_CYCLES, step_seconds

    counts = {
        "instructions": 1000.0,
        "global_loads": 10.0,
        "local_loads": 20.0,
        "shared_loads": 5.0,
        "barriers": 4.0,
    }
    cycles = sum(LATENCY_CYCLES[k] * v for k, v in counts.items())
    row = {"stack": 0, "shared": 0, "sass_per_step": counts}
    fits = step_seconds(row, 4, 1, 64)
    assert fits["exposed"] == pytest.approx(cycles / CLOCK_HZ) and fits["step"] == fits["exposed"]
    assert step_seconds(row, 8, 1, 64)["exposed"] == pytest.approx(cycles / CLOCK_HZ / 2)
    big = {**row, "stack": L1_BYTES // (32 * 4) + 8}
    extra = (L2_LATENCY_CYCLES - LATENCY_CYCLES["local_loads"]) * 20
    assert step_seconds(big, 4, 1, 64)["exposed"] == pytest.approx((cycles + extra) / CLOCK_HZ)
    assert step_seconds({"stack": 0}, 4, 1, 64)["exposed"] == 0


def test_config_overrides_reach_the_mixers():
    """``--set KEY=VALUE`` (``config_mixers``' overrides): the report builds the mixer with the overridden
    option, here Moneta's chunk-end map at 760M (the config keeps the per-token default); both forms
    run the wide-state kernels with ``backend: triton``."""
    from benchmarks.config_mixers import build_meta, config_mixers, dispatches
    from memnets.memory.miras import ChunkEnd, LqNormalize

    path = ROOT / "configs" / "lm" / "moneta-760m.yaml"
    key = "model.mixer_options.moneta.normalize_at"
    ((name, cfg),) = config_mixers(path, overrides=[f"{key}=chunk_end"])
    assert cfg.mixer_options["moneta"]["normalize_at"] == "chunk_end"
    assert config_mixers(path)[0][1].mixer_options["moneta"].get("normalize_at") is None
    for options, form in ((cfg, ChunkEnd), (config_mixers(path)[0][1], LqNormalize)):
        mixer = build_meta(name, options)
        assert type(mixer.retention) is form
        ((_, dispatch, _),) = dispatches(mixer)
        assert dispatch.no_kernel("triton") is None
