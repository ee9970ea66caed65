"""Shared pieces for the trainer tests: a tiny MQAR config that trains in seconds on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TINY_MQAR = [
    "model.d_model=32",
    "model.num_heads=2",
    "model.n_layers=2",
    "data.seq_len=32",
    "data.mqar.vocab_size=64",
    "data.mqar.num_kv_pairs=[2]",
    "data.mqar.num_test=64",
    "train.batch_size=8",
    "train.warmup_steps=5",
    "train.log_every=1",
    "train.eval_every=1000",
    "train.checkpoint_every=1000",
    "train.early_stop_accuracy=null",
]


def run_train(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )
