"""Leaderboard: train several configs (or mixers) on the same data and token budget, then one table and plots.

    python scripts/compare.py configs/mqar/attention.yaml configs/mqar/titans.yaml --steps 500 --out cmp/
    python scripts/compare.py configs/mqar/_base.yaml --mixers attention,titans,gated_deltanet --out cmp/
    python scripts/compare.py --preset cpu data.path=data/tinyshakespeare.txt --out lb/  # tiny text configs
    python scripts/compare.py --preset gpu --out zoo/                           # the zoology MQAR grid
    python scripts/compare.py --preset gpu configs/mqar/titans.yaml configs/mqar/attention.yaml --out zoo/

Arguments containing ``=`` are dotted overrides applied to every run (``--steps N`` sets ``train.steps``).
``--mixers a,b`` trains the one config given once per mixer (``model.mixer=a``), named by the mixer. Each
run trains through :mod:`memnets.trainer` into ``OUT/runs/NAME`` (NAME is the config's stem, prefixed by
its folder when stems collide). A config whose mixer is not registered in this tree is skipped with a
message; one that fails to load or train is reported as ``failed`` and the rest still run.

Presets (the configs given, or every family when none is):

- ``--preset cpu``: the tiny text configs (``configs/lm/*-tiny.yaml``) on ``data.path``, at a budget of
  a few minutes per model on a laptop CPU: 150 steps of 8 x 128 tokens, evaluations every 50 steps.
- ``--preset gpu``: the zoology grid on MQAR (arXiv:2312.04927, §3 and Fig. 2) for every
  ``configs/mqar`` family: T in {64, 128, 256, 512} x d_model in {64, 128, 256}, trained on a mixture
  of 4 .. T/8 key-value pairs (up to 64, vocabulary 8192) and scored per number of pairs; run NAME-T{T}-d{d}.

A config that starts from another config's run (``train.init_from: runs/STEM``, as TNT's stage 2 starts
from stage 1) starts from this sweep's run of that config when the sweep has one, and trains after it
for the same share of the sweep's steps as its own config has of the other's (TNT's stage 2: 100 of
2000, so 8 of the CPU preset's 150), its warmup and evaluations scaled alike.

The sweep is resumable: a second call with the same ``OUT`` finishes only what is missing. A run that
finished with the same resolved config is taken from its ``OUT/runs/NAME/compare.json`` without training;
an unfinished one continues from its newest checkpoint (``run.resume=auto``); a changed model or data
is refused by the trainer and reported as failed. Ctrl-C (SIGINT, to the process or its whole group) or
SIGTERM stops the whole sweep: the run in progress finishes its step and saves a checkpoint (a second
Ctrl-C abandons an evaluation in progress), the table is written with that run marked ``unfinished`` and
the rest ``not started``, and the exit status is 128 + the signal number.

Table (``OUT/results.md``, ``.csv``, ``.json``; the Markdown one is also printed), one row per run: status,
steps, mixer, parameters, recurrent state per sequence at ``data.seq_len`` (``LM.state_size``: numbers,
and their fp32 size; the KV cache for attention), the median training throughput in tokens/s, the run's
peak memory (MB: CUDA allocator peak on GPU, peak RSS on CPU, reset at the start of each run), the final
validation loss (nats/token), bits per byte (text: beside it the unigram level of the same evaluation
tokens, memnets.data.baseline, and the difference to the sweep's attention run when it has one), MQAR
accuracy overall and per number of pairs, and the wall time (summed over calls). PNGs (finished runs
only; each names the runs it leaves out): ``compare.png`` (headline metric and throughput bars, up to 30
runs), ``curves.png`` (training and validation loss, lr and gradient norm against tokens, up to 20 runs:
``scripts/plot_runs.py`` draws any subset) and, for MQAR, ``zoology.png`` (accuracy against state size,
one panel per sequence length).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plot_runs.py, beside this file

import plot_runs

from memnets.checkpoint import checkpoint_step, list_checkpoints
from memnets.config import Config, TrainConfig, apply_overrides, load_config, load_yaml, to_dict
from memnets.data import TextTask, build_task
from memnets.data.baseline import context_free_loss
from memnets.metrics import parse_metrics
from memnets.registry import list_mixers
from memnets.run_dir import atomic_write_text
from memnets.trainer import Trainer
from memnets.validation import ConfigError

ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = "compare.json"  # in each run folder: the sweep's record of that run
CPU_BUDGET = [
    "train.steps=150",
    "train.batch_size=8",
    "data.seq_len=128",
    "train.warmup_steps=15",
    "train.eval_every=50",
    "train.eval_batches=4",
    "train.log_every=10",
    "train.checkpoint_every=50",
]
ZOO_SEQ_LENS = (64, 128, 256, 512)
ZOO_D_MODELS = (64, 128, 256)
ZOO_PAIRS = (4, 8, 16, 32, 64)
ZOO_VOCAB = 8192  # keys must be distinct up to T = 512
MAX_BARS, MAX_CURVES = 30, 20
# table columns before the per-pairs accuracies, then after them; headers carry the units
HEAD = {
    "name": "name",
    "status": "status",
    "steps": "steps",
    "mixer": "mixer",
    "params": "params",
    "state_size": "state per sequence (numbers, fp32)",
    "tokens_per_s": "tokens/s",
    "peak_mem_mb": "peak memory (MB)",
    "val_loss": "val loss (nats/token)",
    "val_bpb": "bits per byte",
    "bpb_vs_attention": "bits per byte vs attention",
    "unigram_bpb": "unigram bits per byte",
    "val_accuracy": "MQAR accuracy",
}
TAIL = {"seconds": "wall time (s)"}


@dataclass
class Entry:
    """One run of the sweep: a config file and the overrides that make it this run."""

    name: str
    path: Path
    overrides: list[str] = field(default_factory=list)
    family: str = ""  # the config or mixer a grid point belongs to (the zoology plot's colour)


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


def zoo_pairs(seq_len: int) -> list[int]:
    """The numbers of key-value pairs a length holds in the grid: 4 up to T/8."""
    return [n for n in ZOO_PAIRS if 8 * n <= seq_len]


def preset_configs(preset: str) -> list[Path]:
    if preset == "cpu":
        found = (ROOT / "configs/lm").glob("*-tiny.yaml")
        return sorted(p for p in found if not p.name.startswith("_"))
    return sorted(p for p in (ROOT / "configs/mqar").glob("*.yaml") if not p.name.startswith("_"))


def entries(paths: list[Path], mixers: list[str], preset: str | None) -> list[Entry]:
    """The sweep's runs, in order: one per config (or per mixer on the one config), times the grid."""
    if mixers:
        base = [Entry(m, paths[0], [f"model.mixer={m}"], m) for m in mixers]
    else:
        base = [Entry(n, p, [], n) for p, n in zip(paths, run_names(paths))]
    if preset != "gpu":
        return base
    return [
        Entry(
            f"{e.name}-T{T}-d{d}",
            e.path,
            [
                *e.overrides,
                f"data.seq_len={T}",
                f"model.d_model={d}",
                f"data.mqar.num_kv_pairs=[{','.join(map(str, zoo_pairs(T)))}]",
                f"data.mqar.vocab_size={ZOO_VOCAB}",
            ],
            e.family,
        )
        for e in base
        for T in ZOO_SEQ_LENS
        for d in ZOO_D_MODELS
    ]


