"""Chunk-size profiling: speed and memory of memory mixers against the chunk size and the sequence length
on the present device and backend, and (when asked) the quality each chunk size reaches in training.

    python scripts/profile_chunks.py --mixers titans,tnt --device cpu --out runs/profile
    python scripts/profile_chunks.py --mixers titans --chunk-sizes 16,32,64,128,256 --seq-lens 1024,4096
    python scripts/profile_chunks.py --train-config configs/lm/titans-tiny.yaml data.path=corpus.txt \
        --train-steps 300 --seeds 3 --out runs/profile-text
    python scripts/profile_chunks.py --mixers titans,memora --train-config configs/lm/_base-tiny.yaml \
        data.path=corpus.txt --seeds 2
    python scripts/profile_chunks.py --configs configs/mqar/titans.yaml --train-steps 300   # MQAR

Speed, for every (target, T, chunk size): fwd (inference, no_grad) and fwd+bwd time as median
[p20, p80] (``triton.testing.do_bench`` on GPU, ``torch.utils.benchmark`` on CPU; see
benchmarks/timing.py), tokens/s, model TFLOP/s and % of the datasheet peak on GPU (benchmarks/flops.py;
"n/a" where a mixer has no formula), memory (GPU: peak MB (10^6 bytes) during fwd+bwd; CPU: MB saved for
backward). A target is a registered mixer (timed alone with d_model = heads·head_dim) or a whole config
(its LM; the chunk size is set on every layer mixer that takes one). Mixers without a ``chunk_size``
option are timed once per length.

Quality: ``--train-config CONFIG key=value ...`` trains every chunk size on that config (your model and
data; with ``--mixers``, each mixer on it via ``model.mixer``) for its ``train.steps`` or
``--train-steps N``, once per seed (``--seeds N``: run.seed, run.seed + 1, ...), and reports the final
validation loss, bits per byte (text) or accuracy (MQAR) as mean ± standard deviation over the seeds,
with the training throughput the run logged. Without ``--train-config``, ``--train-steps N`` trains on
MQAR (configs/mqar/_base.yaml, or the ``--configs`` file itself). A setting trains at its config's
``data.seq_len`` and its quality row carries that length (timing rows of other lengths get none); with
``--train-config`` and no ``--seq-lens`` the timing is at that length too. A setting still at the
context-free level (scripts/chunk_quality.py) is marked: its chunk size cannot be judged yet.

Writes DIR/profile.csv (timing), DIR/quality.csv, DIR/profile.json (both, with the environment header),
DIR/profile.md and PNGs (scripts/profile_plots.py): time_vs_chunk.png, tokens_vs_seqlen.png and, with
training, loss_vs_chunk.png and speed_vs_quality.png (x = training tokens/s, y = validation loss or
bits per byte, one point per chunk size). Training runs go to DIR/runs/ and must not exist yet.
"""

from __future__ import annotations

