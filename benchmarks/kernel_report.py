"""What ``backend="auto"`` runs on an H100 for each LM config, and what its sm_90 compile looks like:
the library behind ``scripts/kernel_report.py`` (its docstring holds the roofline model).

For every mixer of a config (built once per distinct mixer on the meta device, at the real widths and
head shapes) the report walks the :class:`memnets.dispatch.MemoryDispatch` objects the mixer holds,
asks each which backend ``auto`` picks on a CUDA device and why, and then

* for a Triton kernel: the launches of one layer at the micro-batch
  (:func:`benchmarks.kernel_launches.kernel_launches`), each
  compiled for sm_90 with ``scripts/check_kernels_compile.py``'s machinery (its ``Case`` records and
  ``compile_case``; the compiled kernel's PTX and TTGIR are read by
  :func:`benchmarks.compiled_asm.tensor_cores`);
* for the chunked PyTorch form: the kernel launches (ATen ops) per chunk, counted on CPU at small
  shapes (:func:`count_launches`).

Where ``auto`` does not pick a kernel but ``backend="triton"`` has one (the wide-state MLP kernels
while ``WIDE_IN_AUTO`` is off), that kernel is reported too, marked ``explicit``: what the kernels
would do there once allowed.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import check_kernels_compile as ck  # noqa: E402
import triton  # noqa: E402

from benchmarks.compiled_asm import sass_per_step, tensor_cores  # noqa: E402
from benchmarks.config_mixers import build_meta, config_mixers, dispatches  # noqa: E402
from benchmarks.kernel_launches import MLP_OPS, Launch, ceil_div, kernel_launches  # noqa: E402
from benchmarks.kernel_roofline import LAUNCH_S, PEAK_BF16, SMS, chunked_seconds, estimate, step_seconds  # noqa: E402
from memnets import ops as memory_ops  # noqa: E402
from memnets.dispatch import MemoryDispatch  # noqa: E402
from memnets.registry import build_mixer  # noqa: E402

CUDA = torch.device("cuda")


# ---------------------------------------------------------------------------------------------------
# the sm_90 compile of one launch

_compiled: dict[str, dict[str, Any]] = {}


def compile_launch(case: ck.Case, arch: int = 90, inner: int = 1, step_loop: bool = True) -> dict[str, Any]:
    """``check_kernels_compile.compile_case``'s row (status, shared, registers, stack) and
    :func:`tensor_cores` of the compiled kernel (captured from ``triton.compile``); once per case.
    ``step_loop``: the kernel's outermost loops walk its steps (else a program is one step)."""
    key = repr((case, arch, inner, step_loop))
    if key not in _compiled:
        _compiled[key] = _compile(case, arch, inner, step_loop)
    return dict(_compiled[key])


def _compile(case: ck.Case, arch: int, inner: int, step_loop: bool) -> dict[str, Any]:
    compiled: list[Any] = []
    real = triton.compile

    def capture(*args: Any, **kwargs: Any) -> Any:
        compiled.append(real(*args, **kwargs))
        return compiled[-1]

    with mock.patch.object(triton, "compile", capture):
        row = ck.compile_case(case, arch)
    if compiled and row["status"] == "ok":
        asm = compiled[-1].asm
        row.update(tensor_cores(asm["ptx"], asm["ttgir"], inner, step_loop))
        sass = ck.cuobjdump(asm["cubin"], "-sass")
        row["sass_per_step"] = sass_per_step(sass, asm["ttgir"], inner, step_loop) if sass else None
    return row


# ---------------------------------------------------------------------------------------------------
# launches of the chunked PyTorch form


class _OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while active (views excepted)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view:  # views launch nothing on a GPU
            self.count += 1
        return func(*args, **(kwargs or {}))


# An eager chunk step issues the same ops whatever its length (its matmuls are batched), so chunks
# longer than COUNT_MAX_CHUNK are counted at that length: TNT's global memory (chunks of 2048 tokens
# would mean CPU runs over 6144 tokens with 768 local chunks).
COUNT_MAX_CHUNK = 64
COUNT_OPTIONS = {"tnt": {"global_chunk_size": COUNT_MAX_CHUNK}}


