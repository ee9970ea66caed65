"""Train several configs on the same task and compare them in one table and one plot.

    python scripts/compare.py configs/mqar/attention.yaml configs/mqar/titans.yaml --steps 500 --out cmp/
    python scripts/compare.py configs/lm/*-tiny.yaml data.path=notes.txt --steps 300 --out cmp-lm/

Arguments containing ``=`` are dotted overrides applied to every config (``--steps N`` sets
``train.steps``). Each config trains through :mod:`memnets.trainer` into ``OUT/runs/NAME`` (NAME is the
file's stem, prefixed by its folder when stems collide). A config whose mixer is not registered in this
tree is skipped with a message; one that fails to load or train is reported and the rest still run.

The sweep is resumable: a second call with the same ``OUT`` finishes only what is missing. A run that
finished with the same resolved config is taken from its ``OUT/runs/NAME/compare.json`` without training;
an unfinished one continues from its newest checkpoint (``run.resume=auto``); a changed model or data
is refused by the trainer and reported as failed. Ctrl-C (SIGINT) or SIGTERM stops the whole sweep: the
run in progress finishes its step and saves a checkpoint (a second Ctrl-C abandons an evaluation in
progress), the table is written with that run marked ``unfinished`` and the rest ``not started``, and
the exit status is 128 + the signal number.

For each run the table gives its status, the steps done, the final evaluation (MQAR: ``val_accuracy``;
text: ``val_loss`` and ``val_bpb``), parameters, recurrent state per sequence at ``data.seq_len``
(``LM.state_size``, in numbers: the KV cache for attention), the median training throughput in tokens/s
from ``metrics.jsonl`` and the wall time (summed over calls). ``OUT/results.json`` and
``OUT/results.csv`` hold the same; ``OUT/compare.png`` draws the finished runs only (an unfinished or
failed run has no final figure; the plot names the runs it leaves out).
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from memnets.checkpoint import checkpoint_step, list_checkpoints
from memnets.config import Config, apply_overrides, load_config, load_yaml, to_dict
from memnets.metrics import parse_metrics
from memnets.registry import list_mixers
from memnets.run_dir import atomic_write_text
from memnets.trainer import Trainer
from memnets.validation import ConfigError

COLUMNS = (
    "name",
    "status",
    "steps",
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
STATE_FILE = "compare.json"  # in each run folder: the sweep's record of that run


class SweepStopped(BaseException):
    """SIGINT/SIGTERM outside a training loop (loading a config or data, between runs). A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    raise SweepStopped(signum)


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


def _earlier(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _median_speed(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():  # stopped before its first log line
        return None
    records = [json.loads(raw) for _, raw in parse_metrics(path.read_bytes())[0]]  # skips a torn line
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return statistics.median(speeds) if speeds else None


def train_one(cfg: Config, path: Path, name: str) -> tuple[dict[str, Any], int | None]:
    """The run's table row and the signal that stopped it (None when it finished)."""
    run_dir = Path(cfg.run.dir)
    # as resolved before the trainer fills in what the data decides, in its JSON form (tuples as lists)
    wanted = json.loads(json.dumps(to_dict(cfg)))
    earlier = _earlier(run_dir)
    if earlier is not None and earlier["status"] == "finished" and earlier["config"] == wanted:
        print(f"=== {name}: finished in an earlier call with the same config; its results are reused")
        return earlier["row"], None
    print(f"=== {name}: {path}")
    trainer = Trainer(cfg)
    start = time.time()
    try:
        result = trainer.run()
    except BaseException:
        trainer.close()  # a signal before the loop took over: the run folder's lock must not outlive it
        raise
    mixers = cfg.model.layer_mixers()
    row = {
        "name": name,
        "config": str(path),
        "status": "finished" if result.preempted is None else "unfinished",
        "mixer": "+".join(dict.fromkeys(mixers)),
        "task": cfg.data.kind,
        "steps": result.step,
        "target_steps": cfg.train.steps,
        **{k: v for k, v in result.metrics.items() if k.startswith("val_")},
        "params": trainer.model.num_params(),
        "state_size": trainer.model.state_size(cfg.data.seq_len),
        "seq_len": cfg.data.seq_len,
        "tokens_per_s": _median_speed(run_dir),
        "seconds": time.time() - start + (earlier["row"]["seconds"] if earlier is not None else 0.0),
        "run_dir": str(run_dir),
    }
    state = {"status": row["status"], "config": wanted, "row": row}
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2))
    return row, result.preempted


