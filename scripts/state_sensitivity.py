"""How fast a deep memory's recurrence amplifies a change of its state, piece by piece (issue: stable at length).

The outer gradient reaches a memory's early tokens through the Jacobians of its recurrence: the
backward multiplies by the transposed Jacobian of every token's update, so a recurrence whose Jacobian
product grows over T tokens gives a gradient that grows with T (``grad_norm_vs_length.py`` measures
that total). This script measures the growth itself, in the forward, where it can be seen token
range by token range: the first memory block of each config, at its initialisation (seed 0), reads
random tokens in pieces of ``--piece`` tokens; a second copy of its state, displaced by a relative
1e-6, runs beside it, and after each piece the displacement's growth ‖ΔS_end‖ / ‖ΔS_start‖ is recorded
and the displacement rescaled to its starting size in its new direction (Benettin's method: the
direction settles on the most amplified one, so the product of the gains over a range of tokens is
the largest growth over it, which is also the transposed product's, the backward's). Float64 keeps
the finite differences clean.

``memory_sensitivity.py`` measures the same growth end to end (the logits' response to a change of the
initial memory weights, every memory of the model, MAC's and TNT's too), which saturates once the
perturbed run leaves the linear regime (about 1e6); rescaling per piece does not, gives the rate per
token range, and shows the state beside it.

A gain below 1 per piece is a contracting recurrence (retention forgets faster than the writes
amplify); above 1, a change of the state, and with it the gradient through the state, grows
geometrically over the tokens. Beside each gain, the state's root-mean-square per weight matrix, which
shows what the recurrence is doing (a literal ℓ_q map's accumulator decaying toward the writes'
equilibrium, a memory's weights growing with its writes).

    python scripts/state_sensitivity.py --configs configs/mqar/moneta.yaml --length 1024
    python scripts/state_sensitivity.py --memory norm_scale=0.1 --out benchmarks/results/state_sensitivity

Mixers built on ``MemoryBlock`` (Titans and its MAG/MAL hybrids, the Miras family, OmegaNet, Atlas);
a config without one (MAC's segment loop, TNT, Gated DeltaNet, MoM) is listed as skipped. Writes
``state_sensitivity.json`` and ``.md`` with ``--out``. CPU, backend chunked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from memnets import LM
from memnets.config import memory_overrides
from memnets.mixers.memory_block import MemoryBlock
from memnets.reports import config_parser, initial_model, report
from memnets.validation import ConfigError


class _Captured(Exception):
    """Raised by the pre-hook once the memory block's input is in hand: the rest of the model is not run."""


