"""Quality of one chunk size, for ``scripts/profile_chunks.py``: train the setting with memnets.trainer
(one run per seed), then report the final validation metrics (mean and standard deviation over seeds),
the training throughput, and whether the runs left the context-free level.

The run trains at its config's ``data.seq_len``, and that is the length its quality row carries: a
quality figure is never copied onto the timing rows of other lengths. The context-free level is the
validation loss of the best model that ignores the context (memnets.data.baseline: the training split's
unigram distribution for text, uniform over the possible answers for MQAR). A setting whose loss is
still within ``CHANCE_MARGIN`` of that level has learned nothing about the context yet, so its chunk size
cannot be judged: the row says so (``left_chance`` false) and the table and plots mark it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

from memnets.config import Config
from memnets.data.baseline import context_free_loss
from memnets.data.mqar import MQARTask
from memnets.metrics import parse_metrics

CHANCE_MARGIN = 0.02  # a loss above (1 - CHANCE_MARGIN) x the context-free level has not left it
METRICS = ("val_loss", "val_bpb", "val_accuracy", "train_tokens_per_s")


def training_throughput(run_dir: Path) -> float | None:
    """The median of the run's logged training tokens/s, leaving out the first window (it includes
    the first step's one-off costs) when there are more."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(raw) for _, raw in parse_metrics(path.read_bytes())[0]]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return statistics.median(speeds[1:] if len(speeds) > 1 else speeds) if speeds else None


def train_one_seed(cfg: Config) -> dict[str, Any]:
    """Train ``cfg`` (its run folder must be new) and return its final metrics and context-free level."""
    from memnets.trainer import Trainer

    trainer = Trainer(cfg)
    task = trainer.task
    logging.getLogger("memnets").setLevel(logging.WARNING)  # the sweep prints its own table
    start = time.perf_counter()
    result = trainer.run()
    chance = context_free_loss(task, cfg.train.batch_size, cfg.train.eval_batches)
    out: dict[str, Any] = {k: v for k, v in result.metrics.items() if k in METRICS}
    out["train_tokens_per_s"] = training_throughput(Path(cfg.run.dir))
    out["train_s"] = time.perf_counter() - start
    out["chance_loss"] = chance
    if not isinstance(task, MQARTask):
        out["chance_bpb"] = task.bits_per_byte(chance)
    return out


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (with several seeds) sample standard deviation of each metric over the seeds."""
    out: dict[str, Any] = {}
    for key in (*METRICS, "chance_loss", "chance_bpb", "train_s"):
        values = [r[key] for r in per_seed if r.get(key) is not None and math.isfinite(r[key])]
        if not values:
            continue
        out[key] = statistics.fmean(values)
        if key in METRICS:
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    if "val_loss" in out and "chance_loss" in out:
        out["left_chance"] = out["val_loss"] < (1 - CHANCE_MARGIN) * out["chance_loss"]
    return out


def chance_note(row: dict[str, Any]) -> str | None:
    """The note for a quality row that has not left the context-free level, else None."""
    if row.get("left_chance", True):
        return None
    chunk = row["chunk_size"] if row.get("chunk_size") is not None else "-"
    return (
        f"{Path(row['target']).stem} chunk {chunk} T={row['seq_len']}: val loss {row['val_loss']:.3f} is not "
        f"below the context-free level {row['chance_loss']:.3f} nats/token (token frequencies alone) "
        f"after {row['steps']} steps; train longer before judging its chunk size"
    )
