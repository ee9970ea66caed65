"""Chunk-size profiling: speed and memory (and optionally MQAR quality) of memory mixers against the
chunk size and the sequence length, on the present device and backend.

    python scripts/profile_chunks.py --mixers titans,tnt --device cpu --out runs/profile
    python scripts/profile_chunks.py --mixers titans --chunk-sizes 16,32,64,128,256 --seq-lens 1024,4096
    python scripts/profile_chunks.py --configs configs/mqar/titans.yaml --train-steps 300
    python scripts/profile_chunks.py --mixers titans --train-steps 200 --train-overrides train.batch_size=32

For every (target, T, chunk size): fwd (inference, no_grad) and fwd+bwd time as median [p20, p80]
(``triton.testing.do_bench`` on GPU, ``torch.utils.benchmark`` on CPU; see benchmarks/timing.py),
tokens/s, model TFLOP/s and % of the datasheet peak on GPU (benchmarks/flops.py; "n/a" where a mixer
has no formula), memory (GPU: peak MiB during fwd+bwd; CPU: MiB saved for backward). A target is a
registered mixer (built alone with d_model = heads·head_dim) or a whole config (its LM; the chunk size
is set on every layer mixer that takes one). Mixers without a ``chunk_size`` option are timed once per
length. ``--train-steps N`` also trains each setting for N steps on MQAR (configs/mqar/_base.yaml, or
the config itself) with memnets.trainer and reports the validation loss and accuracy.

Writes DIR/profile.csv, DIR/profile.json (rows + environment header), DIR/profile.md and PNG plots: time vs chunk
size, tokens/s vs sequence length, and (with --train-steps) validation loss vs chunk size.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.env import configure_threads, environment, resolve_device, title  # noqa: E402
from benchmarks.registry import Bench, Shape, lm_case, mixer_case  # noqa: E402
from benchmarks.run import DTYPES, run_benches, use_tree  # noqa: E402
from benchmarks.timing import Budget  # noqa: E402

DEFAULTS = {
    "cpu": {"chunk_sizes": "16,32,64", "seq_lens": "64,128", "batch": 1, "heads": 2, "head_dim": 32},
    "cuda": {
        "chunk_sizes": "16,32,64,128,256",
        "seq_lens": "1024,2048,4096,8192",
        "batch": 4,
        "heads": 8,
        "head_dim": 64,
    },
}
FIELDS = [
    "target",
    "kind",
    "chunk_size",
    "seq_len",
    "batch",
    "fwd_ms",
    "fwd_p20_ms",
    "fwd_p80_ms",
    "fwdbwd_ms",
    "fwdbwd_p20_ms",
    "fwdbwd_p80_ms",
    "fwd_tokens_per_s",
    "fwdbwd_tokens_per_s",
    "fwd_tflops",
    "fwdbwd_tflops",
    "fwdbwd_pct_peak",
    "fwdbwd_pct_gemm",
    "peak_mem_mb",
    "saved_mb",
    "val_loss",
    "val_accuracy",
    "train_s",
    "status",
]


class Target:
    """One thing to profile: a registered mixer or a config file's LM."""

    def __init__(self, kind: str, name: str, cfg: Any = None) -> None:
        self.kind, self.name, self.cfg = kind, name, cfg

    def chunk_mixers(self, option: str) -> list[str]:
        """The mixers whose ``option`` (``chunk_size`` by default) the sweep sets."""
        from memnets.registry import mixer_options

        names = [self.name] if self.kind == "mixer" else sorted(set(self.cfg.model.layer_mixers()))
        return [n for n in names if option in mixer_options(n)]

    def bench(self, args: argparse.Namespace) -> Bench:
        if self.kind == "mixer":
            return Bench(self.name, "mixer", mixer_case(self.name))

        def build(shape: Shape, device: torch.device, dtype: torch.dtype, overrides: dict[str, Any]) -> Any:
            import copy

            model_cfg = copy.deepcopy(self.cfg.model)
            model_cfg.vocab_size = model_cfg.vocab_size or _vocab(self.cfg)
            for m in self.chunk_mixers(args.chunk_option):
                if args.chunk_option in overrides:
                    model_cfg.mixer_options.setdefault(m, {})[args.chunk_option] = overrides[
                        args.chunk_option
                    ]
            return lm_case(model_cfg, shape, device, dtype)

        return Bench(self.name, "config", build)


