"""Shared pieces for the tests that run scripts: a tiny MQAR config that trains in seconds on CPU, the
scripts as modules, and
what the kernel-compiling scripts need (an sm_90 toolchain, an environment that compiles)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


def write_corpus(path: Path, lines: int) -> Path:
    """A small text file of ``lines`` numbered pangram lines, for byte-level text runs."""
    path.write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(lines))
    )
    return path


def train_tiny_text(run: Path, corpus_lines: int, *overrides: str) -> None:
    """Train ``configs/lm/attention-tiny.yaml`` at one layer of width 32 and batches of 4 x 32 bytes on a
    corpus of ``corpus_lines`` lines written beside ``run`` (into ``run``); ``overrides`` set the rest."""
    # imported here: importing the trainer imports Triton, which some test modules must import only
    # after they set TRITON_INTERPRET, and they import this module first
    from memnets.config import load_config
    from memnets.trainer import train

    corpus = write_corpus(run.parent / "corpus.txt", corpus_lines)
    tiny = ["data.seq_len=32", "model.d_model=32", "model.n_layers=1", "train.batch_size=4"]
    train(
        load_config(
            ROOT / "configs/lm/attention-tiny.yaml",
            [f"data.path={corpus}", *tiny, *overrides, f"run.dir={run}"],
        )
    )


def load_script(path: str) -> ModuleType:
    """The script at ``path`` in the repository (``scripts/eval.py``, ``train.py``: files, not a package),
    imported as a fresh module ``script_<name>``."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in a script look their module up while it loads
    spec.loader.exec_module(module)
    return module


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


def sm90_toolchain_problem() -> str | None:
    """Why the installed Triton cannot compile kernels for sm_90 here (``None`` when it can)."""
    import triton

    if "nvidia" not in triton.backends.backends:
        return "Triton has no NVIDIA backend"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas) and not os.environ.get("TRITON_PTXAS_PATH"):
        return "Triton's bundled ptxas is missing"
    return None


def compiling_env() -> dict[str, str]:
    """This environment for a script that compiles real kernels: without ``TRITON_INTERPRET`` (this
    session may interpret them, and interpreted kernels cannot be compiled), one thread."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = "1"
    return env
