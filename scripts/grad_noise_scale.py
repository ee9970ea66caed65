"""How noisy the outer gradient is on MQAR: the simple noise scale of McCandlish, Kaplan, Amodei et al.,
"An Empirical Model of Large-Batch Training" (arXiv 1812.06162, §2.2, Eq. 2.9),

    B_simple = tr(Σ) / |G|²

with G the true gradient and Σ the covariance of one sequence's gradient. It is about the batch at which
a step's gradient noise is as large as its signal: training far below it spends most of each step on
noise, and a larger batch then learns more per sequence seen, not only per step.

For each config (and optionally a trained model: ``--run DIR`` loads that run's latest checkpoint,
``--run FILE`` that checkpoint), N training sequences of the config's own MQAR task get one backward
each (the trainer's loss: the mean cross-entropy over the sequence's answer tokens; every sequence has
the same number of them, so the batch loss is the mean of these). From the per-sequence gradients g_i,
with ḡ their mean::

    tr(Σ) ≈ Σ_i |g_i − ḡ|² / (N − 1),     |G|² ≈ |ḡ|² − tr(Σ)/N     (unbiased for both)

    python scripts/grad_noise_scale.py --configs configs/mqar/titans.yaml configs/mqar/moneta.yaml
    python scripts/grad_noise_scale.py --configs configs/mqar/moneta.yaml --run runs/moneta --out DIR

Writes ``noise_scale.json`` and ``noise_scale.md`` with ``--out`` (and prints the table). CPU, float32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from memnets import LM
from memnets.checkpoint import load_checkpoint, load_latest
from memnets.config import load_config
from memnets.data import MQARTask
from memnets.data.mqar import IGNORE
from memnets.reports import config_parser, report


def noise_scale(grads: torch.Tensor) -> dict[str, float]:
    """``grads [N, P]``: one flattened gradient per sequence -> |G|², tr(Σ) and B_simple (float64)."""
    g = grads.double()
    n = g.shape[0]
    if n < 2:
        raise ValueError(f"noise_scale: needs at least 2 per-sequence gradients, got {n}")
    mean = g.mean(0)
    trace = (g - mean).pow(2).sum().item() / (n - 1)
    signal = mean.pow(2).sum().item() - trace / n
    return {"G2": signal, "trace": trace, "B_simple": trace / signal if signal > 0 else float("inf")}


def per_sequence_grads(model: LM, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x, y in zip(inputs, labels):
        logits = model(x[None])
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat([(torch.zeros_like(p) if d is None else d).flatten() for p, d in zip(params, grads)])
        )
    return torch.stack(rows)


def measure(config: Path, run: Path | None, sequences: int, overrides: list[str]) -> dict[str, float]:
    cfg = load_config(config, ["model.max_position_embeddings=0", *overrides])
    if cfg.data.kind != "mqar":
        raise SystemExit(f"{config}: data.kind={cfg.data.kind!r}; this script measures MQAR configs")
    task = MQARTask(cfg.data.mqar, cfg.data.seq_len, cfg.run.seed)
    cfg.model.vocab_size = cfg.model.vocab_size or task.vocab_size
    torch.manual_seed(cfg.run.seed)
    model = LM(cfg.model)
    step = 0
    if run is not None:
        found = (load_checkpoint(run),) if run.is_file() else load_latest(run / "checkpoints")
        if found is None:
            raise SystemExit(f"--run {run}: no checkpoint that loads in {run / 'checkpoints'}")
        state = found[0]
        model.load_state_dict(state["model"])
        step = state["step"]
    inputs, labels = task.train_batch(step, sequences)
    out = noise_scale(per_sequence_grads(model, inputs, labels))
    return {"step": step, **out, "G": out["G2"] ** 0.5 if out["G2"] > 0 else float("nan")}


def main() -> None:
    p = config_parser(__doc__, every_family=False)
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        help="a run folder (its latest checkpoint's model) or one checkpoint file",
    )
    p.add_argument("--sequences", type=int, default=64, help="per-sequence gradients (N)")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for config in a.configs:
        r = measure(config, a.run, a.sequences, a.override)
        rows.append(
            {"config": config.stem, "run": None if a.run is None else str(a.run), "N": a.sequences, **r}
        )
        print(f"{config.stem}: step {r['step']}  ‖G‖ {r['G']:.3g}  tr(Σ)^½ {r['trace'] ** 0.5:.3g}  "
              f"B_simple {r['B_simple']:.3g}", flush=True)  # fmt: skip
    lines = ["| config | model | ‖G‖ | tr(Σ)^½ | B_simple |", "|---|---|---:|---:|---:|"]
    for r in rows:
        model = "initialisation" if r["run"] is None else f"{r['run']} (step {r['step']})"
        lines.append(
            f"| {r['config']} | {model} | {r['G']:.3g} | {r['trace'] ** 0.5:.3g} | {r['B_simple']:.3g} |"
        )
    report(a.out, "noise_scale", f"simple noise scale, {a.sequences} sequences each", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