def _vocab(cfg: Any) -> int:
    return cfg.data.mqar.vocab_size if cfg.data.kind == "mqar" else 256


def resolve_targets(args: argparse.Namespace) -> list[Target]:
    from memnets import list_mixers
    from memnets.config import load_config

    registered = list_mixers()
    targets = []
    for name in filter(None, (args.mixers or "").split(",")):
        if name not in registered:
            print(
                f"mixer '{name}' is not registered in this tree (registered: {', '.join(registered)}); skipping it",
                flush=True,
            )
            continue
        targets.append(Target("mixer", name))
    for path in filter(None, (args.configs or "").split(",")):
        targets.append(Target("config", path, load_config(path)))
    return targets


def _train(
    target: Target, chunk: int | None, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Train ``target`` for ``args.train_steps`` steps on MQAR and return the final validation metrics."""
    import time

    from memnets.config import load_config
    from memnets.trainer import Trainer

    steps = args.train_steps
    tag = f"{Path(target.name).stem}-c{chunk if chunk is not None else 'na'}"
    over = [
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        f"train.log_every={max(1, steps // 4)}",
        f"train.checkpoint_every={steps}",
        f"train.warmup_steps={min(100, steps // 10)}",
        f"train.device={device}",
        "train.early_stop_accuracy=null",
        "data.mqar.num_test=256",
        f"run.dir={Path(args.out) / 'runs' / tag}",
        "run.resume=never",
    ]
    if target.kind == "mixer":
        path = ROOT / "configs" / "mqar" / "_base.yaml"
        over.append(f"model.mixer={target.name}")
    else:
        path = Path(target.name)
    if chunk is not None:
        opt = args.chunk_option
        over += [f"model.mixer_options.{m}.{opt}={chunk}" for m in target.chunk_mixers(opt)]
    cfg = load_config(path, over + list(args.train_overrides))
    cfg.run.name = tag
    trainer = Trainer(cfg)
    logging.getLogger("memnets").setLevel(logging.WARNING)
    start = time.perf_counter()
    result = trainer.run()
    return {
        "val_loss": result.metrics.get("val_loss"),
        "val_accuracy": result.metrics.get("val_accuracy"),
        "train_s": time.perf_counter() - start,
    }


def profile(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    device = resolve_device(args.device)
    defaults = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    chunks = [int(c) for c in str(args.chunk_sizes).split(",")]
    seq_lens = [int(t) for t in str(args.seq_lens).split(",")]
    budget = Budget.fast() if args.fast else Budget()
    env = environment(device)
    env["dtype"] = str(dtype).removeprefix("torch.")
    env["chunk_option"] = args.chunk_option
    print(f"# {title(env)} | dtype {env['dtype']}", flush=True)

    rows = []
    for target in resolve_targets(args):
        sweep: list[int | None] = chunks if target.chunk_mixers(args.chunk_option) else [None]
        if sweep == [None]:
            print(f"{target.name}: no {args.chunk_option} option; timed once per sequence length", flush=True)
        bench = target.bench(args)
        for chunk in sweep:
            overrides = {} if chunk is None else {args.chunk_option: chunk}
            shapes = [Shape(args.batch, T, args.heads, args.head_dim) for T in seq_lens]
            timed = run_benches([bench], shapes, device, dtype, ("fwd", "fwdbwd"), budget, overrides)
            trained = _safe_train(target, chunk, args, device) if args.train_steps else {}
            for T in seq_lens:
                row = _merge(target, chunk, T, args.batch, [r for r in timed if r["T"] == T])
                row.update(trained)
                rows.append(row)
                print(format_table([row], header=False), flush=True)
    return rows, env


def _safe_train(
    target: Target, chunk: int | None, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    try:
        return _train(target, chunk, args, device)
    except Exception as e:  # one setting failing to train must not lose the rest of the sweep
        return {"train_status": f"train failed: {type(e).__name__}: {e}"}


def _merge(target: Target, chunk: int | None, T: int, B: int, timed: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"target": target.name, "kind": target.kind, "chunk_size": chunk, "seq_len": T}
    row["batch"] = B
    statuses = []
    for r in timed:
        m = r["mode"]
        statuses.append(r["status"])
        if r["status"] != "ok":
            continue
        row[f"{m}_ms"], row[f"{m}_p20_ms"], row[f"{m}_p80_ms"] = r["median_ms"], r["p20_ms"], r["p80_ms"]
        row[f"{m}_tokens_per_s"], row[f"{m}_tflops"] = r["tokens_per_s"], r["tflops"]
        if m == "fwdbwd":
            row["fwdbwd_pct_peak"], row["saved_mb"] = r["pct_peak"], r.get("saved_mb")
            row["fwdbwd_pct_gemm"] = r["pct_gemm"]
            row["peak_mem_mb"] = r["peak_mem_mb"]
    bad = [s for s in statuses if s != "ok"]
    row["status"] = bad[0] if bad else "ok"
    return row


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec) if spec else str(value)


TABLE = [
    ("target", "<22", ""),
    ("chunk_size", ">5", ""),
    ("seq_len", ">7", ""),
    ("fwd_ms", ">10", ".2f"),
    ("fwdbwd_ms", ">10", ".2f"),
    ("fwdbwd_p20_ms", ">9", ".2f"),
    ("fwdbwd_p80_ms", ">9", ".2f"),
    ("fwdbwd_tokens_per_s", ">11", ",.0f"),
    ("fwdbwd_tflops", ">8", ".4f"),
    ("fwdbwd_pct_peak", ">6", ".1f"),
    ("peak_mem_mb", ">8", ".1f"),
    ("saved_mb", ">8", ".2f"),
    ("val_loss", ">8", ".4f"),
    ("val_accuracy", ">7", ".3f"),
]
HEADER = [
    "target",
    "C",
    "T",
    "fwd_ms",
    "f+b_ms",
    "p20",
    "p80",
    "f+b_tok/s",
    "TFLOP/s",
    "%peak",
    "peakMiB",
    "savedMiB",
    "val_loss",
    "val_acc",
]


def format_table(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = [" ".join(format(h, w) for h, (_, w, _) in zip(HEADER, TABLE))] if header else []
    for r in rows:
        line = " ".join(format(_cell(r.get(k), f), w) for k, w, f in TABLE)
        if r.get("status", "ok") != "ok":
            line += f"  [{r['status'][:90]}]"
        if r.get("train_status"):
            line += f"  [{r['train_status'][:90]}]"
        lines.append(line)
    return "\n".join(lines)


def format_markdown(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The screen table as a Markdown table (for benchmarks/RESULTS.md)."""
    lines = [f"{title(env)} | {env.get('dtype', '')}", "", "| " + " | ".join(HEADER) + " |"]
    lines.append("|" + "|".join("---" if i < 1 else "---:" for i in range(len(HEADER))) + "|")
    for r in rows:
        cells = [_cell(r.get(k), f) for k, _, f in TABLE]
        if r.get("status", "ok") != "ok":
            cells[-1] += f" ({r['status'][:60]})"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> list[Path]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "profile.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIELDS, "train_status"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in [*FIELDS, "train_status"]})
    (out / "profile.md").write_text(format_markdown(rows, env))
    (out / "profile.json").write_text(
        json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=2, default=str)
    )
    return [out / "profile.csv", out / "profile.json", out / "profile.md", *plot(rows, env, out)]


