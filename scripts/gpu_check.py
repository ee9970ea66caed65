"""One GPU check: correctness of the kernels compiled on the GPU, the kernel benchmark beside its peers,
and one training step of every config family, in one report. Made to finish in about 9 minutes on one
H100/H200 (each step has a time limit; a step over it is reported as failed with the reason), so it fits
one device call of a 15-minute lease.

    bash scripts/gpu_check.sh                     # on a GPU machine; prints the report folder
    bash scripts/gpu_check.sh --cpu-smoke         # the same steps at tiny shapes on CPU (CI, ~1 min)
    python scripts/gpu_check.py --out runs/gpu_check --steps kernels --every-case

Steps, in this order (each in its own subprocess, so a crash or an interpreter setting cannot leak into
the next):

* ``kernels`` (a): the kernel test files that opt into the ``kernel_device`` fixture (``tests/conftest.py``)
  run with ``MEMNETS_KERNEL_TEST_DEVICE=cuda`` and ``TRITON_INTERPRET=0`` (compiled kernels; their
  float32/tf32 tests, and the bfloat16 operand test that runs only on a GPU), spread over the CPU
  cores by pytest-xdist: compiling is most of the time. By default each parametrized test runs its
  first and last case (``MEMNETS_KERNEL_TESTS=quick``; the first 2026-12-04 run compiled 84 of the 342
  cases in 170 s); ``--every-case`` runs them all. The report names every failed test, also when the
  step's time limit cut the run. ``--cpu-smoke``: one interpreted test.
* ``bench`` (b): ``scripts/bench_titans_kernels.py`` at titans-760m's memory shapes (16 heads of 96,
  hidden 384) and the static kernel report's micro-batch, 4 × 4096 tokens; chunk 16 and 64, each with
  its own time limit; the Triton kernel first, its operands as the mixers run them (bf16), with its
  kernels' own device time beside the call's and, per kernel, beside the static report's estimate
  (``benchmarks.kernel_calibration``); then eager chunked, titans-pytorch when it imports, and the compiled chunked form last (inductor's
  build is timed as ``compile_s``); TFLOP/s, % of an 8192³ bf16 GEMM timed in the same run, peak
  memory; then the kernel alone at chunk 16 in its previous layout (4 warps per wide-state program,
  against the 8 it now runs: the static report's exposed-latency term chose them, this row checks it).
  Rows are kept as they finish: a time limit loses only the rows it cut.
* ``peers`` (c): SDPA (causal, titans-760m heads) and fla's ``chunk_gated_delta_rule``
  (gated_deltanet-1.3b heads) when it imports, with the same figures.
* ``train`` (d): for every config family in ``configs/lm/`` (a config's name without its size: the
  largest config of the family; ``--cpu-smoke``: its tiny config, or where it has none, the config cut
  to 2 heads of its head width), the model at 2 layers and the real widths, ``backend: auto``, one
  AdamW step under bf16 autocast on 1 × ``--train-seq`` tokens (capped at the config's context), in
  ``TRAIN_WORKERS`` processes at once: the loss must be finite; the path each memory ran is read from
  its dispatches (``MemoryDispatch.backend``), with the reason where no kernel ran; the family's own
  peak memory. Where ``auto`` runs the compiled chunked form, its steps are captured with dynamo's
  ``aot_eager`` backend here (the same graphs under bf16 autocast on the GPU, without inductor's
  minutes of code generation per family); ``bench`` times the inductor build at titans-760m's shapes.
* Each step has a time limit (``LIMITS_S``, 8.5 minutes together on a GPU; ``--limit-scale`` stretches
  them); a step over it is failed with that reason, and the report keeps what the others found.
* The report: ``report.json`` and ``report.md`` in the folder printed at the end. Every step is
  ``passed``, ``failed`` (with the reason and the log's tail) or ``skipped`` (with the reason: no
  internet is needed; a missing extra is a skip). Exit code 1 if a step failed. Packages carried as
  wheels (titans-pytorch, fla) are found through ``PYTHONPATH``, which every step keeps.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_report import markdown  # noqa: E402

KERNEL_TESTS = (
    "test_mlp_memory.py",
    "test_mlp_memory_wide.py",
    "test_mlp_memory_wide_keys.py",
    "test_muon_kernel.py",
    "test_token_muon_kernel.py",
    "test_moneta_kernel.py",
    "test_memora_kernel.py",
    "test_linear_memory.py",
    "test_gated_delta.py",
    "test_scan_triton.py",
)
SMOKE_TESTS = ("tests/test_mlp_memory.py::test_residual_memory",)
# titans-760m's memory: 16 heads of 96, hidden 4 x 96; gated_deltanet-1.3b: 16 heads of 128
TITANS = {"H": 16, "D": 96}
GDN = {"H": 16, "K": 128}
# seconds per step on a GPU machine: 8.5 minutes together (--limit-scale stretches them)
LIMITS_S = {"kernels": 210, "bench": 180, "peers": 20, "train": 100}
TRAIN_WORKERS = 4
# run in this order: the measurements the issues ask for first, so a short lease still gets them
STEPS = ("kernels", "bench", "peers", "train")
SMOKE_LIMIT_S = 300  # per step on a (possibly shared) CPU
LIMIT_SCALE = [1.0]  # set from --limit-scale


def limit(smoke: bool, step: str) -> float:
    return LIMIT_SCALE[0] * (SMOKE_LIMIT_S if smoke else LIMITS_S[step])


def _tail(text: str, n: int = 2500) -> str:
    return text[-n:]


def run_parallel(
    cmds: list[list[str]], env: dict[str, str], limit: float, logs: list[Path]
) -> list[int | None]:
    """Run ``cmds`` at once, each in its own process group with its output in its log file; each one's
    exit code, or None for those still running at the shared time limit, killed with their whole
    group (pytest-xdist's workers would otherwise go on compiling beside the next step)."""
    procs = []
    for cmd, log in zip(cmds, logs):
        with log.open("w") as f:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
    deadline = time.monotonic() + limit
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            codes.append(None)
    return codes


def run_subprocess(cmd: list[str], env: dict[str, str], limit: float, log: Path) -> tuple[int | None, str]:
    """:func:`run_parallel` of one command: (exit code or None on timeout, its output, also in ``log``)."""
    code = run_parallel([cmd], env, limit, [log])[0]
    return code, log.read_text()


def _env(smoke: bool) -> dict[str, str]:
    # the repo first, then whatever the caller put on the path (packages carried as wheels: titans-pytorch, fla)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if smoke:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.update(TRITON_INTERPRET="0", MEMNETS_KERNEL_TEST_DEVICE="cuda")
    return env


# ---------------------------------------------------------------------------------------------------
# (a) kernel tests


def step_kernels(smoke: bool, out: Path, every_case: bool = False) -> dict[str, Any]:
    tests = ROOT / "tests"
    present = [f for f in KERNEL_TESTS if (tests / f).exists()]
    # a file opts in with the conftest fixture that puts its tensors on MEMNETS_KERNEL_TEST_DEVICE
    on_gpu = [f for f in present if '"kernel_device"' in (tests / f).read_text()]
    skipped = {
        f: "does not read MEMNETS_KERNEL_TEST_DEVICE (its kernels run only interpreted on CPU)"
        for f in present
        if f not in on_gpu
    }
    targets = list(SMOKE_TESTS) if smoke else [f"tests/{f}" for f in on_gpu]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:benchmark", "-rfEs", *targets]
    # -v names each test as it ends, so a run cut by the step's time limit still says which passed and
    # which failed (the reasons come at the end: --tb=line keeps them short)
    cmd += ["-q"] if smoke else ["-v", "--tb=line"]
    if not smoke and importlib.util.find_spec("xdist") is not None:
        # kernel compiles are single-threaded: pytest-xdist spreads them over cores
        cmd += ["-n", str(min(16, os.cpu_count() or 8))]
    env = _env(smoke)
    if not smoke and not every_case:
        env["MEMNETS_KERNEL_TESTS"] = "quick"  # tests/conftest.py: each test's first and last case
    start = time.perf_counter()
    code, log = run_subprocess(cmd, env, limit(smoke, "kernels"), out / "kernels.log")
    summary = next(
        (ln for ln in reversed(log.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)), ""
    )
    ended = re.findall(r"(PASSED|FAILED|ERROR|SKIPPED) (tests/\S+)", log)
    result = {
        "command": " ".join(cmd),
        "cases": "every case"
        if every_case or smoke
        else "first and last case of each test (MEMNETS_KERNEL_TESTS=quick)",
        "ended": {k: sum(1 for s, _ in ended if s == k) for k in ("PASSED", "FAILED", "ERROR", "SKIPPED")},
        "failed_tests": sorted({t for s, t in ended if s in ("FAILED", "ERROR")}),
        "files_not_run": skipped,
        "summary": summary.strip("= "),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if code is None:
        return {
            **result,
            "status": "failed",
            "reason": f"over its {limit(smoke, 'kernels')} s limit",
            "log_tail": _tail(log),
        }
    if code != 0:
        return {**result, "status": "failed", "reason": f"pytest exit code {code}", "log_tail": _tail(log)}
    return {**result, "status": "passed"}


# ---------------------------------------------------------------------------------------------------
# (b) one training step per config family


def families(smoke: bool) -> dict[str, Path]:
    """family (the config's distinct mixers) -> the config that stands for it: its widest (d_model,
    then heads), or its narrowest in the smoke run."""
    from memnets.config import load_yaml, model_config_from_dict

    found: dict[str, list[tuple[tuple[int, int], Path]]] = {}
    for path in sorted((ROOT / "configs" / "lm").glob("*.yaml")):
        if path.stem.startswith("_"):
            continue
        cfg = model_config_from_dict(load_yaml(path).get("model", {}))
        family = "+".join(dict.fromkeys(cfg.layer_mixers()))
        found.setdefault(family, []).append(((cfg.d_model, cfg.num_heads), path))
    pick = min if smoke else max
    return {family: pick(sized)[1] for family, sized in sorted(found.items())}


def train_one(path: Path, device: str, seq: int, layers: int, heads: int | None = None) -> dict[str, Any]:
    """One AdamW step of the config's model at ``layers`` layers under bf16 autocast, backend auto;
    with ``heads``, at most that many heads of the config's width (``d_model`` shrinks with them, so the
    memories keep their head shapes and dispatch as the full model's do)."""
    import torch

    from benchmarks.config_mixers import dispatches
    from memnets.config import load_yaml, model_config_from_dict
    from memnets.model import LM

    data = load_yaml(path)
    model_cfg = data.get("model", {})
    model_cfg["n_layers"] = min(layers, model_cfg.get("n_layers", layers))
    if heads is not None and model_cfg.get("num_heads", heads) > heads:
        model_cfg["d_model"] = model_cfg["d_model"] // model_cfg["num_heads"] * heads
        model_cfg["num_heads"] = heads
    model_cfg.setdefault("vocab_size", 32000)
    cfg = model_config_from_dict(model_cfg)
    context = data.get("data", {}).get("seq_len", seq)
    T = min(seq, context)
    dev = torch.device(device)
    if dev.type == "cuda":  # this family's peak, not the worker's so far
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(0)
    model = LM(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, cfg.vocab_size, (1, T + 1), device=dev)
    start = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    paths = {}
    for i, block in enumerate(model.blocks):
        for attr, d, _ in dispatches(block.mixer):
            backend = getattr(block.mixer, "backend", "auto")
            chosen = d.backend(backend, dev)
            key = f"{block.mixer_name} {d.part or attr}"
            why = d.no_kernel("auto") if chosen != "triton" else None
            paths.setdefault(key, {"layers": [], "path": chosen, "why_no_kernel": why})["layers"].append(i)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    finite = bool(torch.isfinite(loss).item())
    return {
        "config": path.stem,
        "layers": cfg.n_layers,
        "tokens": T,
        "loss": float(loss.item()),
        "finite": finite,
        "paths": paths or {"(no memory dispatch)": {"path": "attention / dense", "layers": []}},
        "seconds": round(time.perf_counter() - start, 2),
        "peak_mb": peak,
    }


def step_train(smoke: bool, out: Path, device: str, seq: int) -> dict[str, Any]:
    """The families in ``TRAIN_WORKERS`` processes at once (a family's first step is mostly compiling, on
    the CPU; the GPU has room for several 2-layer models)."""
    workers = 1 if smoke else TRAIN_WORKERS
    base = [sys.executable, str(Path(__file__)), "--worker", "train", "--device", device]
    base += ["--train-seq", str(seq), "--out", str(out)] + (["--cpu-smoke"] if smoke else [])
    cmds = [[*base, "--shard", f"{i}/{workers}"] for i in range(workers)]
    logs = [out / f"train-{i}.log" for i in range(workers)]
    start = time.perf_counter()
    env = {**_env(smoke), "MEMNETS_COMPILE_BACKEND": "aot_eager"}  # module docstring, step (b)
    codes = run_parallel(cmds, env, limit(smoke, "train"), logs)
    rows = []
    for i in range(workers):
        shard = out / f"train-{i}.json"
        rows += json.loads(shard.read_text()) if shard.exists() else []
    rows.sort(key=lambda r: r["family"])
    (out / "train.json").write_text(json.dumps(rows, indent=1))
    log = "".join(f"--- worker {i}\n" + logs[i].read_text() for i in range(workers))
    result = {"rows": rows, "seconds": round(time.perf_counter() - start, 1)}
    missing = sorted(set(families(smoke)) - {r["family"] for r in rows})
    if None in codes:
        why = f"over its {limit(smoke, 'train')} s limit; not reached: {', '.join(missing) or '-'}"
        return {**result, "status": "failed", "reason": why, "log_tail": _tail(log)}
    bad = [
        r["config"] + ": " + r.get("error", f"loss {r.get('loss')}")
        for r in rows
        if "error" in r or not r.get("finite")
    ]
    if any(codes) or bad:
        why = "; ".join(bad) or f"exit codes {codes}"
        return {**result, "status": "failed", "reason": why, "log_tail": _tail(log)}
    return {**result, "status": "passed"}


def worker_train(a: argparse.Namespace) -> int:
    index, count = (int(x) for x in a.shard.split("/"))
    rows = []
    for family, path in list(families(a.cpu_smoke).items())[index::count]:
        try:
            # the families without a tiny config are 760M-wide: 16 heads cost the smoke run minutes
            heads = 2 if a.cpu_smoke else None
            rows.append({"family": family, **train_one(path, a.device, a.train_seq, 2, heads)})
        except Exception as e:  # one family's failure is reported, the others still run
            rows.append({"family": family, "config": path.stem, "error": f"{type(e).__name__}: {e}"[:500]})
        print(json.dumps(rows[-1]), flush=True)
        Path(a.out, f"train-{index}.json").write_text(json.dumps(rows, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------
# (c) the kernel benchmark and its peers


def step_bench(smoke: bool, out: Path, device: str) -> dict[str, Any]:
    """The benchmark once per chunk size, then the kernel alone in its previous layout (one warpgroup
    per wide-state program: ``memnets.kernels.mlp_memory.config.wide_num_warps`` says why two), each
    run with its share of the step's limit (a slow compile in one keeps the others' rows)."""
    script = ROOT / "scripts" / "bench_titans_kernels.py"
    base = [sys.executable, str(script), "--device", device, "--depth", "2", "--titans-pytorch", "--fast"]
    if smoke:  # tiny shapes, the kernel in the interpreter, no torch.compile
        base += ["--B", "1", "--T", "32", "--H", "2", "--D", "16", "--no-compile", "--triton"]
        runs = [("c16", ["--chunk-sizes", "16"], 1.0)]
    else:  # titans-760m's memory (16 heads of 96, hidden 384) at the static report's micro-batch, 4 x 4096
        base += ["--B", "4", "--T", "4096", "--H", str(TITANS["H"]), "--D", str(TITANS["D"])]
        runs = [
            ("c16", ["--chunk-sizes", "16"], 0.45),
            ("c64", ["--chunk-sizes", "64"], 0.3),
            ("c16_4warps", ["--chunk-sizes", "16", "--kernel-only", "--num-warps", "4"], 0.25),
        ]
    start = time.perf_counter()
    rows, notes, problems, commands, meta = [], [], [], [], None
    for label, args, share in runs:
        json_out = out / f"bench_titans_kernels_{label}.json"
        cmd = [*base, *args, "--out", str(json_out)]
        commands.append(" ".join(cmd))
        seconds = share * limit(smoke, "bench")
        code, log = run_subprocess(cmd, _env(smoke), seconds, out / f"bench_{label}.log")
        notes += [ln.strip() for ln in log.splitlines() if ln.startswith("note:") and ln.strip() not in notes]
        if code is None:
            problems.append(f"{label}: over its {seconds:.0f} s limit")
        elif code != 0:
            problems.append(f"{label}: exit code {code}: {_tail(log, 600)}")
        if json_out.exists():  # written after every row: a cut run keeps the rows it timed
            bench = json.loads(json_out.read_text())
            warps = bench["meta"].get("num_warps")
            rows += [
                {**r, "backend": f"{r['backend']} ({warps} warps)"} if warps else r for r in bench["rows"]
            ]
            meta = meta or bench["meta"]
    result = {"commands": commands, "notes": notes, "rows": rows, "meta": meta}
    result["seconds"] = round(time.perf_counter() - start, 1)
    if problems:
        return {**result, "status": "failed", "reason": "; ".join(problems)}
    return {**result, "status": "passed"}


def peer_rows(device_name: str, smoke: bool, save: Callable[[list], None]) -> list[dict[str, Any]]:
    """SDPA and fla's chunk_gated_delta_rule, forward and forward + backward, bf16 on CUDA; ``save``
    gets the rows after each one (fla's first call autotunes for a while: a time limit keeps SDPA's)."""
    import torch
    import torch.nn.functional as F

    from benchmarks.flops import BWD_FACTOR, attention_fwd, gated_delta_fwd
    from benchmarks.timing import Budget, bench, gemm_ceiling_tflops, peak_memory_mb

    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    B, T = (1, 64) if smoke else (1, 4096)
    gemm = gemm_ceiling_tflops(device, torch.bfloat16)
    rows: list[dict[str, Any]] = []

    def time_it(name: str, fn, flop: float, leaves: list) -> None:
        for kind, backward in (("fwd", False), ("fwd+bwd", True)):

            def call(backward: bool = backward) -> None:
                if backward:
                    y = fn()
                    y.float().sum().backward()
                else:
                    with torch.no_grad():
                        fn()

            call()
            t = bench(call, device, Budget.fast(), grad_to_none=leaves)
            f = BWD_FACTOR * flop if backward else flop
            tf = f / (t.median_ms / 1e3) / 1e12
            rows.append(
                {
                    "backend": name,
                    "pass": kind,
                    "ms": t.median_ms,
                    "tflops": tf,
                    "pct_gemm_bf16": None if gemm is None else 100 * tf / gemm,
                    "peak_mb": peak_memory_mb(call, device),
                }
            )
            save(rows)

    H, D = (2, 16) if smoke else (TITANS["H"], TITANS["D"])
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    time_it(
        "sdpa",
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        attention_fwd(B, T, H, D),
        [q, k, v],
    )
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # an optional peer: absent or broken installs are a skip
        rows.append(
            {
                "backend": "fla chunk_gated_delta_rule",
                "skipped": f"does not import ({type(e).__name__}: {e})"[:300],
            }
        )
        return rows
    if device.type != "cuda":
        rows.append({"backend": "fla chunk_gated_delta_rule", "skipped": "needs a CUDA device"})
        return rows
    H, K = GDN["H"], GDN["K"]
    qk = [
        F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).to(dtype).requires_grad_()
        for _ in range(2)
    ]
    vv = torch.randn(B, T, H, K, device=device, dtype=dtype, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H, device=device)).requires_grad_()
    beta = torch.rand(B, T, H, device=device, dtype=dtype).requires_grad_()
    time_it(
        "fla chunk_gated_delta_rule",
        lambda: chunk_gated_delta_rule(qk[0], qk[1], vv, g, beta)[0],
        gated_delta_fwd(B, T, H, K, K, 64),
        [*qk, vv, g, beta],
    )
    return rows


def step_peers(smoke: bool, out: Path, device: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__)), "--worker", "peers", "--device", device, "--out", str(out)]
    if smoke:
        cmd.append("--cpu-smoke")
    start = time.perf_counter()
    code, log = run_subprocess(cmd, _env(smoke), limit(smoke, "peers"), out / "peers.log")
    rows = json.loads((out / "peers.json").read_text()) if (out / "peers.json").exists() else []
    result = {"rows": rows, "seconds": round(time.perf_counter() - start, 1)}
    if code is None or code != 0:
        why = f"over its {limit(smoke, 'peers')} s limit" if code is None else f"exit code {code}"
        return {**result, "status": "failed", "reason": why, "log_tail": _tail(log)}
    return {**result, "status": "passed"}


