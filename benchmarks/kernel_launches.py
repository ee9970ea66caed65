"""The kernel launches of one layer, per memory dispatch: what the static kernel report
(:mod:`benchmarks.kernel_report`) compiles and times. Each launch names its compile case (the
constexprs as the launcher sets them, from ``scripts/check_kernels_compile.py``'s cases), its programs,
the sequential steps each walks and the state it moves per step, counted from the kernels' passes;
:func:`kernel_launches` picks the model for a dispatch's op."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(ROOT / "scripts"))

import check_kernels_compile as ck  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

from benchmarks.kernel_roofline import SMS  # noqa: E402
from memnets import ops as memory_ops  # noqa: E402
from memnets.dispatch import MemoryDispatch  # noqa: E402

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
    states_mb: float = 0.0  # the recurrent states the backward keeps live at once, all programs
    state_bytes: float = 0.0  # state each program reads and writes in global memory per step
    launches: int = 1  # kernel launches the steps are spread over (one per chunk: the split forward)
    step_loop: bool = True  # the kernel loops over its steps (else each launch or program is one step)


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
    from memnets.kernels.mlp_memory.config import (
        ACTIVATIONS,
        BIAS_KINDS,
        chunk_state_dtype,
        split_constants,
        wide_split,
    )
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
        maps = {"END_MAP": branches.get("END_MAP", 0), "TOKEN_MAP": branches.get("TOKEN_MAP", 0)}
        fwd, store, bwd, split_fwd, read_bwd, reads, _, *sums = ck._mlp_wide_cases(
            [(D, DH, L, DI, window - 1)], dots=(branches["DOT"],), maps=maps
        )[:8]
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
    # the wide kernels keep the recompute's chunk-start states at the products' half type
    # (memnets.kernels.mlp_memory.config.chunk_state_dtype): ``kept`` floats' worth per stored float
    kept = 1.0
    if layout.wide and not simplex:
        kept = chunk_state_dtype(branches["DOT"]).itemsize / 4
    # (layer-1, layer-2) matrices (Dk·Dh and Dh·D floats) each step reads and writes in global memory
    # (the traffic counts of memnets.kernels.mlp_memory.wide_forward's docstring; the whole-state
    # kernels keep the state on chip and move only the stored tile states), and the wide backward's
    # scratch: three [BK, Dh] float tiles written, one rewritten, and read once per key block
    mats = ((7, 5), (9, 7), (14, 14)) if momentum else ((4, 3), (5, 4), (8, 9))
    # the backward's reads in their own launch where it takes them (memnets.kernels.mlp_memory.wide_reads):
    # the recurrence no longer reads the state for them (pass 2, pass 3's reads), the
    # reads' launch reads it four times (layer 1's W: key path, pass 2, pass 3, dq) and three (W2);
    # the split recurrence (.wide_split_backward) reads layer 1's W, C_W, C_S in pass 3 and W (twice),
    # S, C_W, C_S in pass 5, writing C_W, C_S; layer 2's C_W, S, C_S, W in pass 3 and W, C_W in pass
    # 5, writing C_S, C_W (pass 3) and C_W (pass 5)
    split_reads = (
        layout.wide
        and not simplex
        and splits_reads(branches.get("TOKEN_MAP", 0), DI, D, branches.get("END_MAP", 0))
    )
    read_mats = (7, 5) if momentum else (4, 3)
    if split_reads:
        mats = (*mats[:2], (10, 9) if momentum else (6, 6))
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
    # the recompute's writes of the chunk-start states (W, and S with momentum, per layer), and the
    # split recurrence's reads of them (with momentum layer 1's W three times and S, layer 2's S and W
    # twice; without, W three times and twice), at their kept type
    n_states = 2 if momentum else 1
    store_b -= (1 - kept) * n_states * (DI + D) * DH * 4
    chunk_reads = (4, 3) if momentum else (3, 2)
    if split_reads:
        bwd_b -= (1 - kept) * (chunk_reads[0] * DI + chunk_reads[1] * D) * DH * 4
    forward = [Launch("fwd", at(fwd), programs, steps, inner, state_bytes=fwd_b)]
    # the live states: the checkpoints and inner segment starts in float32, one inner segment's chunk
    # states at their kept type
    stored = min(recompute, steps)
    states = (live - stored + kept * stored) * state_mb * programs
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
    if split_reads:  # memnets.kernels.mlp_memory.wide_reads, then .wide_split_backward
        BD, BL = _block(D), _block(L)
        terms = (4 * BK * DH + 3 * BK * BD + BL * BK) * 4  # the read terms each program writes
        segments = -(-steps // recompute)
        per_segment = programs * stored  # a recompute segment's chunks, one program each
        read_b = kept * (read_mats[0] * DI + read_mats[1] * D) * DH * 4 + terms  # the chunk states
        # the recurrence, a launch per chunk: its blocks' share of the state and scratch traffic, and
        # the shares: dΔ's read (all programs') and written, Z2 read twice, the reads' dY and dΔ, dk's
        # share written
        shares = ((split + 5) * BK * BD + BL * BD + DI * BK) * 4
        case = dataclasses.replace(bwd, constexprs={**bwd.constexprs, **split_constants(split, NB)})
        sums_case = dataclasses.replace(sums[0], constexprs={**sums[0].constexprs, "SPLIT": split})
        sums_b = (split * (DI * BK + 2 * BK) + 2 * L * BK + BL * BK) * 4  # the shares, dG, dPq
        backward = [
            Launch(
                "bwd (reads)",
                at(read_bwd),
                per_segment,
                segments,
                inner,
                0.0,
                read_b,
                segments,
                step_loop=False,
            ),
            Launch(
                "bwd (split)",
                at(case),
                programs * split,
                steps,
                inner // split,
                0.0,
                (bwd_b + scratch) / split + shares,
                steps + segments,
                step_loop=False,
            ),
            Launch(
                "bwd (sums)", at(sums_case), per_segment, segments, 1, 0.0, sums_b, segments, step_loop=False
            ),
        ]
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
        f"kernel_report: no launch model for op {d.op.name!r} (add one in benchmarks/kernel_launches.py)"
    )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
