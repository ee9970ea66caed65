"""What ``backend="auto"`` runs on an H100 for each LM config, and what its sm_90 compile looks like:
the library behind ``scripts/kernel_report.py`` (its docstring holds the roofline model).

For every mixer of a config (built once per distinct mixer on the meta device, at the real widths and
head shapes) the report walks the :class:`memnets.dispatch.MemoryDispatch` objects the mixer holds,
asks each which backend ``auto`` picks on a CUDA device and why, and then

* for a Triton kernel: the launches of one layer at the micro-batch (:func:`kernel_launches`), each
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
import dataclasses
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
from benchmarks.kernel_roofline import LAUNCH_S, PEAK_BF16, SMS, chunked_seconds, estimate, step_seconds  # noqa: E402
from memnets import ops as memory_ops  # noqa: E402
from memnets.dispatch import MemoryDispatch  # noqa: E402
from memnets.registry import build_mixer  # noqa: E402

CUDA = torch.device("cuda")
AMP_DTYPE = torch.bfloat16  # what the trainer autocasts to on a GPU with bf16 (memnets.trainer)
MLP_OPS = {
    memory_ops.TITANS_MEMORY.name,
    memory_ops.MIRAS_MEMORY.name,
    memory_ops.OMEGA_MEMORY.name,
    memory_ops.CHUNK_READ_MEMORY.name,
    memory_ops.SHARDED_MEMORY.name,
}


@dataclasses.dataclass
class Launch:
    """One kernel launch of one layer: the compile case (constexprs as the launcher sets them), the
    grid's program count and the sequential steps (tiles or chunks) each program walks."""

    role: str  # "fwd", "fwd (store)", "bwd"
    case: ck.Case
    programs: int
    steps: int
    inner: int = 1  # trip count of the loops inside a step (the wide kernels' hidden blocks)
    states_mb: float = 0.0  # the recurrent states the backward keeps live at once (float32), all programs
    state_bytes: float = 0.0  # state each program reads and writes in global memory per step
    launches: int = 1  # kernel launches the steps are spread over (one per chunk: the split forward)
    step_loop: bool = True  # the kernel loops over its steps (else each launch or program is one step)


# ---------------------------------------------------------------------------------------------------
# configs, mixers, dispatches


# ---------------------------------------------------------------------------------------------------
# kernel launches of one layer


def _dot(d: MemoryDispatch) -> int:
    """The kernels' operand mode: the mixer's ``dot_precision``, ``"auto"`` resolved for the trainer's
    default on an H100 (``train.precision: auto`` autocasts to ``AMP_DTYPE``; no flagship config sets
    fp32)."""
    from memnets.kernels.precision import DOT_PRECISIONS, resolve_dot_precision

    return DOT_PRECISIONS[resolve_dot_precision(d.options.get("dot_precision", "auto"), AMP_DTYPE)]


def _lq_map_branch(retention: object) -> dict[str, int]:
    """The MLP kernels' Moneta branch for a Miras dispatch's retention (per token or at chunk ends,
    :mod:`memnets.kernels.mlp_memory.end_map`), none otherwise (Memora's softmax has its own
    kernels, :func:`_mlp_launches`)."""
    from memnets.kernels.mlp_memory.config import END_MAPS
    from memnets.memory.miras import ChunkEnd, LqNormalize

    if isinstance(retention, LqNormalize):
        return {"TOKEN_MAP": END_MAPS[retention.map]}
    if isinstance(retention, ChunkEnd) and isinstance(retention.retention, LqNormalize):
        return {"END_MAP": END_MAPS[retention.retention.map]}
    return {}


