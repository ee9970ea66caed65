"""Train several configs on the same task and compare them in one table and one plot.

    python scripts/compare.py configs/mqar/attention.yaml configs/mqar/titans.yaml --steps 500 --out cmp/
    python scripts/compare.py configs/lm/*-tiny.yaml data.path=notes.txt --steps 300 --out cmp-lm/

Arguments containing ``=`` are dotted overrides applied to every config (``--steps N`` sets
``train.steps``). Each config trains through :mod:`memnets.trainer` into ``OUT/runs/NAME`` (NAME is the
file's stem, prefixed by its folder when stems collide). A config whose mixer is not registered in this
tree is skipped with a message; one that fails to load or train is reported and the rest still run.
``--resume`` continues runs already in ``OUT/runs`` (a finished one is only evaluated again).

For each run the table gives the final evaluation (MQAR: ``val_accuracy``; text: ``val_loss`` and
``val_bpb``), parameters, recurrent state per sequence at ``data.seq_len`` (``LM.state_size``: the KV
cache for attention), the median training throughput in tokens/s from ``metrics.jsonl`` and the wall
time. ``OUT/results.json``, ``OUT/results.csv`` and ``OUT/compare.png`` hold the same.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from memnets.config import apply_overrides, load_config, load_yaml
from memnets.registry import list_mixers
from memnets.trainer import Trainer
from memnets.validation import ConfigError

COLUMNS = (
    "name",
    "mixer",
    "task",
    "val_loss",
    "val_accuracy",
    "val_bpb",
    "params",
    "state_size",
    "tokens_per_s",
    "seconds",
)


def run_names(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    names = [s if stems.count(s) == 1 else f"{p.parent.name}-{s}" for p, s in zip(paths, stems)]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"configs given twice: {sorted(dup)}")
    return names


def missing_mixers(path: Path, overrides: list[str]) -> list[str]:
    """Mixers the config (with overrides) names that are not registered in this tree."""
    data = apply_overrides(load_yaml(path), overrides)
    mixer = (data.get("model") or {}).get("mixer", "attention")
    names = [mixer] if isinstance(mixer, str) else list(mixer)
    registered = set(list_mixers())
    return sorted({n for n in names if n not in registered})


def train_one(path: Path, name: str, overrides: list[str], out: Path) -> dict[str, Any]:
    run_dir = out / "runs" / name
    cfg = load_config(path, [*overrides, f"run.dir={run_dir}", f"run.name={name}"])
    trainer = Trainer(cfg)
    start = time.time()
    result = trainer.run()
    seconds = time.time() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    mixers = cfg.model.layer_mixers()
    return {
        "name": name,
        "config": str(path),
        "mixer": "+".join(dict.fromkeys(mixers)),
        "task": cfg.data.kind,
        "steps": result.step,
        **{k: v for k, v in result.metrics.items() if k.startswith("val_")},
        "params": trainer.model.num_params(),
        "state_size": trainer.model.state_size(cfg.data.seq_len),
        "seq_len": cfg.data.seq_len,
        "tokens_per_s": statistics.median(speeds) if speeds else None,
        "seconds": seconds,
        "run_dir": str(run_dir),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of the headline metric (accuracy when every run has one, else validation loss) and of
    throughput, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "val_accuracy" if all(r.get("val_accuracy") is not None for r in rows) else "val_loss"
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 3.8))
    for ax, key, label in ((axes[0], metric, metric), (axes[1], "tokens_per_s", "training tokens/s")):
        values = [r.get(key) or 0.0 for r in rows]
        ax.bar(names, values, color="tab:blue")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    if metric == "val_accuracy":
        axes[0].set_ylim(0, 1)
    for i, r in enumerate(rows):  # the recall-vs-state view: state size on each bar
        if r.get("state_size") is not None:
            axes[0].annotate(
                f"state {r['state_size']:,}",
                (i, r.get(metric) or 0.0),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", help="config files, then optional dotted overrides (key.sub=value)")
    p.add_argument("--steps", type=int, default=None, help="train.steps for every config")
    p.add_argument("--out", type=Path, required=True, help="folder for runs/, results.json/.csv, compare.png")
    p.add_argument(
        "--resume", action="store_true", help="continue (or reuse, when finished) runs already in OUT/runs"
    )
    args = p.parse_intermixed_args(argv)
    overrides = [i for i in args.items if "=" in i]
    paths = [Path(i) for i in args.items if "=" not in i]
    if not paths:
        p.error("give at least one config file")
    if args.steps is not None:
        if args.steps < 1:
            p.error(f"--steps must be >= 1, got {args.steps}")
        overrides.append(f"train.steps={args.steps}")
    if args.resume:
        overrides.append("run.resume=auto")
    try:
        names = run_names(paths)
    except ValueError as e:
        p.error(str(e))

    args.out.mkdir(parents=True, exist_ok=True)
    rows, skipped, failed = [], [], []
    for path, name in zip(paths, names):
        try:
            missing = missing_mixers(path, overrides)
        except ConfigError as e:
            failed.append({"config": str(path), "error": str(e)})
            print(f"FAILED {path}: {e}", file=sys.stderr)
            continue
        if missing:
            reason = f"mixer {', '.join(missing)} is not registered in this tree (registered: {', '.join(list_mixers())})"
            skipped.append({"config": str(path), "reason": reason})
            print(f"skipping {path}: {reason}")
            continue
        print(f"=== {name}: {path}")
        try:
            rows.append(train_one(path, name, overrides, args.out))
        except (ConfigError, ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
            # one broken config (bad option, divergence, out of memory) must not lose the others' results
            failed.append({"config": str(path), "error": f"{type(e).__name__}: {e}"})
            print(f"FAILED {path}: {e}", file=sys.stderr)

    summary = {"overrides": overrides, "results": rows, "skipped": skipped, "failed": failed}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (args.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        print()
        print(table(rows))
        plot(rows, args.out / "compare.png")
    for s in skipped:
        print(f"skipped {s['config']}: {s['reason']}")
    for fl in failed:
        print(f"failed {fl['config']}: {fl['error']}")
    print(
        f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}" + (", compare.png" if rows else "")
    )
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