def count_launches(name: str, cfg: Any, attr: str, chunk: int, max_chunk: int) -> dict[str, float]:
    """ATen ops (≈ CUDA kernel launches of the eager form) per chunk of the dispatch ``attr``, forward
    and forward + backward of the whole mixer, counted on CPU at batch 1, the real widths and two
    lengths that differ by one chunk of the mixer's largest chunk size (ops outside the chunk loop
    cancel); the forward of the dispatch alone is counted where it is called, the backward is the
    mixer's (per chunk of ``chunk``: the chunk loop's share when a mixer has several memories).
    Chunks longer than ``COUNT_MAX_CHUNK`` are counted at that length (``COUNT_OPTIONS``)."""
    torch.manual_seed(0)
    options = {**cfg.mixer_options.get(name, {}), **COUNT_OPTIONS.get(name, {}), "backend": "chunked"}
    mixer = build_mixer(name, cfg.d_model, cfg.num_heads, **options)
    max_chunk = min(max_chunk, COUNT_MAX_CHUNK)
    chunk = min(chunk, max_chunk)
    counts = []
    for n in (2, 3):
        T = n * max_chunk
        x = torch.randn(1, T, cfg.d_model, requires_grad=True)
        fwd = _OpCounter()
        own = _OpCounter()
        target = _find(mixer, attr)
        with _counting_calls(target, own), fwd:
            y, _ = mixer(x)
        bwd = _OpCounter()
        with bwd:
            y.float().square().mean().backward()
        counts.append((own.count, fwd.count, bwd.count))
    steps = max_chunk / chunk
    (o2, f2, b2), (o3, f3, b3) = counts
    own, fwd, bwd = (o3 - o2) / steps, (f3 - f2) / steps, (b3 - b2) / steps
    return {
        "fwd_per_chunk": own,
        # the dispatch's own backward is not separable from the mixer's: its forward ops scaled by the
        # mixer's (fwd + bwd) / fwd (exact for a mixer with one memory)
        "fwd_bwd_per_chunk": own * (fwd + bwd) / fwd if fwd else own,
        "mixer_fwd_per_chunk": fwd,
        "mixer_bwd_per_chunk": bwd,
    }


def _find(mixer: Any, attr: str) -> MemoryDispatch:
    return next(d for a, d, _ in dispatches(mixer) if a == attr)


@contextlib.contextmanager
def _counting_calls(target: MemoryDispatch, counter: _OpCounter) -> Iterator[None]:
    """Counts the ops run inside ``target``'s calls only (``MemoryDispatch.__call__`` patched)."""
    real = MemoryDispatch.__call__

    def call(d: MemoryDispatch, *args: Any, **kwargs: Any) -> Any:
        if d is not target:
            return real(d, *args, **kwargs)
        with counter:
            return real(d, *args, **kwargs)

    with mock.patch.object(MemoryDispatch, "__call__", call):
        yield


def chunk_of(d: MemoryDispatch) -> int | None:
    return d.options.get("chunk_size")


def waves(programs: int) -> int:
    return math.ceil(programs / SMS)


# ---------------------------------------------------------------------------------------------------
# estimates (the model: benchmarks.kernel_roofline)


def launch_step(launch: Launch, row: dict[str, Any]) -> dict[str, float]:
    """The roofline terms of one step of the launch (:func:`benchmarks.kernel_roofline.step_seconds`)."""
    return step_seconds(row, launch.case.num_warps, launch.inner, launch.programs, launch.state_bytes)


def launch_seconds(launch: Launch, step: dict[str, float]) -> float:
    """The launch's time: its steps in order, its programs in waves of one per SM; where the steps are
    spread over several launches, each at least the host's cost of a Triton launch."""
    per_launch = waves(launch.programs) * launch.steps / launch.launches * step["step"]
    floor = LAUNCH_S["triton"] if launch.launches > 1 else 0.0
    return launch.launches * max(per_launch, floor)