def _mlp_launches(mixer: Any, d: MemoryDispatch, B: int, T: int) -> list[Launch]:
    from memnets.kernels.mlp_memory import tile_layout
    from memnets.kernels.mlp_memory.config import ACTIVATIONS, BIAS_KINDS, split_constants, wide_split
    from memnets.kernels.mlp_memory.config import block as _block
    from memnets.kernels.mlp_memory.forward import backward_plan
    from memnets.kernels.mlp_memory.launch import checkpoint_chunks
    from memnets.kernels.mlp_memory.wide_reads import splits_reads
    from memnets.memory.kernel_bridge import _bias_spec, _net_spec
    from memnets.memory.miras import SimplexSoftmax

    spec = _net_spec(d.arch)
    D, DI, DH = spec.d_out, spec.d_in, spec.d_hidden  # DI > D: feature keys
    C = d.options["chunk_size"]
    window = d.options.get("window", 1)
    read_start = d.op is memory_ops.CHUNK_READ_MEMORY
    if d.op is memory_ops.SHARDED_MEMORY:  # whole shards fold into the batch (memnets.memory.sharded)
        shard = d.options.get("shard_size") or T
        B, T = B * -(-T // shard), min(T, shard)
    layout = tile_layout(spec, C, [T] * B, "cpu", window=window)
    L = layout.tile
    bias = _bias_spec(d.options.get("bias"))
    momentum = d.op in (
        memory_ops.TITANS_MEMORY,
        memory_ops.SHARDED_MEMORY,
        memory_ops.OMEGA_MEMORY,
    ) and bool(getattr(getattr(mixer, "gates", None), "momentum", False))
    H = d.arch.num_heads
    branches = {
        **_lq_map_branch(d.options.get("retention")),
        "ACT": ACTIVATIONS[spec.activation],
        "BIAS": BIAS_KINDS.index(bias.kind if bias else "l2"),
        "LN": spec.layer_norm,
        "RES": spec.residual,
        "HAS_MOM": momentum,
        "DOT": _dot(d),
        "H": H,
    }
    programs, steps = B * H, layout.max_tiles
    split = 1
    simplex = isinstance(d.options.get("retention"), SimplexSoftmax)
    if layout.wide and simplex:  # memnets.kernels.mlp_memory.wide_simplex: one program per (sequence, head)
        fwd, store, bwd = ck._wide_simplex_cases([(D, DH, L, (branches["DOT"],))], extra=False)
        branches |= {"LAG": bool(d.options.get("lag"))}
        inner = fwd.constexprs["NB"]
    elif layout.wide:
        fwd, store, bwd, split_fwd, read_bwd, reads = ck._mlp_wide_cases(
            [(D, DH, L, DI, window - 1)], dots=(branches["DOT"],)
        )[:6]
        NB, NI = fwd.constexprs["NB"], fwd.constexprs["NI"]
        inner = NB * NI
        # Moneta's maps run in one program per (sequence, head) (.wide_split)
        split = 1 if branches.get("END_MAP") or branches.get("TOKEN_MAP") else wide_split(programs, NB, SMS)
    elif simplex:  # memnets.kernels.mlp_memory.simplex
        fwd, store, bwd = ck._simplex_cases([(D, DH, L)])[:3]
        branches |= {"KE": C // L, "LAG": bool(d.options.get("lag"))}
        inner = 1
    else:
        fwd, store, bwd = ck._mlp_cases([(D, DH, L)])[:3]
        branches |= {"KE": C // L, "READ_START": read_start, "P": window - 1, "BK": _block(L + window - 1)}
        inner = 1

    def at(case: ck.Case) -> ck.Case:  # the config's branches, where the kernel takes them
        ours = {k: v for k, v in branches.items() if k in case.constexprs}
        return dataclasses.replace(case, constexprs={**case.constexprs, **ours})

    # the backward's recompute as the launcher plans it (memnets.kernels.mlp_memory.launch)
    every, recompute = (n * (C // L) for n in checkpoint_chunks(layout.max_chunks, None, layout.wide))
    live, walked = backward_plan(layout.max_tiles, every, recompute)
    state_mb = (2 if momentum else 1) * (DI + D) * DH * 4 / 2**20
    # (layer-1, layer-2) matrices (Dk·Dh and Dh·D floats) each step reads and writes in global memory
    # (the traffic counts of memnets.kernels.mlp_memory.wide_forward's docstring; the whole-state
    # kernels keep the state on chip and move only the stored tile states), and the wide backward's
    # scratch: three [BK, Dh] float tiles written, one rewritten, and read once per key block
    mats = ((7, 5), (9, 7), (14, 14)) if momentum else ((4, 3), (5, 4), (8, 9))
    # the backward's reads in their own launch where it takes them (memnets.kernels.mlp_memory.wide_reads):
    # the recurrence no longer reads the state for them (pass 2, pass 3's reads), the
    # reads' launch reads it four times (layer 1's W: key path, pass 2, pass 3, dq) and three (W2)
    split_reads = layout.wide and not simplex and splits_reads(branches.get("TOKEN_MAP", 0), DI, D)
    branches["SPLIT_READS"] = split_reads
    read_mats = (7, 5) if momentum else (4, 3)
    if split_reads:
        mats = (*mats[:2], (12, 11) if momentum else (7, 8))
    if not layout.wide:
        mats = ((0, 0), (2, 2), (2, 2)) if momentum else ((0, 0), (1, 1), (1, 1))
    elif branches.get("END_MAP"):  # the map's passes: W read twice and written (the backward: W and C
        # read twice, C written; end_map_state, end_map_cotangent)
        mats = tuple((m1 + extra, m2 + extra) for (m1, m2), extra in zip(mats, (3, 3, 5)))
    elif branches.get("TOKEN_MAP"):  # the per-token map's passes (wide_forward, wide_backward): the
        # chunk-start power sums, every token's accumulators block by block, the backward's pass 3a
        extra = ((4, 3), (1, 1), (4, 3)) if momentum else ((2, 2), (1, 1), (2, 2))
        mats = tuple((m1 + e1, m2 + e2) for (m1, m2), (e1, e2) in zip(mats, extra))
    if layout.wide and simplex:  # (wide_simplex, wide_simplex_backward: the passes in their docstrings)
        # forward: pass 0 W2, passes 1, 1a, 1b W1 and W2 (1a, 1b: S too), pass 2 read and written (and S);
        # the STORE pass writes the chunk states too; the backward: passes 0-1b, R0, R1 (the state's
        # and its cotangents' blocks, read and rewritten), each key path's two passes (the second
        # rewrites the cotangents)
        mats = ((9, 10), (11, 12), (27, 28)) if momentum else ((5, 6), (6, 7), (15, 16))
    BK = _block(L + window - 1)
    scratch = (5 + 3 * fwd.constexprs.get("NI", 1)) * BK * DH * 4 if layout.wide else 0
    if split_reads:  # scratch without dẐ1 (two tiles written, one rewritten, two read per key block),
        # and the reads' four tiles per block (three read in pass 3, dẐ1 per key block in pass 5)
        scratch = (6 + 3 * fwd.constexprs.get("NI", 1)) * BK * DH * 4
    if layout.wide and simplex:  # two [BK, Dh] tiles written, read four times, row 0 rewritten
        scratch = 2 * 6 * BK * DH * 4
    fwd_b, store_b, bwd_b = ((m1 * DI + m2 * D) * DH * 4 for m1, m2 in mats)
    forward = [Launch("fwd", at(fwd), programs, steps, inner, state_bytes=fwd_b)]
    states = live * state_mb * programs
    recompute_launch = Launch("fwd (store)", at(store), programs, walked, inner, states, store_b)
    if split > 1:  # memnets.kernels.mlp_memory.wide_split: a launch per chunk, then the reads
        BD, BL = _block(D), _block(L)
        shares = ((split + 1) * BK * BD + BD * BL + BL * BK) * 4  # Z2 shares read and written, read shares
        case = dataclasses.replace(
            split_fwd, constexprs={**split_fwd.constexprs, **split_constants(split, NB)}
        )
        reads = dataclasses.replace(reads, constexprs={**reads.constexprs, "SPLIT": split})
        forward = [
            Launch(
                "fwd (split)",
                at(case),
                programs * split,
                steps,
                inner // split,
                0.0,
                fwd_b / split + shares,
                steps,
                step_loop=False,
            ),
            Launch("fwd (reads)", at(reads), programs * steps, 1, step_loop=False),
        ]
        # the backward's recompute split alike, without the reads (STORE): Z2's shares only
        store_case = dataclasses.replace(case, constexprs={**case.constexprs, "STORE": True})
        z2_shares = (split + 1) * BK * BD * 4
        recompute_launch = Launch(
            "fwd (store, split)",
            at(store_case),
            programs * split,
            walked,
            inner // split,
            states,
            store_b / split + z2_shares,
            walked,
            step_loop=False,
        )
    backward = [Launch("bwd", at(bwd), programs, steps, inner, state_bytes=bwd_b + scratch)]
    if split_reads:  # one launch per recompute segment, a program per (sequence, head, chunk)
        BD, BL = _block(D), _block(L)
        terms = (4 * BK * DH + 2 * BK * BD + BL * BK) * 4  # the read terms each program writes
        segments = -(-steps // recompute)
        read_b = (read_mats[0] * DI + read_mats[1] * D) * DH * 4 + terms
        backward.insert(
            0,
            Launch(
                "bwd (reads)",
                at(read_bwd),
                programs * min(recompute, steps),
                segments,
                inner,
                0.0,
                read_b,
                segments,
                step_loop=False,
            ),
        )
    return [*forward, recompute_launch, *backward]


def _muon_launches(mixer: Any, d: MemoryDispatch, B: int, T: int) -> list[Launch]:
    """Atlas with Muon once per chunk or on every token (:mod:`memnets.kernels.mlp_memory.muon_launch`):
    the forward, the backward's STORE recompute and the backward, one program per (sequence, head),
    chunks in order."""
    from memnets.kernels.mlp_memory.config import block
    from memnets.kernels.mlp_memory.forward import backward_plan
    from memnets.kernels.mlp_memory.launch import checkpoint_chunks
    from memnets.memory.kernel_bridge import _net_spec

    spec = _net_spec(d.arch)
    D, DI, DH = spec.d_out, spec.d_in, spec.d_hidden
    C, P = d.options["chunk_size"], d.options.get("window", 1) - 1
    steps = d.options.get("ns_steps", 5)
    token = d.options["muon"] == "token"
    fwd, store, bwd = ck._muon_cases([(D, DH, C, DI, P)], dots=(_dot(d),), token=token)
    cases = [
        dataclasses.replace(c, constexprs={**c.constexprs, "H": d.arch.num_heads, "STEPS": steps})
        for c in (fwd, store, bwd)
    ]
    programs, chunks = B * d.arch.num_heads, ceil_div(T, C)
    live, walked = backward_plan(chunks, *checkpoint_chunks(chunks, None, True))
    # (layer-1, layer-2) matrices (Dk·Dh and Dh·D floats) read and written per chunk in global memory,
    # counted from the kernels' passes. Per chunk: the forward 15 and 7 (5 of layer 1's for NS's Gram
    # matrices), its STORE 3 and 3 more, the backward 38 + 5·steps and 10 (x_k and dx_k per NS step);
    # per token: the forward 6 and 4 (the Gram pass, the end update), its STORE 4 and 2 more, the backward
    # 12 and 7, and the scratch of every token's N_t, Z_t (written once, read 1.5 times: 5 tiles of
    # (Dh + P + L)·Dh + Dh·D floats per token, padded)
    mats = ((6, 4), (10, 6), (12, 7)) if token else ((10 + steps, 7), (13 + steps, 10), (38 + 5 * steps, 10))
    fwd_b, store_b, bwd_b = ((m1 * DI + m2 * D) * DH * 4 for m1, m2 in mats)
    if token:
        bh, bk, bd = block(DH), block(P + C), block(D)
        bwd_b += 5 * C * (bh * bh + bk * bh + bh * bd) * 4
    NI = fwd.constexprs["NI"]
    states_mb = live * (2 if token else 3) * (DI + D) * DH * 4 / 2**20  # W, S (, O) per live state
    return [
        Launch("fwd", cases[0], programs, chunks, NI, state_bytes=fwd_b),
        Launch("fwd (store)", cases[1], programs, walked, NI, states_mb * programs, store_b),
        Launch("bwd", cases[2], programs, chunks, NI, state_bytes=bwd_b),
    ]


def _gated_delta_launches(mixer: Any, d: MemoryDispatch, B: int, T: int) -> list[Launch]:
    from memnets.kernels.gated_delta_triton import _block

    K, V, C = mixer.head_dim, mixer.head_dim_v, d.options["chunk_size"]
    H = mixer.num_heads
    BK, BV = _block(K), min(_block(V), 64)
    by_kernel = {}
    for case in ck._gated_delta_cases():  # the K = 64 set: every kernel and branch once
        if case.constexprs["K"] == 64:
            by_kernel.setdefault((case.kernel, case.constexprs.get("STORE_H", None)), case)
    shape = {"H": H, "K": K, "V": V, "C": C, "BK": BK, "BV": BV}
    chunks = -(-T // C)

    def at(key: tuple[str, object]) -> ck.Case:
        case = by_kernel[key]
        return dataclasses.replace(
            case, constexprs={**case.constexprs, **{k: shape[k] for k in shape if k in case.constexprs}}
        )

    nv = -(-V // BV)
    return [
        Launch("fwd prepare", at(("_prepare_kernel", None)), B * chunks * H, 1),
        Launch("fwd", at(("_forward_kernel", False)), B * H * nv, chunks),
        Launch(
            "bwd states",
            at(("_forward_kernel", True)),
            B * H * nv,
            chunks,
            1,
            B * H * chunks * K * V * 4 / 2**20,
        ),
        Launch("bwd", at(("_backward_state_kernel", None)), B * H * nv, chunks),
        Launch("bwd local", at(("_backward_local_kernel", None)), B * chunks * H, 1),
    ]


def _scan_launches(mixer: Any, d: MemoryDispatch, B: int, T: int) -> list[Launch]:
    from memnets.kernels.scan_triton import channel_block

    block = getattr(mixer.cell, "structure", "diag") == "block2"
    S = mixer.cell.a.shape[-1]  # the state width (diagonal: one channel per unit; 2x2 blocks: pairs)
    BS, BT = channel_block(S, 4), min(64, max(16, triton.next_power_of_2(T)))
    cases = {
        (c.constexprs["BLOCK"], c.constexprs["REVERSE"]): c
        for c in ck._scan_cases()
        if "*fp32" in str(c.types.values())
    }

    def at(reverse: bool) -> ck.Case:
        case = cases[block, reverse]
        return dataclasses.replace(case, constexprs={**case.constexprs, "BT": BT, "BS": BS})

    programs = B * -(-S // BS)
    return [
        Launch("fwd (each Newton step)", at(False), programs, -(-T // BT)),
        Launch("bwd", at(True), programs, -(-T // BT)),
    ]


def kernel_launches(mixer: Any, d: MemoryDispatch, B: int, T: int) -> list[Launch]:
    """The kernel launches of one layer's call at ``[B, T]`` (forward, and backward through autograd)."""
    if d.op is memory_ops.OMEGA_MEMORY and d.options.get("muon") in ("chunk", "token"):
        return _muon_launches(mixer, d, B, T)
    if d.op.name in MLP_OPS:
        return _mlp_launches(mixer, d, B, T)
    if d.op is memory_ops.GATED_DELTA:
        return _gated_delta_launches(mixer, d, B, T)
    if d.op is memory_ops.PARARNN:
        return _scan_launches(mixer, d, B, T)
    raise ValueError(
        f"kernel_report: no launch model for op {d.op.name!r} (add one in benchmarks/kernel_report.py)"
    )


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


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


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
                f"{ln['shared'] / 1024:.0f} | {_f(ln['est_ms'] or None, '.2f')} | {bound_by(ln['step_us'])} |"
            )
    return "\n".join(out) + "\n"
