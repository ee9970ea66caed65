"""Crash-safe checkpoints: each is written to a temporary file in the same folder, flushed to disk and
renamed into place, so an interrupted write never replaces a good checkpoint. Files are
``step_{step:07d}.pt``; the latest is the highest step that loads."""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .run_dir import atomic_open, atomic_write_text

log = logging.getLogger("memnets")
_NAME = re.compile(r"^step_(\d{7,})\.pt$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _Hashing:
    """A write-only file wrapper that hashes what passes through (torch.save writes sequentially)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk (torch.save reports a failed
    write as a RuntimeError about stream positions, with the OSError as its context)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def atomic_save(obj: Any, path: Path, checksum: bool = False) -> None:
    """``torch.save`` to ``path`` through a temporary file (see :mod:`memnets.run_dir`); with
    ``checksum``, the payload's SHA-256 goes to ``path.sha256`` (written first, so a checkpoint never
    exists without its checksum) and :func:`load_checkpoint` verifies it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name + ".sha256")
    try:
        with atomic_open(path) as f:
            sink = _Hashing(f) if checksum else f
            torch.save(obj, sink)
            if checksum:
                atomic_write_text(sidecar, sink.sha.hexdigest() + "\n")
    except Exception as e:
        if not _disk_full(e):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSError(
            errno.ENOSPC,
            f"no space left on device while writing {path} ({free / 2**20:.1f} MiB free); the earlier "
            "checkpoints are untouched. Free space (or lower train.keep_checkpoints) and resume",
        ) from e
    if not checksum:
        sidecar.unlink(missing_ok=True)  # a stale checksum of an earlier file of this name


def list_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a step_NNNNNNN.pt checkpoint")
    return int(m.group(1))


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def save_checkpoint(obj: dict[str, Any], folder: Path, step: int, keep: int, checksum: bool = False) -> Path:
    """Save ``step_{step}.pt`` and delete all but the ``keep`` newest checkpoints up to ``step``.

    Files of a higher step are not counted: they belong to a longer run this one did not resume from
    (only when they failed to load), so counting them could delete the checkpoint just written."""
    path = Path(folder) / f"step_{step:07d}.pt"
    atomic_save(obj, path, checksum)
    older = [p for p in list_checkpoints(folder) if checkpoint_step(p) <= step]
    for old in older[:-keep]:
        _remove(old)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` on CPU, after checking the payload against ``path.sha256`` where one exists."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        sha = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                sha.update(chunk)
        want, got = sidecar.read_text().strip(), sha.hexdigest()
        if got != want:
            raise ValueError(f"checksum mismatch: {path} has SHA-256 {got}, {sidecar.name} says {want}")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_latest(folder: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that loads; unreadable ones (e.g. truncated by a full disk, or failing
    their checksum) are skipped with a warning."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return load_checkpoint(path), path
        except Exception as e:  # a damaged file must not block resuming from an older one
            log.warning("skipping unreadable checkpoint %s: %s", path, e)
    return None


@dataclass
class RunWeights:
    """The model of a run folder and where its weights came from."""

    config: Any
    model: Any
    source: Path
    step: int | None  # None: a model.safetensors written before the step was recorded in it


def _safetensors_step(path: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None


def open_run(path: str | Path, device: str | torch.device = "cpu") -> RunWeights:
    """Rebuild a trained model from its run folder alone: ``config.yaml`` plus the newest weights, which
    are ``model.safetensors`` (written when a run finishes) unless a loadable checkpoint of a later step
    exists (the run was extended with ``--resume`` and stopped early). The model is in eval mode."""
    from .config import load_config
    from .model import LM

    run = Path(path)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    model = LM(cfg.model)
    final = run / "model.safetensors"
    final_step = _safetensors_step(final) if final.is_file() else None
    for ckpt in reversed(list_checkpoints(run / "checkpoints")):
        if final.is_file():
            newer = (
                checkpoint_step(ckpt) > final_step
                if final_step is not None
                else ckpt.stat().st_mtime > final.stat().st_mtime
            )
            if not newer:
                break
        try:
            state = load_checkpoint(ckpt)
        except Exception as e:
            log.warning("skipping unreadable checkpoint %s: %s", ckpt, e)
            continue
        model.load_state_dict(state["model"])
        return RunWeights(cfg, model.to(device).eval(), ckpt, state["step"])
    if not final.is_file():
        raise FileNotFoundError(f"{run} has neither model.safetensors nor a loadable checkpoint")
    from safetensors.torch import load_model

    load_model(model, str(final))
    return RunWeights(cfg, model.to(device).eval(), final, final_step)


def load_run(path: str | Path, device: str | torch.device = "cpu"):
    """``(config, model)`` of :func:`open_run`."""
    found = open_run(path, device)
    return found.config, found.model


def load_model_weights(model: torch.nn.Module, path: str) -> str:
    """Load weights from a memnets checkpoint (``.pt``) or a ``.safetensors`` file (strict); returns
    the file they came from (with its step when it is a checkpoint), for the log."""
    p = Path(path)
    if p.is_dir():
        found = load_latest(p / "checkpoints") if (p / "checkpoints").is_dir() else None
        if found is None:
            raise FileNotFoundError(f"train.init_from={path!r}: no checkpoint in {p / 'checkpoints'}")
        state, source = found[0]["model"], f"{found[1]} (step {found[0]['step']})"
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_model

        load_model(model, str(p))
        return str(p)
    elif p.is_file():
        saved = torch.load(p, map_location="cpu", weights_only=False)
        state, source = saved["model"], f"{p} (step {saved.get('step')})"
    else:
        raise FileNotFoundError(f"train.init_from={path!r} does not exist")
    model.load_state_dict(state)
    return source
