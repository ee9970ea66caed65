"""How strongly a memory's inner loop amplifies a change of its state over T tokens (issue: stable at length).

The outer gradient through a deep memory's recurrence is a product of the inner steps' Jacobians; when
that product grows with T the gradient at initialisation does too (``grad_norm_vs_length.py``), however
bounded the forward looks (the memory's output LayerNorm hides the weights' scale). This script measures
the product directly, without a backward: for each config, the seed-0 model in float64 reads one batch of
uniformly random tokens twice, the second time with every memory's learnable initial weights moved by
ε·u (u a random unit direction over all of them), and the table gives ‖Δ logits_t‖ / ε averaged over the
16 positions ending at t. A flat row means the inner loop forgets a perturbation at least as fast as its
steps amplify it; a row growing by orders of magnitude means a positive growth rate (a chaotic inner
loop), which the outer backward then multiplies in.

    python scripts/memory_sensitivity.py --length 16384
    python scripts/memory_sensitivity.py --configs configs/mqar/titans.yaml --memory norm_scale=0.1
        --override model.mixer_options.titans.lr_max=0.1

ε = 1e-8 in float64: a finite difference accurate to about 1e-8 relative while ‖Δ‖ stays far below the
logits' scale; growth beyond ~1e6 saturates (the perturbed run has left the linear regime), which the
table marks with ">". Mixers without learnable initial memory weights (Gated DeltaNet, MoM) are skipped.
Writes ``memory_sensitivity.json`` and ``.md`` with ``--out``. CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from memnets.config import memory_overrides
from memnets.reports import config_parser, initial_model, report

EPS = 1e-8
SATURATED = 1e6  # above this the finite difference has left the linear regime


def positions(length: int) -> list[int]:
    """Where the table looks: 16, 64, 256, ... up to ``length``."""
    return [t for t in (16 * 4**i for i in range(12)) if t <= length]


@torch.no_grad()
def sensitivity(config: Path, length: int, overrides: list[str]) -> dict[int, float] | None:
    """``{t: ‖Δ logits_t‖ / ε}`` (mean over the 16 positions ending at t); ``None`` without memory weights."""
    cfg, model = initial_model(config, overrides)
    model = model.double()
    weights = [p for n, p in model.named_parameters() if "init_weights" in n]
    if not weights:
        return None
    tokens = torch.randint(0, cfg.model.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    before = model(tokens)
    directions = [
        torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(2)) for p in weights
    ]
    norm = math.sqrt(sum(float(u.pow(2).sum()) for u in directions))
    for p, u in zip(weights, directions):
        p.add_(u, alpha=EPS / norm)
    change = (model(tokens) - before)[0].norm(dim=-1) / EPS
    return {t: float(change[t - 16 : t].mean()) for t in positions(length)}


def main() -> None:
    p = config_parser(__doc__)
    p.add_argument("--length", type=int, default=16384)
    p.add_argument(
        "--memory", nargs="*", default=[], help="KEY=VALUE memory options for every config's mixer"
    )
    a = p.parse_args()
    ts = positions(a.length)
    rows = []
    lines = [
        "| config | " + " | ".join(f"t = {t}" for t in ts) + " | last / first |",
        "|---|" + "---:|" * (len(ts) + 1),
    ]
    for config in a.configs:
        t0 = time.time()
        r = sensitivity(config, a.length, a.override + memory_overrides(config, a.memory))
        if r is None:
            print(f"{config.stem}: no learnable initial memory weights, skipped", flush=True)
            continue
        rows.append({"config": config.stem, "sensitivity": r, "seconds": time.time() - t0})
        cells = [(">" if v > SATURATED else "") + f"{v:.3g}" for v in r.values()]
        lines.append(f"| {config.stem} | " + " | ".join(cells) + f" | {r[ts[-1]] / r[ts[0]]:.3g} |")
        print(lines[-1], flush=True)
    settings = " ".join(a.override + a.memory) or "as shipped"
    title = f"‖Δ logits_t‖ / ε for a move of ε along a random direction of the initial memory weights ({settings})"
    meta = {"length": a.length, "eps": EPS, "override": a.override, "memory": a.memory}
    report(a.out, "memory_sensitivity", title, "\n".join(lines), {**meta, "rows": rows})


if __name__ == "__main__":
    main()
