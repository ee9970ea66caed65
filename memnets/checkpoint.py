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