def core_flop(owner: Any, d: MemoryDispatch, B: int, T: int) -> float | None:
    """Forward model FLOP of the dispatch's op over the micro-batch (``benchmarks.flops``)."""
    from benchmarks.flops import gated_delta_fwd, mlp_memory_fwd

    C = d.options.get("chunk_size")
    if d.op.name in MLP_OPS and d.arch is not None:
        D, hidden = d.arch.shapes[0]
        read_start = d.op is memory_ops.CHUNK_READ_MEMORY
        return mlp_memory_fwd(
            B, T, d.arch.num_heads, D, min(C, T), hidden / D, d.arch.depth, intra=not read_start
        )
    if d.op is memory_ops.GATED_DELTA:
        return gated_delta_fwd(B, T, owner.num_heads, owner.head_dim, owner.head_dim_v, C)
    return None


# ---------------------------------------------------------------------------------------------------
# the report


def _kernel_part(
    owner: Any, d: MemoryDispatch, B: int, T: int, flop: float | None, arch: int
) -> dict[str, Any]:
    launches, fwd_s, total_s = [], 0.0, 0.0
    for launch in kernel_launches(owner, d, B, T):
        row = compile_launch(launch.case, arch, launch.inner, launch.step_loop)
        step = launch_step(launch, row)
        seconds = launch_seconds(launch, step) if row["status"] == "ok" else 0.0
        total_s += seconds
        fwd_s += seconds if launch.role.startswith("fwd") and "store" not in launch.role else 0.0
        launches.append(
            {
                **row,
                "role": launch.role,
                "programs": launch.programs,
                "sms": SMS,
                "waves": waves(launch.programs),
                "steps": launch.steps,
                "inner": launch.inner,
                "num_warps": launch.case.num_warps,
                "step_us": {k: v * 1e6 for k, v in step.items()},
                "est_ms": seconds * 1e3,
                "states_mb": launch.states_mb,
            }
        )
    from benchmarks.flops import BWD_FACTOR

    return {
        "launches": launches,
        "bwd_states_mb": sum(ln["states_mb"] for ln in launches),
        "fwd": estimate(flop, fwd_s),
        "fwd_bwd": estimate(None if flop is None else BWD_FACTOR * flop, total_s),
    }


