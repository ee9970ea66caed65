"""Crash-safe checkpoints: each is written to a temporary file in the same folder, flushed to disk and
renamed into place, so an interrupted write never replaces a good checkpoint. Files are
``step_{step:07d}.pt``; the latest is the highest step that loads."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("memnets")
_NAME = re.compile(r"^step_(\d{7,})\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(obj: dict[str, Any], folder: Path, step: int, keep: int) -> Path:
    path = Path(folder) / f"step_{step:07d}.pt"
    atomic_save(obj, path)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(folder: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads; unreadable ones (e.g. truncated by a full disk) are skipped
    with a warning."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False), path
        except Exception as e:  # a damaged file must not block resuming from an older one
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
    return None


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained model from its run folder alone: ``config.yaml`` plus ``model.safetensors``
    (or, when the run has not finished, its latest checkpoint). Returns ``(config, model)`` with the
    model in eval mode."""
    from .config import load_config
    from .model import LM

    run = Path(path)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    model = LM(cfg.model)
    weights = run / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_model

        load_model(model, str(weights))
    else:
        found = load_latest(run / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{run} has neither model.safetensors nor a loadable checkpoint")
        model.load_state_dict(found[0]["model"])
    return cfg, model.to(device).eval()
