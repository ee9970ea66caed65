"""How far one sequence's inner-loop writes move each memory's weights at initialisation (issue 21).

For each config (default: the memory families' ``configs/mqar/*.yaml``), the seed-0 model reads one
batch of uniformly random tokens of the config's length, and the table gives, per layer and weight
matrix of every memory, ``move`` = ‖W_T − W_0‖_F / ‖W_0‖_F (how much of the weights the writes
replace: ≫ 1 means the memory is mostly what the sequence wrote, ≈ 1 − Π keep means the writes barely
show beside the decaying initial weights) and ``size`` = ‖W_T‖_F / ‖W_0‖_F (whether the weights grow
or shrink). W are the weights the memory reads with: Moneta's and Memora's retention map applied to
their accumulators. Memories whose state is not one weight set per layer (TNT's global and local
memories, the linear-attention families) are skipped.

    python scripts/memory_writes.py --out benchmarks/results/memory_writes
    python scripts/memory_writes.py --configs configs/mqar/atlas.yaml \
        --override model.mixer_options.atlas.lr_max=1.0

Writes ``memory_writes.json`` and ``.md`` with ``--out``. CPU, float32, backend chunked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memnets.memory import MemoryState
from memnets.memory.miras import read_map, retained_weights
from memnets.reports import config_parser, initial_model, report


def _read_weights(mixer: torch.nn.Module, acc: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The weights ``mixer``'s memory reads with from the state ``acc`` (its retention map applied)."""
    return retained_weights(acc, read_map(getattr(mixer, "retention", None)))


def _weights(mixer: torch.nn.Module, state: Any) -> tuple[torch.Tensor, ...] | None:
    """The weights ``mixer``'s memory reads with after the sequence (``None``: not one weight set)."""
    mem = getattr(state, "memory", None)
    mem = getattr(mem, "memory", mem)  # the Omega rule's state wraps the engine's
    if not isinstance(mem, MemoryState):
        return None
    return _read_weights(mixer, mem.weights)


def memory_writes(config: Path, batch: int, overrides: list[str]) -> list[dict[str, Any]]:
    cfg, model = initial_model(config, overrides)
    finals: list[tuple[str, torch.nn.Module, Any]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _, out, name=name: finals.append((name, mod, out[1])))
        for name, m in model.named_modules()
        if hasattr(m, "memory") and hasattr(m, "op")
    ]
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, cfg.data.seq_len))
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    rows = []
    for name, mixer, state in finals:
        W_T = _weights(mixer, state)
        if W_T is None:
            continue
        W_0 = _read_weights(mixer, mixer.memory.initial_weights(batch))
        for i, (a, b) in enumerate(zip(W_0, W_T)):
            n0 = a.flatten(2).norm(dim=-1)  # per sequence and head
            rows.append(
                {
                    "config": config.stem,
                    "memory": name,
                    "matrix": i,
                    "move": ((b - a).flatten(2).norm(dim=-1) / n0).mean().item(),
                    "size": (b.flatten(2).norm(dim=-1) / n0).mean().item(),
                }
            )
    return rows


def main() -> None:
    p = config_parser(__doc__)
    p.add_argument("--batch", type=int, default=32)
    a = p.parse_args()
    rows = []
    for config in a.configs:
        rows += memory_writes(config, a.batch, a.override)
    lines = ["| config | memory | matrix | move | size |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| {r['config']} | {r['memory']} | {r['matrix']} | {r['move']:.3g} | {r['size']:.3g} |" for r in rows
    ]
    title = "one sequence's writes at initialisation (seed 0, random tokens)"
    report(a.out, "memory_writes", title, "\n".join(lines), rows)


if __name__ == "__main__":
    main()
