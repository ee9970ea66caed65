"""What one pass of a memory's own update rule can store: the inner loop alone, no outer training (issue 21).

A memory network at its initialisation writes ``--pairs`` random (key, value) pairs, then
``--distractors`` more random pairs (MQAR's later tokens write too, and at initialisation every token
writes alike), with a constant step size ``lr``, the mixers' initial retention (keep 0.99 per token) and
momentum (0.9, where the rule has it); then every stored key is read with the final weights. A pair is
recalled when the read is nearer to its own value than to any other stored value (chance 1/pairs). Keys
and values are made as the memory blocks make them: unit keys of SiLU features, SiLU values. The step
sizes are swept, because the rules' working windows differ by orders of magnitude; the question for a
config is whether its initial step (``lr_max``/2, the gates' sigmoid at 0) lies inside the window.

Rules (the papers' update rules through :mod:`memnets.memory.miras`, per-token chunked semantics):

* ``titans``: ℓ2 bias, momentum, identity retention (Titans arXiv 2501.00663 Eq. 13-14);
* ``yaad``: Huber bias, identity retention (Miras arXiv 2504.13173 Eq. 26);
* ``moneta``: ℓ3 bias, literal L4 map W = A/‖A‖₄² (Miras Eq. 24-25, floor 0.1 as the mixer);
  ``moneta-chunk-end`` the same map at chunk ends only (§5.3's parallel form); ``moneta-none``
  the ℓ3 bias with identity retention;
* ``memora``: ℓ2 bias, W = c·Softmax(A) with the lag token (Miras Eq. 27), no output LayerNorm (the
  mixer's default), c = ``--simplex-scale``.

    python scripts/inner_recall.py
    python scripts/inner_recall.py --dim 64 --pairs 4 16 --rules moneta titans --out results/recall

Prints a table per number of pairs (mean over ``--seeds``), each cell recall / the output's size
‖M(k) − k‖ / how far the writes moved it, ‖M(k) − M₀(k)‖ (both against the initial output's size: a
memory whose writes leave its reads where the initial weights put them has stored nothing, whatever its
recall); ``--out`` writes ``inner_recall.json`` and ``.md``. CPU, float64.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from memnets.memory.architecture import MemoryMLP
from memnets.memory.miras import (
    ChunkEnd,
    HuberBias,
    LpBias,
    LqNormalize,
    SimplexSoftmax,
    miras_chunked,
    read_map,
    retained_weights,
)

KEEP, MOM = 0.99, 0.9  # the memory blocks' initial gates (mixers/memory_block.py)


def _rules(simplex_scale: float) -> dict[str, dict[str, Any]]:
    """name -> the rule's keywords for :func:`miras_chunked` (``momentum``, ``norm``: the memory's own;
    ``delta``: Yaad's threshold δ_t at the mixer's initial 2√dim)."""
    l4 = LqNormalize(4.0, "paper", 0.1)
    return {
        "titans": {"momentum": True},
        "yaad": {"bias": HuberBias(), "delta": True},
        "moneta": {"bias": LpBias(3.0), "retention": l4},
        "moneta-chunk-end": {"bias": LpBias(3.0), "retention": ChunkEnd(l4)},
        "moneta-none": {"bias": LpBias(3.0)},
        "memora": {"retention": SimplexSoftmax(simplex_scale), "lag": True, "norm": False},
    }


def recall(
    rule: dict[str, Any], lr: float, *, dim: int, expansion: float, pairs: int, distractors: int, chunk: int,
    norm_scale: float, seed: int, init_std: float = 1.0,
) -> tuple[float, float, float]:  # fmt: skip
    """(the share of the ``pairs`` stored keys whose read is nearest to their own value, the size of the
    memory's output beside the residual, ‖M(k) − k‖, relative to the initial weights', and how far the
    writes moved that output, ‖M(k) − M₀(k)‖, relative to the same initial size)."""
    rule = dict(rule)
    momentum, norm, delta = rule.pop("momentum", False), rule.pop("norm", True), rule.pop("delta", False)
    torch.manual_seed(seed)
    arch = MemoryMLP(1, dim, expansion=expansion, layer_norm=norm, norm_scale=norm_scale, init_std=init_std)
    arch = arch.double()
    T = pairs + distractors
    k = F.normalize(F.silu(torch.randn(1, T, 1, dim, dtype=torch.float64)), dim=-1)
    v = F.silu(torch.randn(1, T, 1, dim, dtype=torch.float64))

    def gate(x: float) -> torch.Tensor:
        return torch.full((1, T, 1), x, dtype=torch.float64)

    with torch.no_grad():
        _, state = miras_chunked(
            arch, k, k, v, gate(lr), gate(MOM) if momentum else None, gate(KEEP), chunk_size=chunk,
            bias_params=gate(2 * dim**0.5) if delta else None, **rule,
        )  # fmt: skip
        at_read = read_map(rule.get("retention"))
        keys = k[:, :pairs].transpose(1, 2)
        y = arch.read(retained_weights(state.weights, at_read), keys)[0, 0]
        y0 = arch.read(retained_weights(arch.initial_weights(1), at_read), keys)[0, 0]
    nearest = torch.cdist(y, v[0, :pairs, 0]).argmin(-1)
    initial = (y0 - keys[0, 0]).norm(dim=-1).mean()
    size, change = (y - keys[0, 0]).norm(dim=-1).mean() / initial, (y - y0).norm(dim=-1).mean() / initial
    return (nearest == torch.arange(pairs)).double().mean().item(), size.item(), change.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", nargs="*", default=None, help="default: every rule")
    p.add_argument("--lrs", nargs="*", type=float, default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.5])
    p.add_argument("--pairs", nargs="*", type=int, default=[4])
    p.add_argument("--distractors", type=int, default=60, help="writes after the pairs (MQAR T=64: 60)")
    p.add_argument("--dim", type=int, default=32, help="head dim (configs/mqar: 32)")
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--norm-scale", type=float, default=1.0, help="the memory LayerNorm's initial γ")
    p.add_argument("--simplex-scale", type=float, default=1.0, help="Memora's c")
    p.add_argument(
        "--init-std",
        type=float,
        default=1.0,
        help="the initial weights' scale multiplier (memory: {init_std})",
    )
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    rules = _rules(a.simplex_scale)
    names = a.rules or list(rules)
    unknown = [n for n in names if n not in rules]
    if unknown:
        p.error(f"--rules: {unknown} not among {list(rules)}")
    rows, tables = [], []
    for n in a.pairs:
        lines = [
            f"recall of {n} pairs after {a.distractors} more writes (dim {a.dim}, chunk {a.chunk}, "
            f"{a.seeds} seeds; chance {1 / n:.2f}) / the memory's output size / how far the writes moved it, "
            "both against its initial size, per step size lr",
            "| rule | " + " | ".join(f"{lr:g}" for lr in a.lrs) + " |",
            "|---|" + "---:|" * len(a.lrs),
        ]
        print("\n" + "\n".join(lines), flush=True)
        for name in names:
            cells = []
            for lr in a.lrs:
                runs = [
                    recall(
                        rules[name], lr, dim=a.dim, expansion=a.expansion, pairs=n, distractors=a.distractors,
                        chunk=a.chunk, norm_scale=a.norm_scale, init_std=a.init_std, seed=s,
                    )
                    for s in range(a.seeds)
                ]  # fmt: skip
                acc, size, change = (sum(r[i] for r in runs) / a.seeds for i in range(3))
                cells.append(f"{acc:.2f} / {size:.2g} / {change:.2g}")
                rows.append(
                    {"rule": name, "pairs": n, "lr": lr, "recall": acc, "output_size": size, "change": change}
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        tables.append("\n".join(lines))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "inner_recall.json").write_text(
            json.dumps({"args": vars(a) | {"out": str(a.out)}, "rows": rows})
        )
        (a.out / "inner_recall.md").write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