def report_config(
    path: Path,
    B: int = 4,
    T: int = 4096,
    arch: int = 90,
    explicit: bool = True,
    chunk_size: int | None = None,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per memory dispatch of each distinct mixer of the config (after ``overrides``) at a
    ``[B, T]`` micro-batch (at ``chunk_size`` instead of the config's, see :func:`config_mixers`)."""
    from benchmarks.flops import BWD_FACTOR

    rows = []
    for name, cfg in config_mixers(path, chunk_size, overrides):
        mixer = build_meta(name, cfg)
        found = list(dispatches(mixer))
        max_chunk = max((chunk_of(d) or 64) for _, d, _ in found) if found else 64
        for attr, d, owner in found:
            backend = d.backend(getattr(mixer, "backend", "auto"), CUDA)
            C = chunk_of(d)
            flop = core_flop(owner, d, B, T)
            row: dict[str, Any] = {
                "config": path.stem,
                "mixer": name,
                "dispatch": attr,
                "op": d.op.name,
                "part": d.part,
                "chunk_size": C,
                "auto_cuda": backend,
                "why_no_kernel": d.no_kernel("auto"),
                "kernel_for_triton": d.no_kernel("triton") is None and d.op.triton is not None,
                "fwd_flop": flop,
            }
            chunks = ceil_div(T, C) if C else 1
            if backend != "triton":
                counts = count_launches(name, cfg, attr, C or max_chunk, max_chunk)
                row["eager_launches_per_chunk"] = counts
                per_chunk = counts["fwd_bwd_per_chunk"]
                row["auto"] = {
                    "fwd": estimate(
                        flop, chunked_seconds(backend, counts["fwd_per_chunk"], chunks, flop or 0.0)
                    ),
                    "fwd_bwd": estimate(
                        None if flop is None else BWD_FACTOR * flop,
                        chunked_seconds(backend, per_chunk, chunks, BWD_FACTOR * (flop or 0.0)),
                    ),
                }
            if backend == "triton" or (explicit and row["kernel_for_triton"]):
                kernel = _kernel_part(owner, d, B, T, flop, arch)
                row["kernel"] = {"explicit": backend != "triton", **kernel}
                if backend == "triton":
                    row["auto"] = {"fwd": kernel["fwd"], "fwd_bwd": kernel["fwd_bwd"]}
            rows.append(row)
    return rows


def bound_by(step_us: dict[str, float]) -> str:
    """The roofline term that sets a launch's step (its largest)."""
    terms = {k: v for k, v in step_us.items() if k != "step"}
    return max(terms, key=terms.get) if terms else "-"


def _f(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _est(e: dict[str, Any] | None) -> str:
    if not e or e.get("tflops") is None:
        return "n/a"
    return f"{e['tflops']:.2f} ({e['pct_bf16']:.2f}%)"


def markdown(rows: list[dict[str, Any]], B: int, T: int) -> str:
    """Two tables: what ``auto`` runs per memory, and every kernel launch's compile."""
    out = [
        f"Micro-batch {B}x{T}, H100 (132 SMs, bf16 dense peak {PEAK_BF16} TFLOP/s); estimates from the "
        "model in scripts/kernel_report.py.",
        "",
        "| config | memory | C | auto on CUDA | why no kernel | eager ops/chunk fwd / fwd+bwd | est. auto fwd+bwd TFLOP/s (% bf16) | est. kernel fwd+bwd TFLOP/s (% bf16) | kernel bwd states MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        counts = r.get("eager_launches_per_chunk")
        ops = "-" if not counts else f"{counts['fwd_per_chunk']:.0f} / {counts['fwd_bwd_per_chunk']:.0f}"
        kernel = r.get("kernel")
        kest = (
            "no kernel"
            if not kernel
            else _est(kernel["fwd_bwd"]) + (" (explicit)" if kernel["explicit"] else "")
        )
        why = (r["why_no_kernel"] or "-").replace("|", "/")
        why = why if len(why) <= 90 else why[:87] + "..."
        memory = r["mixer"] + (f" {r['part']}" if r["part"] else "")
        out.append(
            f"| {r['config']} | {memory} | {r['chunk_size']} | {r['auto_cuda']} | {why} | {ops} | {_est(r.get('auto', {}).get('fwd_bwd'))} | {kest} | {_f(kernel and kernel['bwd_states_mb'], ',.0f')} |"
        )
    out += [
        "",
        "| config | memory | launch | programs / 132 SMs | steps | tensor-core instructions (static) | dots/step (replicated) | regs | spill B/thread | smem KB | est. ms | bound by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for ln in (r.get("kernel") or {}).get("launches", []):
            memory = r["mixer"] + (f" {r['part']}" if r["part"] else "")
            name = (
                ln["kernel"].split(".")[-1]
                + f" ({ln['role']})"
                + (" explicit" if r["kernel"]["explicit"] else "")
            )
            if ln["status"] != "ok":
                out.append(
                    f"| {r['config']} | {memory} | {name} | {ln['programs']} | {ln['steps']} | {ln['status']}: {ln.get('error', '')} | | | | | | |"
                )
                continue
            tc = f"{ln['mma_sync']} mma.sync + {ln['wgmma']} wgmma, {'/'.join(ln['operand_types']) or 'none'}"
            out.append(
                f"| {r['config']} | {memory} | {name} | {ln['programs']} | {ln['steps']} | {tc} | "
                f"{ln['dots_per_step']} ({ln['replicated_dots']}) | {ln['registers']} | {ln['stack']} | "
                f"{ln['shared'] / 1024:.0f} | {_f(ln['est_ms'] or None, '.2f')} | {bound_by(ln['step_us'])}"
                # the exposed term is 0 where the SASS's loops did not match the TTGIR's: say so
                + (" (exposed not counted: SASS loops unmatched)" if ln.get("sass_per_step") is None else "")
                + " |"
            )
    return "\n".join(out) + "\n"