def worker_peers(a: argparse.Namespace) -> int:
    def save(rows: list) -> None:
        Path(a.out, "peers.json").write_text(json.dumps(rows, indent=1))

    save(peer_rows(a.device, a.cpu_smoke, save))
    return 0


# ---------------------------------------------------------------------------------------------------
# (d) the report


def _driver() -> str | None:
    try:
        p = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny shapes on CPU, kernels in Triton's interpreter"
    )
    p.add_argument("--out", help="report folder (default runs/gpu_check-<UTC time>)")
    p.add_argument(
        "--steps",
        nargs="+",
        default=list(STEPS),
        choices=list(STEPS),
    )
    p.add_argument("--device", help="default cuda (cpu with --cpu-smoke)")
    p.add_argument(
        "--train-seq", type=int, default=2048, help="tokens of the training step (default 2048; smoke 64)"
    )
    p.add_argument("--worker", choices=["train", "peers"], help=argparse.SUPPRESS)
    p.add_argument(
        "--every-case",
        action="store_true",
        help="kernels: every parametrized case (default: each test's first and last case)",
    )
    p.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)  # train worker: families i::n
    p.add_argument("--limit-scale", type=float, default=1.0, help="multiply every step's time limit")
    a = p.parse_args(argv)
    LIMIT_SCALE[0] = a.limit_scale
    a.device = a.device or ("cpu" if a.cpu_smoke else "cuda")
    if a.cpu_smoke and a.train_seq == 2048:
        a.train_seq = 64
    if a.worker:
        return {"train": worker_train, "peers": worker_peers}[a.worker](a)
    import torch

    from benchmarks.env import environment

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or use --cpu-smoke", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(a.out or ROOT / "runs" / f"gpu_check-{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runners = {
        "kernels": lambda: step_kernels(a.cpu_smoke, out, a.every_case),
        "train": lambda: step_train(a.cpu_smoke, out, a.device, a.train_seq),
        "bench": lambda: step_bench(a.cpu_smoke, out, a.device),
        "peers": lambda: step_peers(a.cpu_smoke, out, a.device),
    }
    steps: dict[str, Any] = {}
    for name in STEPS:
        if name not in a.steps:
            steps[name] = {"status": "skipped", "reason": "not asked for (--steps)"}
            continue
        steps[name] = runners[name]()
        print(
            f"{name}: {steps[name]['status']} {steps[name].get('reason', '')} ({steps[name].get('seconds')} s)",
            flush=True,
        )
    report = {
        "env": environment(torch.device(a.device)),
        "driver": _driver() if a.device.startswith("cuda") else None,
        "cpu_smoke": a.cpu_smoke,
        "seconds": round(time.perf_counter() - start, 1),
        "steps": steps,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report, ROOT, TITANS)
    (out / "report.md").write_text(text)
    print(text)
    print(f"report: {out}")
    return 1 if any(s["status"] == "failed" for s in steps.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
