"""Training curves of one or many runs in one PNG: training loss, validation (bits per byte for text,
loss otherwise), learning rate and gradient norm against training tokens.

    python scripts/plot_runs.py runs/titans-tiny --out titans.png
    python scripts/plot_runs.py runs/attention-tiny runs/titans-tiny runs/tnt-stage1-tiny --out lm.png

Each RUN is a run folder (``config.yaml`` and ``metrics.jsonl``, as ``train.py`` writes them). Tokens are
steps x ``train.batch_size`` x ``data.seq_len`` from the run's resolved ``config.yaml`` (a run resumed with
another batch size is drawn at the newest one). The validation panel shows bits per byte when every run
has it, else validation loss. A run that is still going is drawn as far as it has logged. Needs
matplotlib (extra ``memnets[plot]``, also in ``dev``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memnets.metrics import parse_metrics

LEGEND_CHARS = 80  # characters of legend text (font size 14) across the 10-inch figure


@dataclass
class RunCurves:
    name: str
    tokens_per_step: int
    train: list[dict[str, Any]]  # records with a training loss, in step order
    evals: list[dict[str, Any]]  # records with a validation loss, in step order


def load_run(folder: Path, name: str) -> RunCurves:
    """The logged records of a run folder; a ValueError names what is missing."""
    config, metrics = folder / "config.yaml", folder / "metrics.jsonl"
    if not config.is_file():
        raise ValueError(f"{folder}: no config.yaml (not a run folder, or the run never started)")
    cfg = yaml.safe_load(config.read_text())
    tokens_per_step = int(cfg["train"]["batch_size"]) * int(cfg["data"]["seq_len"])
    records = (
        [json.loads(raw) for _, raw in parse_metrics(metrics.read_bytes())[0]] if metrics.is_file() else []
    )
    train = sorted((r for r in records if "loss" in r), key=lambda r: r["step"])
    evals = sorted((r for r in records if "val_loss" in r), key=lambda r: r["step"])
    if not train and not evals:
        raise ValueError(f"{folder}: nothing logged yet in metrics.jsonl")
    return RunCurves(name, tokens_per_step, train, evals)


def run_labels(folders: list[Path]) -> list[str]:
    """The folder names, with the parent's name where two runs share one."""
    names = [f.name for f in folders]
    return [n if names.count(n) == 1 else f"{f.parent.name}/{n}" for f, n in zip(folders, names)]


def _tokens_label(value: float, _pos: Any = None) -> str:
    """Plain tick labels: 0, 750, 12k, 1.5M, 2G (no offsets, no powers of ten)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _plain(value: float, _pos: Any = None) -> str:
    return f"{value:.3g}"


# a loss spike's gradient norm is orders of magnitude above the rest: linear axes flatten every other curve
LOG_SCALE_KEYS = {"grad_norm"}


def panels(runs: list[RunCurves]) -> list[tuple[str, str, str]]:
    """(record list, key, axis title) of each panel."""
    val_key, val_title = (
        ("val_bpb", "validation bits per byte")
        if all(any("val_bpb" in r for r in run.evals) for run in runs)
        else ("val_loss", "validation loss (nats/token)")
    )
    return [
        ("train", "loss", "training loss (nats/token)"),
        ("evals", val_key, val_title),
        ("train", "lr", "learning rate"),
        ("train", "grad_norm", "gradient norm (before clipping)"),
    ]


def points(run: RunCurves, source: str, key: str) -> list[tuple[int, float]]:
    """(training tokens, value) of every record of ``run.<source>`` that has ``key``."""
    return [(r["step"] * run.tokens_per_step, r[key]) for r in getattr(run, source) if key in r]


def plot(runs: list[RunCurves], out: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_runs.py needs matplotlib: pip install 'memnets[plot]'") from None
    matplotlib.use("Agg")
    # large type: the figure stays readable as a thumbnail
    with matplotlib.rc_context({"font.size": 14, "axes.titlesize": 15, "legend.fontsize": 14}):
        _draw(runs, out)


def legend_columns(names: list[str]) -> int:
    """Columns of the legend above the panels: up to 4, as many as fit across the figure (long run names
    in 4 columns ran off both edges)."""
    return max(1, min(len(names), 4, LEGEND_CHARS // (max(map(len, names)) + 6)))


def _draw(runs: list[RunCurves], out: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    cmap = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    # runs that share a curve (the same lr schedule) stay visible through their line styles
    style = lambda i: {"color": cmap(i % cmap.N), "ls": ("-", "--", ":", "-.")[i % 4]}
    for ax, (source, key, title) in zip(axes.flat, panels(runs)):
        drawn = 0
        for i, run in enumerate(runs):
            xy = points(run, source, key)
            if not xy:
                continue
            xs, ys = zip(*xy)
            # evaluations are sparse: markers show where each one is
            marker = "o" if source == "evals" else None
            ax.plot(xs, ys, lw=2.5, marker=marker, ms=6, **style(i))
            drawn += 1
        ax.set_title(title)
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
        log = key in LOG_SCALE_KEYS and drawn
        if log:
            ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_tokens_label if log else _plain))
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(
                0.5, 0.5, "no records yet", transform=ax.transAxes, ha="center", va="center", color="gray"
            )
    handles = [plt.Line2D([], [], lw=3, **style(i)) for i in range(len(runs))]
    ncol = legend_columns([r.name for r in runs])
    fig.legend(
        handles,
        [r.name for r in runs],
        loc="upper center",
        ncol=ncol,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    rows = -(-len(runs) // ncol)  # legend rows above the panels
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.05 * rows))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def summary(run: RunCurves) -> str:
    last = run.train[-1] if run.train else None
    parts = [run.name]
    if last is not None:
        parts.append(f"step {last['step']} ({_tokens_label(last['step'] * run.tokens_per_step)} tokens)")
        parts.append(f"loss {last['loss']:.4f}")
    if run.evals:
        ev = run.evals[-1]
        parts.append(f"val_loss {ev['val_loss']:.4f} at step {ev['step']}")
        if "val_bpb" in ev:
            parts.append(f"val_bpb {ev['val_bpb']:.4f}")
    else:
        parts.append("no evaluation yet")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml + metrics.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = p.parse_args(argv)
    try:
        runs = [load_run(f, n) for f, n in zip(args.runs, run_labels(args.runs))]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out)
    for run in runs:
        print(summary(run))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