def chain_stages(runs: list[Entry], overrides: list[str], out: Path) -> list[Entry]:
    """``runs`` with every run whose config starts from another run's config in the sweep
    (``train.init_from`` naming that config's default run folder, ``runs/STEM``) pointed at the sweep's
    run of it, placed after it, and given the same share of that run's steps as its own config has of
    the other config's (its warmup, evaluations and checkpoints scaled to its steps)."""

    def own(e: Entry) -> dict[str, Any]:  # the config's train section as written (bases resolved)
        return {
            **to_dict(TrainConfig()),
            **(apply_overrides(load_yaml(e.path), e.overrides).get("train") or {}),
        }

    by_stem = {e.path.stem: e for e in runs}
    firsts: dict[str, Entry] = {}
    chained: list[Entry] = []
    for e in runs:
        train = own(e)
        first = by_stem.get(Path(train["init_from"]).name) if train["init_from"] else None
        if first is None or first is e:
            chained.append(e)
            continue
        swept = load_config(first.path, [*overrides, *first.overrides]).train.steps
        steps = max(1, round(swept * train["steps"] / own(first)["steps"]))
        stage = [
            f"train.init_from={out / 'runs' / first.name}",
            f"train.steps={steps}",
            f"train.warmup_steps={round(steps * train['warmup_steps'] / train['steps'])}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
        ]
        firsts[e.name] = first
        chained.append(Entry(e.name, e.path, [*e.overrides, *stage], e.family))
    ordered = [e for e in chained if e.name not in firsts]
    for e in chained:  # each stage right after the run it starts from
        if e.name in firsts:
            ordered.insert([o.name for o in ordered].index(firsts[e.name].name) + 1, e)
    return ordered


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