def map_tensors(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``state`` with ``fn`` applied to every floating-point tensor (dataclasses, tuples, lists, dicts)."""
    if isinstance(state, Tensor):
        return fn(state) if state.is_floating_point() else state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(
            state, **{f.name: map_tensors(getattr(state, f.name), fn) for f in dataclasses.fields(state)}
        )
    if isinstance(state, (tuple, list)):
        return type(state)(map_tensors(s, fn) for s in state)
    if isinstance(state, dict):
        return {k: map_tensors(v, fn) for k, v in state.items()}
    return state


def tensors(state: Any) -> list[Tensor]:
    """Every floating-point tensor of ``state``, in ``map_tensors``' order."""
    out: list[Tensor] = []
    map_tensors(state, lambda t: out.append(t) or t)
    return out


def with_tensors(state: Any, values: list[Tensor]) -> Any:
    """``state`` with its floating-point tensors replaced by ``values`` (in ``tensors``' order)."""
    it = iter(values)
    return map_tensors(state, lambda _: next(it))


def distance(a: Any, b: Any) -> float:
    return math.sqrt(sum(float((x - y).pow(2).sum()) for x, y in zip(tensors(a), tensors(b), strict=True)))


def first_memory_block(model: torch.nn.Module) -> MemoryBlock | None:
    return next((m for m in model.modules() if isinstance(m, MemoryBlock)), None)


def memory_inputs(model: LM, block: MemoryBlock, tokens: Tensor) -> tuple[list[Any], dict[str, Any]]:
    """The block's op inputs (queries, keys, values, gates) and keywords for ``tokens``, from the model."""
    captured: dict[str, Any] = {}

    def grab(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        qkv, _ = block.inputs(x, None, None)
        captured["args"], captured["options"] = block.memory_args(x, qkv)
        raise _Captured

    handle = block.register_forward_pre_hook(grab)
    try:
        model(tokens)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured["args"], captured["options"]


def sensitivity(
    config: Path, length: int, piece: int, batch: int, overrides: list[str], rel: float = 1e-6
) -> list[dict[str, Any]] | str:
    """Per piece: its last token, the displacement's gain over it and the state's RMS per weight matrix;
    or why the config has no memory block to measure."""
    cfg, model = initial_model(config, overrides)
    model = model.double()
    block = first_memory_block(model)
    if block is None:
        return f"mixer {cfg.model.mixer!r} has no MemoryBlock (its own segment loop or a linear state)"
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, length))
    with torch.no_grad():
        args, options = memory_inputs(model, block, tokens)

        def part(t: Any, span: slice) -> Any:
            return t[:, span] if isinstance(t, Tensor) and t.shape[:2] == (batch, length) else t

        rows, state, shifted, gen = [], None, None, torch.Generator().manual_seed(1)
        for start in range(0, length, piece):
            span = slice(start, start + piece)
            a, o = [part(t, span) for t in args], {k: part(v, span) for k, v in options.items()}
            _, end = block.op(block.backend, *a, state, **o)
            gain = math.nan
            if state is not None:
                size = rel * math.sqrt(sum(float(t.pow(2).sum()) for t in tensors(state)))
                if shifted is None:  # the first displacement: random, in every tensor of the state
                    shifted = map_tensors(
                        state, lambda t: t + torch.randn(t.shape, generator=gen, dtype=t.dtype)
                    )
                scale = size / distance(shifted, state)
                now = tensors(state)
                shifted = with_tensors(state, [t + (s - t) * scale for s, t in zip(tensors(shifted), now)])
                _, shifted = block.op(block.backend, *a, shifted, **o)
                gain = distance(shifted, end) / size
            weights = getattr(end, "weights", None) or tensors(end)
            rms = [float(w.pow(2).mean().sqrt()) for w in weights]
            rows.append({"t": min(start + piece, length), "gain": gain, "state_rms": rms})
            state = end
    return rows


def main() -> None:
    p = config_parser(__doc__)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--piece", type=int, default=64, help="tokens per piece (a multiple of the chunk size)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument(
        "--memory", nargs="*", default=[], help="KEY=VALUE memory options for every config's mixer"
    )
    a = p.parse_args()
    results: dict[str, Any] = {}
    for config in a.configs:
        try:
            rows = sensitivity(
                config, a.length, a.piece, a.batch, a.override + memory_overrides(config, a.memory)
            )
        except ConfigError as e:  # --memory for a mixer without a memory network (Gated DeltaNet, MoM)
            rows = str(e)
        results[config.stem] = rows
        if isinstance(rows, str):
            print(f"{config.stem}: skipped, {rows}", flush=True)
            continue
        for r in rows:
            rms = " ".join(f"{x:.3g}" for x in r["state_rms"])
            print(f"{config.stem:12s} t={r['t']:6d}  gain {r['gain']:.3g}  state rms {rms}", flush=True)
    marks = [t for t in (2**k for k in range(20)) if a.piece < t <= a.length]
    lines = [
        f"| config | gain per {a.piece} tokens, piece ending at t = "
        + " | ".join(str(t) for t in marks)
        + f" | largest | product over the last {min(512, a.length - a.piece)} tokens |",
        "|---|" + "---:|" * (len(marks) + 2),
    ]
    for name, rows in results.items():
        if isinstance(rows, str):
            lines.append(f"| {name} | skipped: {rows} |")
            continue
        gains = {r["t"]: r["gain"] for r in rows}
        measured = [r["gain"] for r in rows if not math.isnan(r["gain"])]
        last = measured[-max(1, min(512, a.length - a.piece) // a.piece) :]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{gains.get(t, math.nan):.3g}" for t in marks)
            + f" | {max(measured):.3g} | {math.prod(last):.3g} |"
        )
    title = "growth of a state displacement per piece (first memory block, initialisation, seed 0, float64)"
    report(a.out, "state_sensitivity", title, "\n".join(lines), {"piece": a.piece, "configs": results})


if __name__ == "__main__":
    main()