STYLES = ["-", "--", ":", "-."]


def plot(rows: list[dict[str, Any]], env: dict[str, Any], out: Path) -> list[Path]:
    """One colour per target; line style per sequence length (time plot) or chunk size (tokens plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = f"{title(env)} | {env.get('dtype', '')}"
    xlabel = env.get("chunk_option", "chunk_size")
    ok = [r for r in rows if r.get("fwdbwd_ms") is not None]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    cmap = plt.get_cmap("tab20" if len(targets) > 10 else "tab10")
    color = {t: cmap(i % cmap.N) for i, t in enumerate(targets)}
    name = lambda t: Path(t).stem
    files = []

    def save(fig: Any, ax: Any, text: str, filename: str) -> None:
        ax.set_title(text, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        entries = len(ax.get_legend_handles_labels()[0])
        if entries:
            ncol = 1 + (entries - 1) // 18
            fig.set_size_inches(7 + 2 * ncol, 4.5)
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=ncol)
        fig.tight_layout()
        files.append(out / filename)
        fig.savefig(files[-1], dpi=80)
        plt.close(fig)

    seq_lens = sorted({r["seq_len"] for r in ok})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for t in targets:
        for i, T in enumerate(seq_lens):
            sel = [r for r in ok if r["target"] == t and r["seq_len"] == T]
            pts = sorted((r["chunk_size"], r["fwdbwd_ms"]) for r in sel if r["chunk_size"])
            style = {"color": color[t], "ls": STYLES[i % len(STYLES)]}
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=f"{name(t)} T={T}", **style)
            flat = [r["fwdbwd_ms"] for r in sel if not r["chunk_size"]]
            if flat:
                ax.axhline(flat[0], lw=1, label=f"{name(t)} T={T} (no {xlabel})", **style)
    ax.set(yscale="log", xlabel=xlabel, ylabel="fwd+bwd time (ms, median)")
    ax.set_xscale("log", base=2)
    save(fig, ax, f"fwd+bwd time vs {xlabel}\n{head}", "time_vs_chunk.png")

    chunks = sorted({r["chunk_size"] or 0 for r in ok})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for t in targets:
        for i, c in enumerate(chunks):
            sel = [r for r in ok if r["target"] == t and (r["chunk_size"] or 0) == c]
            pts = sorted((r["seq_len"], r["fwdbwd_tokens_per_s"]) for r in sel)
            if pts:
                label = f"{name(t)} C={c}" if c else name(t)
                ax.plot(*zip(*pts), marker="o", ms=3, color=color[t], ls=STYLES[i % len(STYLES)], label=label)
    ax.set(yscale="log", xlabel="sequence length T", ylabel="fwd+bwd tokens/s")
    ax.set_xscale("log", base=2)
    save(fig, ax, f"fwd+bwd throughput vs sequence length\n{head}", "tokens_vs_seqlen.png")

    trained = [r for r in rows if r.get("val_loss") is not None]
    if trained:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for t in targets:
            sel = [r for r in trained if r["target"] == t]
            pts = sorted({(r["chunk_size"], r["val_loss"]) for r in sel if r["chunk_size"]})
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color[t], label=name(t))
            flat = [r["val_loss"] for r in sel if not r["chunk_size"]]
            if flat:
                ax.axhline(flat[0], ls="--", lw=1, color=color[t], label=f"{name(t)} (no {xlabel})")
        ax.set(xlabel=xlabel, ylabel="MQAR validation loss")
        ax.set_xscale("log", base=2)
        save(fig, ax, f"MQAR validation loss vs {xlabel}\n{head}", "loss_vs_chunk.png")
    return files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixers", default=None, help="comma list of registered mixer names")
    p.add_argument("--configs", default=None, help="comma list of YAML configs (whole models)")
    p.add_argument("--chunk-sizes", default=None, help="comma list (default CPU 16,32,64; GPU 16..256)")
    p.add_argument(
        "--chunk-option", default="chunk_size", help="the option swept (e.g. tnt's global_chunk_size)"
    )
    p.add_argument("--seq-lens", default=None, help="comma list (default CPU 64,128; GPU 1024..8192)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--heads", type=int, default=None, help="mixer targets: number of heads")
    p.add_argument("--head-dim", type=int, default=None, help="mixer targets: d_model = heads * head_dim")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bf16 on GPU, fp32 on CPU")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1 on CPU, see benchmarks/env.py)",
    )
    p.add_argument("--fast", action="store_true", help="few repetitions (smoke test)")
    p.add_argument("--train-steps", type=int, default=0, help="also train each setting N steps on MQAR")
    p.add_argument(
        "--train-overrides", nargs="*", default=[], help="dotted config overrides for the training runs"
    )
    p.add_argument("--out", default="runs/profile_chunks", help="output folder")
    args = p.parse_args(argv)
    if not args.mixers and not args.configs:
        p.error("give --mixers and/or --configs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads, resolve_device(args.device))
    if os.environ.get("MEMNETS_BENCH_ROOT"):  # profile another checkout's memnets (as --compare does)
        use_tree(Path(os.environ["MEMNETS_BENCH_ROOT"]))
    rows, env = profile(args)
    if not rows:
        print("nothing to profile (no requested mixer is registered)", file=sys.stderr)
        return 1
    print()
    print(format_table(rows))
    for path in write_outputs(rows, env, args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