def reset_peak_memory() -> None:
    """Start this run's peak memory from the present use: runs share the process, and both the CUDA
    allocator's peak and the RSS high-water mark (``ru_maxrss``, what the trainer logs) otherwise keep the
    largest earlier run's figure. Linux resets the latter through ``/proc/self/clear_refs`` (value 5)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with contextlib.suppress(OSError):  # not Linux: the CPU figure is the process's peak so far
        Path("/proc/self/clear_refs").write_text("5")


def run_stats(run_dir: Path) -> tuple[float | None, float | None]:
    """The median training tokens/s and the peak memory (MB) logged in ``metrics.jsonl``; None when the
    run stopped before its first log line."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None
    records = [json.loads(raw) for _, raw in parse_metrics(path.read_bytes())[0]]  # skips a torn line
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    peaks = [r["peak_mem_mb"] for r in records if "peak_mem_mb" in r]
    return (statistics.median(speeds) if speeds else None), (max(peaks) if peaks else None)


def val_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The validation figures of a run's final evaluation; bits per byte is NaN for token files without
    a byte count (a bare ``.bin``), which the table shows as missing rather than as a number."""
    return {k: v for k, v in metrics.items() if k.startswith("val_") and math.isfinite(v)}


def unigram_bpb(cfg: Config, task: TextTask | None = None) -> dict[str, float]:
    """``{"unigram_bpb": ...}``: the bits per byte of predicting the run's evaluation tokens from the
    training split's token frequencies (memnets.data.baseline), the level a text model must beat; empty
    for MQAR or where bits per byte are unknown."""
    if cfg.data.kind != "text":
        return {}
    task = task or build_task(cfg.data, cfg.run.seed)  # type: ignore[assignment]
    bpb = task.bits_per_byte(context_free_loss(task, cfg.train.batch_size, cfg.train.eval_batches))
    return {"unigram_bpb": bpb} if math.isfinite(bpb) else {}


def against_attention(rows: list[dict[str, Any]]) -> None:
    """Give every finished text row its bits per byte relative to the sweep's first finished attention
    run (``bpb_vs_attention``, e.g. 0.05 = 5% more bits per byte), when the sweep has one."""
    done = [r for r in rows if r["status"] == "finished" and r.get("val_bpb") is not None]
    ref = next((r["val_bpb"] for r in done if r.get("mixer") == "attention"), None)
    for r in done if ref else []:
        r["bpb_vs_attention"] = r["val_bpb"] / ref - 1.0


def train_one(cfg: Config, entry: Entry) -> tuple[dict[str, Any], int | None]:
    """The run's table row and the signal that stopped it (None when it finished)."""
    run_dir = Path(cfg.run.dir)
    # as resolved before the trainer fills in what the data decides, in its JSON form (tuples as lists)
    wanted = json.loads(json.dumps(to_dict(cfg)))
    earlier = _earlier(run_dir)
    if earlier is not None and earlier["status"] == "finished" and earlier["config"] == wanted:
        print(f"=== {entry.name}: finished in an earlier call with the same config; its results are reused")
        if "unigram_bpb" not in earlier["row"]:  # a row written before the column existed
            return {**earlier["row"], **unigram_bpb(cfg)}, None
        return earlier["row"], None
    print(f"=== {entry.name}: {entry.path} {' '.join(entry.overrides)}".rstrip())
    reset_peak_memory()
    trainer = Trainer(cfg)
    start = time.time()
    try:
        result = trainer.run()
    except BaseException:
        trainer.close()  # a signal before the loop took over: the run folder's lock must not outlive it
        raise
    tokens_per_s, peak = run_stats(run_dir)
    row = {
        "name": entry.name,
        "family": entry.family,
        "config": str(entry.path),
        "status": "finished" if result.preempted is None else "unfinished",
        "mixer": "+".join(dict.fromkeys(cfg.model.layer_mixers())),
        "task": cfg.data.kind,
        "steps": result.step,
        "target_steps": cfg.train.steps,
        **val_metrics(result.metrics),
        **unigram_bpb(cfg, trainer.task),  # type: ignore[arg-type]
        "params": trainer.model.num_params(),
        "state_size": trainer.model.state_size(cfg.data.seq_len),
        "seq_len": cfg.data.seq_len,
        "d_model": cfg.model.d_model,
        "tokens_per_s": tokens_per_s,
        "peak_mem_mb": peak,
        "seconds": time.time() - start + (earlier["row"]["seconds"] if earlier is not None else 0.0),
        "run_dir": str(run_dir),
    }
    state = {"status": row["status"], "config": wanted, "row": row}
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2))
    return row, result.preempted


