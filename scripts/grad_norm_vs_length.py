"""Gradient norm at initialisation against sequence length, per memory family (issue: stable at length).

For each config (default: the memory families' ``configs/mqar/*.yaml``), the model is built at its
initialisation (seed 0) and one batch of uniformly random tokens of length T gets the next-token
cross-entropy (mean over tokens) and its backward; the table gives the total gradient norm and the
norms of the embedding, the memories' k/v projections, and everything else, for every T. A family
whose recurrence is stable at length keeps these within a small factor across T; growth by orders of
magnitude points at the memory's backward through the chunks.

A second table says where along the sequence the gradient enters: the RMS over positions of the
loss sum's gradient at the embedding's output (the mean's gradient times the token count, so a
position's figure does not depend on T), for the first 8 positions, positions 8-63, 64-511 and the
rest (512 is the LM configs' ``grad_horizon``). A norm that *falls* with T while the later stretches'
RMS stays put comes from a fixed stretch of positions diluted by the mean as 1/T. ``--loss-from N``
takes the loss over positions N on only, so the earlier positions' gradients come from later tokens'
losses alone (through the mixers).

    python scripts/grad_norm_vs_length.py --out benchmarks/results/grad_norm_vs_length
    python scripts/grad_norm_vs_length.py --lengths 512 1024 --configs configs/mqar/titans.yaml \
        --override model.mixer_options.titans.lr_max=0.1
    python scripts/grad_norm_vs_length.py --memory norm_scale=0.1   # every family's memory option
    python scripts/grad_norm_vs_length.py --configs configs/mqar/titans.yaml --lengths 512 --loss-from 64

Writes ``grad_norms.json`` and ``grad_norms.md`` (and prints the table). CPU, float32, backend chunked.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from memnets.config import memory_overrides
from memnets.reports import config_parser, initial_model, report


def _group(name: str) -> str:
    if "embed" in name:
        return "embedding"
    if any(f".proj.{p}." in name or name.endswith(f"proj.{p}.weight") for p in ("k", "v")):
        return "k/v projections"
    return "other"


# Where along the sequence the gradient enters: stretches of positions [a, b).
POSITIONS = {
    "input grad 0-7": (0, 8),
    "input grad 8-63": (8, 64),
    "input grad 64-511": (64, 512),
    "input grad 512-": (512, None),
}


def grad_norms(
    config: Path, T: int, batch: int, device: str, overrides: list[str], loss_from: int = 0
) -> dict[str, float]:
    """The norms of one batch's gradient at initialisation (the module's docstring), the loss taken over
    positions ``loss_from`` .. T − 1 (the earlier positions' gradients then come from later losses only)."""
    cfg, model = initial_model(config, overrides)
    model = model.to(device)
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, T + 1), device=device)
    embedded: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        embedded.append(out)

    hook = model.embed.register_forward_hook(keep)
    logits = model(tokens[:, :-1])
    hook.remove()
    loss = F.cross_entropy(logits[:, loss_from:].flatten(0, 1).float(), tokens[:, 1 + loss_from :].flatten())
    loss.backward()
    sums: dict[str, float] = {"total": 0.0}
    for n, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.double().pow(2).sum().item()
            sums["total"] += g
            sums[_group(n)] = sums.get(_group(n), 0.0) + g
    out = {k: math.sqrt(v) for k, v in sums.items()}
    out["loss"] = loss.item()
    per_position = (embedded[0].grad.double() * batch * (T - loss_from)).pow(2).sum(-1).mean(0)
    for name, (a, b) in POSITIONS.items():
        if a < T:
            out[name] = per_position[a:b].mean().sqrt().item()
    return out


def main() -> None:
    p = config_parser(__doc__)
    p.add_argument("--lengths", nargs="*", type=int, default=[512, 1024, 4096, 16384])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--loss-from", type=int, default=0, help="the loss over positions from this one on (default 0: all)"
    )
    p.add_argument(
        "--memory", nargs="*", default=[], help="KEY=VALUE memory options for every config's mixer"
    )
    a = p.parse_args()
    rows = []
    for config in a.configs:
        overrides = a.override + memory_overrides(config, a.memory)
        for T in a.lengths:
            t0 = time.time()
            r = grad_norms(config, T, a.batch, a.device, overrides, a.loss_from)
            rows.append({"config": config.stem, "T": T, **r, "seconds": time.time() - t0})
            print(
                f"{config.stem:16s} T={T:6d}  " + "  ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True
            )
    keys = ["total", "embedding", "k/v projections", "other"]
    lines = [
        "| config | " + " | ".join(f"T = {T}" for T in a.lengths) + " | max / min |",
        "|---|" + "---:|" * (len(a.lengths) + 1),
    ]
    for config in dict.fromkeys(r["config"] for r in rows):
        totals = [r["total"] for r in rows if r["config"] == config]
        lines.append(
            f"| {config} | "
            + " | ".join(f"{t:.3g}" for t in totals)
            + f" | {max(totals) / min(totals):.3g} |"
        )
    lines += [
        "",
        "| config | positions | " + " | ".join(f"T = {T}" for T in a.lengths) + " |",
        "|---|---|" + "---:|" * len(a.lengths),
    ]
    for config in dict.fromkeys(r["config"] for r in rows):
        for name in POSITIONS:
            figures = [r.get(name) for r in rows if r["config"] == config]
            lines.append(
                f"| {config} | {name.removeprefix('input grad ')} | "
                + " | ".join("-" if f is None else f"{f:.3g}" for f in figures)
                + " |"
            )
    title = (
        "total gradient norm at initialisation (seed 0, one random batch, mean token loss); then the RMS "
        "over positions of the loss sum's gradient at the embedding's output"
    )
    report(a.out, "grad_norms", title, "\n".join(lines), {"groups": keys, "rows": rows})


if __name__ == "__main__":
    main()