def untrained(path: Path, name: str, run_dir: Path) -> dict[str, Any]:
    """The row of a run the sweep did not reach this call: unfinished when an earlier call saved a
    checkpoint, else not started."""
    saved = list_checkpoints(run_dir / "checkpoints")
    if not saved:
        return {"name": name, "config": str(path), "status": "not started", "run_dir": str(run_dir)}
    return {
        "name": name,
        "config": str(path),
        "status": "unfinished",
        "steps": checkpoint_step(saved[-1]),
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


def headline(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The metric the plot compares (key, axis title): accuracy when every finished run has one, else
    bits per byte when every one has that, else validation loss."""
    done = [r for r in rows if r["status"] == "finished"]
    if done and all(r.get("val_accuracy") is not None for r in done):
        return "val_accuracy", "validation accuracy"
    if done and all(r.get("val_bpb") is not None for r in done):
        return "val_bpb", "validation bits per byte"
    return "val_loss", "validation loss (nats/token)"


def plotted(rows: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows the plot draws (finished, with the metric) and a note for each one it leaves out."""
    drawn, left_out = [], []
    for r in rows:
        if r["status"] == "finished" and r.get(metric) is not None:
            drawn.append(r)
        elif r["status"] == "finished":
            left_out.append(f"{r['name']} (no {metric})")
        elif r["status"] == "unfinished" and r.get("steps") is not None:
            left_out.append(f"{r['name']} (unfinished at step {r['steps']})")
        else:
            left_out.append(f"{r['name']} ({r['status']})")
    return drawn, left_out


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Bars of the headline metric and of throughput, one bar per finished run; False (and no file)
    when no run has a figure to draw."""
    metric, label = headline(rows)
    drawn, left_out = plotted(rows, metric)
    if not drawn:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in drawn]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(drawn) + 4), 4.2))
    for ax, key, title in ((axes[0], metric, label), (axes[1], "tokens_per_s", "training tokens/s")):
        ax.bar(names, [r.get(key) or 0.0 for r in drawn], color="tab:blue")
        ax.set_ylabel(title)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    if metric == "val_accuracy":
        axes[0].set_ylim(0, 1)
    for i, r in enumerate(drawn):  # the recall-vs-state view: state size on each bar
        if r.get("state_size") is not None:
            axes[0].annotate(
                f"state {r['state_size']:,} numbers", (i, r[metric]), ha="center", va="bottom", fontsize=8
            )
    bottom = 0.0
    if left_out:
        fig.text(0.01, 0.01, "not plotted: " + ", ".join(left_out), fontsize=10, color="dimgray")
        bottom = 0.06
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def sweep(
    paths: list[Path], names: list[str], overrides: list[str], out: Path
) -> tuple[list[dict[str, Any]], list[dict[str, str]], int | None]:
    """Every config's row (in order), the skipped configs, and the signal that stopped the sweep."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    stopped = None
    for path, name in zip(paths, names):
        run_dir = out / "runs" / name
        if stopped is not None:
            rows.append(untrained(path, name, run_dir))
            continue
        try:
            missing = missing_mixers(path, overrides)
            if missing:
                reason = f"mixer {', '.join(missing)} is not registered in this tree (registered: {', '.join(list_mixers())})"
                skipped.append({"config": str(path), "reason": reason})
                print(f"skipping {path}: {reason}")
                continue
            cfg = load_config(path, [*overrides, f"run.dir={run_dir}", f"run.name={name}"])
            row, stopped = train_one(cfg, path, name)
            rows.append(row)
        except SweepStopped as e:
            stopped = e.signum
            if not rows or rows[-1]["name"] != name:  # the signal may land after the row was taken
                rows.append(untrained(path, name, run_dir))
        except (ConfigError, ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
            # one broken config (bad option, divergence, out of memory) must not lose the others' results
            error = f"{type(e).__name__}: {e}"
            rows.append(
                {
                    "name": name,
                    "config": str(path),
                    "status": "failed",
                    "error": error,
                    "run_dir": str(run_dir),
                }
            )
            print(f"FAILED {path}: {e}", file=sys.stderr)
        if stopped is not None:
            print(f"received {signal.Signals(stopped).name}: stopping the sweep")
    return rows, skipped, stopped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", help="config files, then optional dotted overrides (key.sub=value)")
    p.add_argument("--steps", type=int, default=None, help="train.steps for every config")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for runs/, results.json/.csv, compare.png (resumed)"
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
    overrides.append("run.resume=auto")  # a second call continues the sweep
    try:
        names = run_names(paths)
    except ValueError as e:
        p.error(str(e))

    args.out.mkdir(parents=True, exist_ok=True)
    handlers = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rows, skipped, stopped = sweep(paths, names, overrides, args.out)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)

    failed = [{"config": r["config"], "error": r["error"]} for r in rows if r["status"] == "failed"]
    summary = {
        "overrides": overrides,
        "stopped_by": signal.Signals(stopped).name if stopped is not None else None,
        "results": rows,
        "skipped": skipped,
        "failed": failed,
    }
    atomic_write_text(args.out / "results.json", json.dumps(summary, indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (args.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    wrote = [args.out / "results.json", args.out / "results.csv"]
    if rows:
        print()
        print(table(rows))
        if plot(rows, args.out / "compare.png"):
            wrote.append(args.out / "compare.png")
        else:
            print("no finished run to plot: compare.png not written")
    for s in skipped:
        print(f"skipped {s['config']}: {s['reason']}")
    for fl in failed:
        print(f"failed {fl['config']}: {fl['error']}")
    print("wrote " + ", ".join(map(str, wrote)))
    if stopped is not None:
        left = [r["name"] for r in rows if r["status"] in ("unfinished", "not started")]
        print(
            f"sweep stopped by {signal.Signals(stopped).name}; "
            + (
                f"still to run: {', '.join(left)} (the same command finishes the sweep)"
                if left
                else "every run was done"
            )
        )
        return 128 + stopped
    return 1 if failed or not any(r["status"] == "finished" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