def untrained(entry: Entry, run_dir: Path) -> dict[str, Any]:
    """The row of a run the sweep did not reach this call: unfinished when an earlier call saved a
    checkpoint, else not started."""
    row = {"name": entry.name, "family": entry.family, "config": str(entry.path), "run_dir": str(run_dir)}
    saved = list_checkpoints(run_dir / "checkpoints")
    if not saved:
        return {**row, "status": "not started"}
    return {**row, "status": "unfinished", "steps": checkpoint_step(saved[-1])}


# ----------------------------------------------------------------------------------------------------
# the table


def _kv(key: str) -> int:
    return int(key.removeprefix("val_accuracy_kv"))


def columns(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Key -> header of every column some row has a value for: per-pairs accuracies in pair order."""
    kv = sorted({k for r in rows for k in r if k.startswith("val_accuracy_kv")}, key=_kv)
    every = {**HEAD, **{k: f"accuracy {_kv(k)} pairs" for k in kv}, **TAIL}
    return {k: h for k, h in every.items() if any(r.get(k) is not None for r in rows)}


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "state_size":  # the state is kept in float32
        return f"{_si(value)} ({_si(4 * value)}B)"
    if key in ("params", "tokens_per_s"):
        return _si(value)
    if key == "bpb_vs_attention":
        return f"{value:+.1%}"
    if key in ("peak_mem_mb", "seconds"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: one row per run, the columns some run has."""
    cols = columns(rows)
    lines = ["| " + " | ".join(cols.values()) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k in cols) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# the plots


def headline(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The metric the bars compare (key, axis title): accuracy when every finished run has one, else
    bits per byte when every one has that, else validation loss."""
    done = [r for r in rows if r["status"] == "finished"]
    if done and all(r.get("val_accuracy") is not None for r in done):
        return "val_accuracy", "validation accuracy"
    if done and all(r.get("val_bpb") is not None for r in done):
        return "val_bpb", "validation bits per byte"
    return "val_loss", "validation loss (nats/token)"


def plotted(rows: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows a plot draws (finished, with the metric) and a note for each one it leaves out."""
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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, left_out: list[str], path: Path) -> None:
    bottom = 0.0
    if left_out:
        note = (
            "not plotted: "
            + ", ".join(left_out[:8])
            + (f" and {len(left_out) - 8} more" if len(left_out) > 8 else "")
        )
        fig.text(0.01, 0.01, note, fontsize=11, color="dimgray")
        bottom = 0.07
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt = _pyplot()
    plt.close(fig)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Bars of the headline metric and of throughput, one bar per finished run; False (and no file)
    when no run has a figure to draw or there are too many to read."""
    metric, label = headline(rows)
    drawn, left_out = plotted(rows, metric)
    if not drawn or len(drawn) > MAX_BARS:
        return False
    plt = _pyplot()
    names = [r["name"] for r in drawn]
    with plt.rc_context({"font.size": 13}):
        fig, axes = plt.subplots(1, 2, figsize=(max(10, 0.7 * len(drawn) + 6), 5.5))
        better = "higher" if metric == "val_accuracy" else "lower"
        bars = ((axes[0], metric, label, better), (axes[1], "tokens_per_s", "training tokens/s", "higher"))
        for ax, key, title, direction in bars:
            drawn_bars = ax.bar(names, [r.get(key) or 0.0 for r in drawn], color="tab:blue")
            # the figures on the bars: close results stay readable in a thumbnail
            ax.bar_label(drawn_bars, labels=[_cell(key, r.get(key)) for r in drawn], fontsize=11)
            ax.margins(y=0.1)  # room for the figure above the tallest bar
            ax.set_title(f"{title} ({direction} is better)")
            ax.set_ylabel(title)
            ax.tick_params(axis="x", rotation=60)
            ax.grid(axis="y", alpha=0.3)
        if metric == "val_accuracy":
            axes[0].set_ylim(0, 1.1)  # the figure above a bar at 1 stays inside
        _finish(fig, left_out, path)
    return True


def plot_curves(rows: list[dict[str, Any]], path: Path) -> bool:
    """Loss, validation, lr and gradient norm against training tokens (``plot_runs.py``'s figure) for
    every run that logged something; False when none did or there are more than MAX_CURVES."""
    runs = []
    for r in rows:
        try:
            runs.append(plot_runs.load_run(Path(r["run_dir"]), r["name"]))
        except ValueError:  # not started, or stopped before its first log line
            continue
    if not runs or len(runs) > MAX_CURVES:
        return False
    plot_runs.plot(runs, path)
    return True


def plot_zoology(rows: list[dict[str, Any]], path: Path) -> bool:
    """MQAR accuracy against state size (numbers, log scale), one panel per sequence length and one line
    per family through its model widths; False when no finished run has an accuracy."""
    drawn, left_out = plotted(rows, "val_accuracy")
    drawn = [r for r in drawn if r.get("state_size")]
    if not drawn:
        return False
    plt = _pyplot()
    seq_lens = sorted({r["seq_len"] for r in drawn})
    families = list(dict.fromkeys(r.get("family") or r["name"] for r in drawn))
    cmap = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    with plt.rc_context({"font.size": 13, "legend.fontsize": 12}):
        fig, axes = plt.subplots(1, len(seq_lens), figsize=(4.5 * len(seq_lens) + 3, 5), squeeze=False)
        for ax, T in zip(axes[0], seq_lens):
            for i, fam in enumerate(families):
                pts = sorted(
                    (r["state_size"], r["val_accuracy"])
                    for r in drawn
                    if r["seq_len"] == T and (r.get("family") or r["name"]) == fam
                )
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=7, lw=2, color=cmap(i % cmap.N), label=fam)
            ax.set_xscale("log")
            ax.set(ylim=(-0.02, 1.02), title=f"T = {T}", xlabel="state size (numbers per sequence)")
            ax.grid(alpha=0.3, which="both")
        axes[0][0].set_ylabel("MQAR accuracy")
        handles, labels = [], []
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="center right", frameon=False)
        fig.subplots_adjust(right=0.8)
        _finish(fig, left_out, path)
    return True


# ----------------------------------------------------------------------------------------------------
# the sweep


def sweep(
    runs: list[Entry], overrides: list[str], out: Path
) -> tuple[list[dict[str, Any]], list[dict[str, str]], int | None]:
    """Every run's row (in order), the skipped ones, and the signal that stopped the sweep."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    stopped = None
    for entry in runs:
        run_dir = out / "runs" / entry.name
        if stopped is not None:
            rows.append(untrained(entry, run_dir))
            continue
        try:
            missing = missing_mixers(entry.path, [*overrides, *entry.overrides])
            if missing:
                reason = f"mixer {', '.join(missing)} is not registered in this tree (registered: {', '.join(list_mixers())})"
                skipped.append({"name": entry.name, "config": str(entry.path), "reason": reason})
                print(f"skipping {entry.name}: {reason}")
                continue
            cfg = load_config(
                entry.path, [*overrides, *entry.overrides, f"run.dir={run_dir}", f"run.name={entry.name}"]
            )
            row, stopped = train_one(cfg, entry)
            rows.append(row)
        except SweepStopped as e:
            stopped = e.signum
            if not rows or rows[-1]["name"] != entry.name:  # the signal may land after the row was taken
                rows.append(untrained(entry, run_dir))
        except (ConfigError, ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as e:
            # one broken config (bad option, divergence, out of memory) must not lose the others' results
            error = f"{type(e).__name__}: {e}"
            rows.append({**untrained(entry, run_dir), "status": "failed", "error": error})
            print(f"FAILED {entry.name}: {e}", file=sys.stderr)
        if stopped is not None:
            print(f"received {signal.Signals(stopped).name}: stopping the sweep")
    return rows, skipped, stopped


def write_outputs(rows: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> list[Path]:
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    wrote = [out / "results.json", out / "results.csv"]
    if not rows:
        return wrote
    atomic_write_text(out / "results.md", table(rows) + "\n")
    wrote.append(out / "results.md")
    print()
    print(table(rows))
    for name, draw in (("compare.png", plot), ("curves.png", plot_curves), ("zoology.png", plot_zoology)):
        if draw(rows, out / name):
            wrote.append(out / name)
        elif name != "zoology.png" or any(r.get("task") == "mqar" for r in rows):
            print(f"{name} not written: no run to draw, or too many for one figure")
    return wrote


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", help="config files, then optional dotted overrides (key.sub=value)")
    p.add_argument("--steps", type=int, default=None, help="train.steps for every run")
    p.add_argument("--mixers", default=None, help="comma list: train the one config given once per mixer")
    p.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="see above")
    p.add_argument(
        "--out", type=Path, required=True, help="folder for runs/, results.md/.json/.csv, PNGs (resumed)"
    )
    args = p.parse_intermixed_args(argv)
    overrides = [i for i in args.items if "=" in i]
    paths = [Path(i) for i in args.items if "=" not in i]
    if args.preset and not paths:
        paths = preset_configs(args.preset)
    if not paths:
        p.error("give at least one config file (or --preset)")
    mixers = [m for m in (args.mixers or "").split(",") if m]
    if mixers and len(paths) != 1:
        p.error(f"--mixers trains one config once per mixer; got {len(paths)} configs")
    if args.preset == "cpu":
        if not any(o.startswith("data.path=") for o in overrides):
            p.error("--preset cpu trains the tiny text configs: give the corpus as data.path=FILE")
        overrides = [*CPU_BUDGET, *overrides]  # the user's overrides come later and win
    if args.steps is not None:
        if args.steps < 1:
            p.error(f"--steps must be >= 1, got {args.steps}")
        overrides.append(f"train.steps={args.steps}")
    overrides.append("run.resume=auto")  # a second call continues the sweep
    try:
        runs = chain_stages(entries(paths, mixers, args.preset), overrides, args.out)
    except (ValueError, ConfigError) as e:
        p.error(str(e))

    args.out.mkdir(parents=True, exist_ok=True)
    handlers = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rows, skipped, stopped = sweep(runs, overrides, args.out)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)

    against_attention(rows)
    failed = [{"config": r["config"], "error": r["error"]} for r in rows if r["status"] == "failed"]
    summary = {
        "overrides": overrides,
        "stopped_by": signal.Signals(stopped).name if stopped is not None else None,
        "results": rows,
        "skipped": skipped,
        "failed": failed,
    }
    wrote = write_outputs(rows, summary, args.out)
    for s in skipped:
        print(f"skipped {s['name']}: {s['reason']}")
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
