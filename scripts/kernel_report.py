"""Static kernel report, no GPU needed: for every config in ``configs/lm/``, what ``backend="auto"`` runs
on an H100 for each memory of its mixers, and, for each Triton kernel launch, its grid, sequential
steps and sm_90 compile (tensor-core instructions, registers, spills, shared memory), with a roofline
estimate. Writes JSON and a markdown table.

    python scripts/kernel_report.py --quick                    # a small subset (CI), minutes on a CPU
    python scripts/kernel_report.py                            # every config in configs/lm/
    python scripts/kernel_report.py --configs titans-760m tnt-150m --out report   # report.json, report.md
    python scripts/kernel_report.py --no-explicit              # only what auto runs
    python scripts/kernel_report.py --flagships --chunk-size 64   # every memory at chunk 64
    python scripts/kernel_report.py --configs moneta-760m --set model.mixer_options.moneta.normalize_at=chunk_end
    python scripts/kernel_report.py --configs titans-760m --wide-num-warps 4   # the wide kernels at 4 warps

What is measured and what is estimated:

* **From the code** (exact): the backend ``auto`` picks on a CUDA device and the reason no kernel runs
  (``MemoryDispatch.backend`` / ``no_kernel``, asked with a CUDA device on a CPU-only box), each mixer
  built on the meta device at the config's real widths and head shapes. Where ``auto`` runs the chunked
  form but ``backend="triton"`` has a kernel (the wide-state MLP kernels while ``WIDE_IN_AUTO`` is
  off), that kernel is reported too, marked *explicit*.
* **From the sm_90 compile** (exact for Triton 3.x at the launcher's constexprs, via
  ``scripts/check_kernels_compile.py``): registers, spill (stack) bytes per thread, shared memory; from
  the PTX the static counts of ``mma.sync`` and ``wgmma`` instructions and their operand types; from
  the TTGIR each matmul's padded shape and loop depth (a matmul inside a loop nested in the chunk loop
  counts ``inner`` times per step: the wide kernels' hidden blocks; tf32x3 appears as three matmuls)
  and the *replicated* mma.sync products (rows fewer than 16 × the warps laid along them: those warps
  compute the same rows).
* **From the launcher's arithmetic** (exact): programs per launch (vs the 132 SMs of an H100), waves,
  sequential steps (tiles or chunks) per program, at a 4×4096 micro-batch (``--batch``, ``--seq``);
  one model per kernel family in ``benchmarks/kernel_launches.py``.
* **Counted on CPU** (exact for the eager form): ATen ops per chunk of the chunked PyTorch form, which
  on a GPU is one kernel launch each: the mixer's forward and backward at batch 1 and two lengths one
  chunk (of its largest chunk size) apart; ops outside the chunk loop cancel. The forward
  is counted inside the memory's own dispatch calls; its backward cannot be separated from the
  mixer's, so fwd+bwd is its forward × the mixer's (fwd + bwd) / fwd (exact for one memory per mixer).
  Chunks over 64 tokens (TNT's global memory) are counted at 64: an eager chunk step issues the same
  ops whatever its length.
* **From the launcher's checkpoint plan** (exact): *kernel bwd states MB*, the recurrent states the
  backward keeps live at once (checkpoints and inner segment starts in float32, one segment's chunk
  states, which the wide kernels keep at the products' half type) over all programs of the layer (``memnets.kernels.mlp_memory.launch.checkpoint_chunks``;
  the gated delta kernel keeps every chunk's state).
* **Estimated** (the roofline model below): TFLOP/s and % of the H100 bf16 dense peak (989.4).

The roofline model (constants and step times in ``benchmarks/kernel_roofline.py``):

* Model FLOP: ``benchmarks.flops`` (``mlp_memory_fwd`` per memory, ``gated_delta_fwd``); fwd+bwd =
  ``BWD_FACTOR`` (3.5) × fwd. ParaRNN has no formula (n/a).
* A kernel launch takes ``waves × steps × step`` where waves = ⌈programs / 132⌉ (one program per SM
  at a time: 255 registers × 128 threads and the shared memory leave no room for a second that would
  help) and one step is the largest of
  - *compute*: Σ over instruction kinds of the step's tensor FLOP (padded shapes, replicated products
    counted as often as they are computed) / (achievable rate / 132). Achievable rates: wgmma 75% and
    mma.sync 50% of the datasheet peak of the operand type (bf16/fp16 989.4, tf32 494.7); tf32x3
    costs three tf32 products.
  - *latency*: the step's matmuls in a dependent chain, 0.1 µs each (issue to use, operands staged
    through shared memory).
  - *spills*: every spilled byte stored and loaded once per inner iteration, at 200 GB/s per SM while
    the spill footprint (stack × threads) and shared memory fit the 256 KB L1, else at the L2's
    5.5 TB/s shared by the busy SMs (min(programs, 132)). A lower bound on spill traffic (real kernels
    reload spilled values more than once), but spills usually decide the estimate.
  - *state*: the recurrent state the step moves through global memory at the L2's share of the busy
    SMs (plus the spills, where they are in L2 too): the MLP-memory kernels' stored tile states, and
    the wide kernels' state blocks, read and written once per chunk per pass (the counts of
    ``memnets.kernels.mlp_memory.wide_forward``'s docstring: 12 / 16 / 28 D·Dh floats per chunk for
    the forward / its STORE re-run / the backward with momentum, 7 / 9 / 18 without; the chunk-start
    states the STORE re-run writes and the split backward and its reads' launch read at their
    kept type, half with bf16 operands; the one-program backward's reads of them counted as float32,
    a bound). The q, k, v rows and the gated delta kernels' chunk states are not counted.
  - *exposed*: the step's latency when nothing hides it, from the SASS (``cuobjdump -sass``): the
    instructions one step issues per warp, its loops weighted by the TTGIR's trip counts
    (``benchmarks.compiled_asm.sass_per_step``), each at ≥ 1 cycle, plus per global load 260 cycles
    (L2), per local load 33 (L1; 260 when the spills outgrow it), per shared load 30, per barrier 20, at
    1.755 GHz, divided by the warps each of the SM's 4 schedulers holds (1 at 4 warps). The term the
    first GPU run called for (RESULTS §26: the titans-760m forward took 30× the other terms' estimate).
  The JSON's ``step_us`` gives the five terms per launch, so a design without spills can be read off.
  The forward estimate is the forward launch; fwd+bwd adds the backward's forward re-run (``STORE``,
  its steps as the launcher's checkpoint plan walks them: twice over most chunks where the wide
  kernels recompute in three levels) and the backward launch. Element-wise work (LayerNorm, activations, gates) and the coefficient
  preparation in PyTorch are not modelled (optimistic).
* The eager chunked form (float32): per chunk the larger of its ops × 20 µs (Python dispatch + launch
  of latency-bound small kernels, measured on an H200: RESULTS §26) and its matmul FLOP at 70% of the float32 CUDA-core peak (66.9; with
  TF32 allowed the matmul term shrinks, but at these chunk sizes the launch floor decides).
* The compiled chunked path (``memnets.compiled``, what ``auto`` runs on CUDA where no kernel
  applies): ops / 3 (fusion, a guess) × 4 µs (inductor's launches without CUDA graphs) or bf16 at 30%
  of peak (small batched matmuls), whichever is larger.

Not modelled: occupancy above one program per SM, HBM traffic (the wide kernels' states, about 150-600
KB per (sequence, head) at the flagships, are assumed to stay in the 50 MB L2), the projections and the
rest of the layer. The numbers rank designs; they are not timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import kernel_budget, kernel_roofline  # noqa: E402
from benchmarks import kernel_report as kr  # noqa: E402

# the CI subset: one config per kernel family that auto runs (small and quick to compile) and two
# flagships on the chunked path (their launch counts)
QUICK = (
    "titans-tiny",
    "memora-tiny",
    "gated_deltanet-tiny",
    "paragru-tiny",
    "titans-760m",
    "omeganet-760m",
    "atlas-760m",
)
# the quick report's configs whose explicit kernels it compiles too: the wide-state kernels at
# titans-760m and with OmegaNet's 2,144-wide feature keys and window, and the Muon kernels at Atlas's,
# so that their budgets (spills, replicated-warp products) hold in CI
QUICK_EXPLICIT = ("titans-760m", "omeganet-760m", "atlas-760m")
FLAGSHIPS = (
    "titans-760m",
    "titans-mac-760m",
    "titans-mag-760m",
    "titans-mal-760m",
    "yaad-760m",
    "moneta-760m",
    "tnt-150m",
    "titans-mac-170m",
    "omeganet-760m",
    "atlas-760m",
)


def config_paths(names: list[str] | None, quick: bool, flagships: bool) -> list[Path]:
    folder = ROOT / "configs" / "lm"
    if quick:
        names = list(QUICK)
    elif flagships:
        names = list(FLAGSHIPS)
    if not names:
        return sorted(p for p in folder.glob("*.yaml") if not p.stem.startswith("_"))
    paths = []
    for name in names:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.yaml"))
            raise SystemExit(f"--configs: {name!r} is not a config in configs/lm/ (known: {known})")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"only {', '.join(QUICK)}, explicit kernels of {', '.join(QUICK_EXPLICIT)} only (CI)",
    )
    p.add_argument("--flagships", action="store_true", help="only the flagship configs (RESULTS.md)")
    p.add_argument("--configs", nargs="+", help="config names in configs/lm/ (default: all)")
    p.add_argument("--batch", type=int, default=4, help="micro-batch sequences (default 4)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence (default 4096)")
    p.add_argument("--arch", type=int, default=90, help="compute capability of the compile (default 90)")
    p.add_argument("--chunk-size", type=int, help="every memory at this chunk size instead of the config's")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, as train.py's arguments (repeatable), e.g. "
        "model.mixer_options.moneta.normalize_at=chunk_end",
    )
    p.add_argument(
        "--wide-num-warps",
        type=int,
        help="warps of every wide-state kernel program instead of config.wide_num_warps' choice "
        "(what the GPU check's 4-warp benchmark row runs)",
    )
    p.add_argument("--no-explicit", action="store_true", help="leave out kernels auto does not pick")
    p.add_argument(
        "--out", default="kernel_report", help="writes OUT.json and OUT.md (default kernel_report)"
    )
    p.add_argument("--budget", help="fail (exit 1) where the report is worse than this budget file")
    p.add_argument("--write-budget", help="write today's figures as a budget file here")
    a = p.parse_args(argv)
    problem = kr.ck.environment_problem()
    if problem:
        print(f"cannot compile: {problem}", file=sys.stderr)
        return 2
    if a.wide_num_warps is not None:
        from memnets.kernels.mlp_memory import config as mlp_config

        mlp_config.WIDE_NUM_WARPS = a.wide_num_warps
    start = time.perf_counter()
    rows = []
    for path in config_paths(a.configs, a.quick, a.flagships):
        t0 = time.perf_counter()
        explicit = not a.no_explicit and (not a.quick or path.stem in QUICK_EXPLICIT)
        got = kr.report_config(path, a.batch, a.seq, a.arch, explicit, a.chunk_size, a.set)
        rows += got
        paths = ", ".join(f"{r['dispatch']}: {r['auto_cuda']}" for r in got) or "no memory dispatch"
        print(f"{path.stem}: {paths} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    table = kr.markdown(rows, a.batch, a.seq)
    print(table)
    failed = [
        f"{r['config']} {r['dispatch']} {ln['role']}: {ln['status']}"
        for r in rows
        for ln in (r.get("kernel") or {}).get("launches", [])
        if ln["status"] != "ok"
    ]
    meta = {
        "triton": kr.triton.__version__,
        "arch": a.arch,
        "batch": a.batch,
        "seq": a.seq,
        "chunk_size": a.chunk_size,
        "overrides": a.set,
        "wide_num_warps": a.wide_num_warps,
        "sms": kernel_roofline.SMS,
        "peak_bf16": kernel_roofline.PEAK_BF16,
        "rates_tflops": kernel_roofline.RATES,
        "seconds": round(time.perf_counter() - start, 1),
        "failed": failed,
    }
    # --out names the files' stem, whose folder may not exist yet
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    Path(f"{a.out}.md").write_text(table)
    print(f"wrote {a.out}.json and {a.out}.md ({meta['seconds']} s)", file=sys.stderr)
    for line in failed:
        print(f"compile failed: {line}", file=sys.stderr)
    if a.write_budget:
        note = (
            f"Budgets of `python scripts/kernel_report.py{' --quick' if a.quick else ''}`: today's measured "
            f"figures (Triton {kr.triton.__version__}, sm_{a.arch}), not targets. tests/test_kernel_report.py "
            "fails where a change makes one worse (more spill bytes per thread, wider tensor-core operands, "
            "more replicated-warp products, more exposed latency per step, fewer programs, more eager ops per chunk, "
            "a failed compile); lower them when a change improves "
            "them (rerun with --write-budget)."
        )
        budget = {"note": note, "entries": kernel_budget.budget_entries(rows)}
        Path(a.write_budget).write_text(json.dumps(budget, indent=1) + "\n")
        print(f"wrote {a.write_budget}", file=sys.stderr)
    problems = []
    if a.budget:
        problems = kernel_budget.regressions(rows, json.loads(Path(a.budget).read_text())["entries"])
        for line in problems:
            print(f"regression: {line}", file=sys.stderr)
        print(f"budget {a.budget}: {len(problems)} regressions", file=sys.stderr)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