import argparse
import csv
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file
import chunk_quality  # noqa: E402
import profile_plots  # noqa: E402

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
    "status",
]
QUALITY_FIELDS = [
    "target",
    "kind",
    "chunk_size",
    "seq_len",
    "batch",
    "steps",
    "tokens",
    "seeds",
    "data",
    "val_loss",
    "val_loss_std",
    "val_bpb",
    "val_bpb_std",
    "val_accuracy",
    "val_accuracy_std",
    "train_tokens_per_s",
    "train_tokens_per_s_std",
    "chance_loss",
    "chance_bpb",
    "left_chance",
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
    """The vocabulary training gives the model (the embedding and output layer are timed with it)."""
    if cfg.data.kind == "mqar":
        return cfg.data.mqar.vocab_size
    from memnets.data.tokenizer import build_tokenizer

    return build_tokenizer(cfg.data.text.tokenizer).vocab_size


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
    if args.train_config and not targets:  # the user's model on the user's data
        targets.append(
            Target("config", args.train_config, load_config(args.train_config, list(args.overrides)))
        )
    return targets


def training_config(args: argparse.Namespace, target: Target) -> tuple[Path, list[str]]:
    """The config file a target trains on and the user's overrides for it: ``--train-config`` (with its
    ``key=value`` overrides) when given, else the target's own config, else MQAR (configs/mqar/_base.yaml)."""
    if args.train_config:
        path, user = Path(args.train_config), list(args.overrides)
    elif target.kind == "config":
        path, user = Path(target.name), []
    else:
        path, user = ROOT / "configs" / "mqar" / "_base.yaml", ["data.mqar.num_test=256"]
    if target.kind == "mixer":
        user.append(f"model.mixer={target.name}")
    return path, [*user, *args.train_overrides]


def _train(
    target: Target, chunk: int | None, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Train ``target`` at one chunk size, once per seed, at its training config's ``data.seq_len``; the
    quality row (see scripts/chunk_quality.py)."""
    from memnets.config import load_config

    path, user = training_config(args, target)
    base = load_config(path, user)
    steps = args.train_steps or base.train.steps
    over = [
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        f"train.log_every={max(1, steps // 8)}",  # several windows for the throughput's median
        f"train.checkpoint_every={steps}",
        f"train.device={device}",
        "train.early_stop_accuracy=null",
        "run.resume=never",
    ]
    if args.train_steps:  # a shortened run keeps a tenth of it for warmup at most
        over.append(f"train.warmup_steps={min(base.train.warmup_steps, max(1, steps // 10))}")
    if chunk is not None:
        opt = args.chunk_option
        over += [f"model.mixer_options.{m}.{opt}={chunk}" for m in target.chunk_mixers(opt)]
    T = base.data.seq_len
    tag = f"{Path(target.name).stem}-c{chunk if chunk is not None else 'na'}-T{T}"
    seeds = [base.run.seed + i for i in range(args.seeds)]
    per_seed = []
    for seed in seeds:
        run_dir = Path(args.out) / "runs" / f"{tag}-s{seed}"
        if (run_dir / "checkpoints").is_dir():
            raise FileExistsError(
                f"{run_dir} holds an earlier profile's run; give another --out or delete it"
            )
        cfg = load_config(path, [*user, *over, f"run.seed={seed}", f"run.dir={run_dir}"])
        cfg.run.name = run_dir.name
        per_seed.append(chunk_quality.train_one_seed(cfg))
    row: dict[str, Any] = {"target": target.name, "kind": target.kind, "chunk_size": chunk, "seq_len": T}
    row.update(
        batch=base.train.batch_size,
        steps=steps,
        tokens=steps * base.train.batch_size * T,
        seeds=seeds,
        data=base.data.path if base.data.kind == "text" else "mqar",
    )
    row.update(chunk_quality.aggregate(per_seed))
    row["status"] = "ok"
    return row


def profile(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The timing rows (one per target, chunk size and length), the quality rows (one per target and
    chunk size, at the length it trained on) and the environment header."""
    device = resolve_device(args.device)
    targets = resolve_targets(args)
    if args.seq_lens is None and args.train_config and targets:  # time the length it trains on
        from memnets.config import load_config

        args.seq_lens = str(load_config(args.train_config, list(args.overrides)).data.seq_len)
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

    rows, quality = [], []
    for target in targets:
        sweep: list[int | None] = chunks if target.chunk_mixers(args.chunk_option) else [None]
        if sweep == [None]:
            print(f"{target.name}: no {args.chunk_option} option; timed once per sequence length", flush=True)
        if args.train_steps or args.train_config:
            path, user = training_config(args, target)
            print(f"{target.name}: quality from training on {path} {' '.join(user)}".rstrip(), flush=True)
        bench = target.bench(args)
        for chunk in sweep:
            overrides = {} if chunk is None else {args.chunk_option: chunk}
            shapes = [Shape(args.batch, T, args.heads, args.head_dim) for T in seq_lens]
            timed = run_benches([bench], shapes, device, dtype, ("fwd", "fwdbwd"), budget, overrides)
            for T in seq_lens:
                rows.append(_merge(target, chunk, T, args.batch, [r for r in timed if r["T"] == T]))
                print(format_table([rows[-1]], header=False), flush=True)
            if args.train_steps or args.train_config:
                quality.append(_safe_train(target, chunk, args, device))
                print(format_quality([quality[-1]], header=False), flush=True)
    return rows, quality, env


def _safe_train(
    target: Target, chunk: int | None, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    try:
        return _train(target, chunk, args, device)
    except Exception as e:  # one setting failing to train must not lose the rest of the sweep
        status = f"train failed: {type(e).__name__}: {e}"
        return {"target": target.name, "kind": target.kind, "chunk_size": chunk, "status": status}


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
    "peakMB",
    "savedMB",
]
# quality: (key, header, width, format); a metric's standard deviation over seeds follows it as "± s"
QUALITY = [
    ("target", "target", "<22", ""),
    ("chunk_size", "C", ">5", ""),
    ("seq_len", "T", ">6", ""),
    ("steps", "steps", ">6", ""),
    ("seeds", "seeds", ">5", ""),
    ("val_loss", "val_loss", ">15", ".4f"),
    ("val_bpb", "val_bpb", ">15", ".4f"),
    ("val_accuracy", "val_acc", ">13", ".3f"),
    ("train_tokens_per_s", "train_tok/s", ">15", ",.0f"),
    ("chance_loss", "ctx-free_loss", ">13", ".4f"),
    ("left_chance", "left?", ">5", ""),
]


def format_table(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = [" ".join(format(h, w) for h, (_, w, _) in zip(HEADER, TABLE))] if header else []
    for r in rows:
        line = " ".join(format(_cell(r.get(k), f), w) for k, w, f in TABLE)
        if r.get("status", "ok") != "ok":
            line += f"  [{r['status'][:90]}]"
        lines.append(line)
    return "\n".join(lines)


def _quality_cells(r: dict[str, Any]) -> list[str]:
    cells = []
    for key, _, _, spec in QUALITY:
        value = r.get(key)
        if key == "seeds":
            cells.append(_cell(len(value) if value else None, ""))
        elif key == "left_chance":
            cells.append({True: "yes", False: "NO"}.get(value, "n/a"))
        else:
            cell = _cell(value, spec)
            if r.get(f"{key}_std") is not None:
                cell += f" ± {r[f'{key}_std']:{spec}}"
            cells.append(cell)
    return cells


def format_quality(rows: list[dict[str, Any]], header: bool = True) -> str:
    """The quality rows as a screen table; "ctx-free_loss" is the context-free level (nats/token) and
    "left?" is NO where a setting is not below it yet (its chunk size cannot be judged)."""
    lines = [" ".join(format(h, w) for _, h, w, _ in QUALITY)] if header else []
    for r in rows:
        line = " ".join(format(c, w) for c, (_, _, w, _) in zip(_quality_cells(r), QUALITY))
        if r.get("status", "ok") != "ok":
            line += f"  [{r['status'][:90]}]"
        lines.append(line)
    return "\n".join(lines)


def chance_notes(quality: list[dict[str, Any]]) -> list[str]:
    return [n for n in map(chunk_quality.chance_note, quality) if n]


def format_markdown(rows: list[dict[str, Any]], quality: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """The screen tables as Markdown tables (for benchmarks/RESULTS.md)."""
    lines = [f"{title(env)} | {env.get('dtype', '')}", "", "| " + " | ".join(HEADER) + " |"]
    lines.append("|" + "|".join("---" if i < 1 else "---:" for i in range(len(HEADER))) + "|")
    for r in rows:
        cells = [_cell(r.get(k), f) for k, _, f in TABLE]
        if r.get("status", "ok") != "ok":
            cells[-1] += f" ({r['status'][:60]})"
        lines.append("| " + " | ".join(cells) + " |")
    if quality:
        heads = [h for _, h, _, _ in QUALITY]
        lines += ["", "Quality (mean ± standard deviation over seeds, at the length trained on):", ""]
        lines += ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
        for r in quality:
            cells = _quality_cells(r)
            if r.get("status", "ok") != "ok":
                cells[-1] += f" ({r['status'][:60]})"
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"- {n}" for n in chance_notes(quality)]
    return "\n".join(lines).rstrip() + "\n"


def _write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def write_outputs(
    rows: list[dict[str, Any]], quality: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace
) -> list[Path]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "profile.csv", FIELDS, rows)
    wrote = [out / "profile.csv"]
    if quality:
        _write_csv(out / "quality.csv", QUALITY_FIELDS, quality)
        wrote.append(out / "quality.csv")
    (out / "profile.md").write_text(format_markdown(rows, quality, env))
    (out / "profile.json").write_text(
        json.dumps({"env": env, "args": vars(args), "rows": rows, "quality": quality}, indent=2, default=str)
    )
    return [*wrote, out / "profile.json", out / "profile.md", *profile_plots.plot(rows, quality, env, out)]


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
    p.add_argument(
        "--train-config",
        default=None,
        help="train each chunk size on this config (your data: give data.path=... after it); "
        "the target when no --mixers are given",
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of --train-config")
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="train each setting N steps (default with --train-config: its train.steps; without it, "
        "on MQAR, configs/mqar/_base.yaml or the --configs file itself)",
    )
    p.add_argument(
        "--train-overrides", nargs="*", default=[], help="dotted config overrides for the training runs"
    )
    p.add_argument("--seeds", type=int, default=1, help="train each setting with N seeds (error bars)")
    p.add_argument("--out", default="runs/profile_chunks", help="output folder")
    args = p.parse_intermixed_args(argv)
    if not args.mixers and not args.configs and not args.train_config:
        p.error("give --mixers, --configs or --train-config")
    if args.train_config and args.configs:
        p.error("--train-config is the config to profile and train; give either it or --configs")
    if args.overrides and not args.train_config:
        p.error(f"key=value overrides {args.overrides} apply to --train-config, which is not given")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"overrides must be key=value, got {bad}")
    if args.seeds < 1 or args.train_steps < 0:
        p.error(f"--seeds must be >= 1 and --train-steps >= 0, got {args.seeds} and {args.train_steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_threads(args.threads, resolve_device(args.device))
    if os.environ.get("MEMNETS_BENCH_ROOT"):  # profile another checkout's memnets (as --compare does)
        use_tree(Path(os.environ["MEMNETS_BENCH_ROOT"]))
    rows, quality, env = profile(args)
    if not rows:
        print("nothing to profile (no requested mixer is registered)", file=sys.stderr)
        return 1
    print()
    print(format_table(rows))
    if quality:
        print()
        print(format_quality(quality))
        for note in chance_notes(quality):
            print(f"NOTE: {note}")
    for path in write_outputs(rows, quality, env, args):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
