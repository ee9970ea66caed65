"""What keeps a run folder consistent when runs are killed, preempted or started twice.

* :class:`RunLock`: an exclusive ``flock`` on ``run.dir/.lock``, held for the whole run by one process
  (rank 0). The kernel drops it when that process dies, however it dies, so a lock left by a killed
  run is never stale; the file records the holder's pid and host for the error of a second launch.
* :func:`atomic_write_bytes` / :func:`atomic_write_text`: a file is written under a temporary name in
  the same folder, flushed to disk and renamed over the old one, so a reader (or the next run) sees the
  old file or the new one, never a part. The file gets mode 0666 minus the process umask, like any
  file ``open()`` creates (``tempfile.mkstemp`` and safetensors would leave 0600).
  :func:`remove_orphaned_tmp` deletes the temporary files a ``kill -9`` left.
* :class:`MetricsLog`: ``metrics.jsonl`` is only ever appended to. Resuming from step ``s`` drops the
  records after ``s`` by writing the kept ones to a new file and renaming it over the old one; a torn
  line (an append cut by a crash or a full disk) is dropped with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("memnets")

TMP_SUFFIX = ".tmp"


class RunDirLocked(RuntimeError):
    """Another live process holds ``run.dir``."""


class RunLock:
    """Exclusive lock on a run folder (``flock`` on ``<dir>/.lock``); :meth:`release` or process exit
    frees it."""

    def __init__(self, run_dir: Path) -> None:
        self.created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirLocked(
                f"run.dir={str(run_dir)!r} is in use by {holder}; wait for that run to end, or choose "
                "another run.dir / run.name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(),
        )
        self._fd: int | None = fd

    def release(self, discard: bool = False) -> None:
        """Unlock; with ``discard``, also remove the folder if this lock created it and nothing else
        was written there (a run that failed its checks leaves no trace)."""
        if self._fd is None:
            return
        if discard and self.created and [p.name for p in self.path.parent.iterdir()] == [self.path.name]:
            self.path.unlink()
            self.path.parent.rmdir()
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path to write that becomes ``path`` only if the ``with`` block completes: fsynced,
    then renamed into place. On any exception the temporary file is removed."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        # writers such as safetensors create files 0600 whatever the umask: give every file the mode
        # an ordinary open() would
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: Path):
    """A binary file object that becomes ``path`` only if the ``with`` block completes (see
    :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            yield f


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def remove_orphaned_tmp(*folders: Path) -> None:
    """Delete temporary files left by a process killed mid-write (call with the run lock held, so no
    live writer owns them)."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
                size = p.stat().st_size
                p.unlink(missing_ok=True)
                log.info("removed %s (%d bytes) left by an interrupted write", p, size)


def parse_metrics(data: bytes) -> tuple[list[tuple[int, bytes]], list[int]]:
    """``([(step, line)], [numbers of unreadable lines])`` of a ``metrics.jsonl``'s bytes; a complete record
    that lost only its newline is kept (with the newline restored)."""
    rows, bad = [], []
    for n, raw in enumerate(data.splitlines(keepends=True), 1):
        try:
            step = json.loads(raw)["step"]
            if not isinstance(step, int):
                raise TypeError(step)
        except (ValueError, KeyError, TypeError):
            if raw.strip():
                bad.append(n)
            continue
        rows.append((step, raw if raw.endswith(b"\n") else raw + b"\n"))
    return rows, bad


def trim_metrics(path: Path, last_step: int) -> None:
    """Keep the records of steps ``<= last_step`` (the checkpoint a run resumes from) and drop
    unreadable lines, without ever exposing a partly written file; untouched when nothing changes."""
    if not path.exists():
        return
    data = path.read_bytes()
    rows, bad = parse_metrics(data)
    keep = b"".join(raw for step, raw in rows if step <= last_step)
    if keep == data:
        return
    if bad:
        log.warning(
            "%s: dropped unreadable line(s) %s (torn by a crash or a full disk)",
            path,
            ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else ""),
        )
    dropped = sum(step > last_step for step, _ in rows)
    if dropped:
        log.info(
            "%s: dropped %d record(s) after step %d (the checkpoint resumed from)", path, dropped, last_step
        )
    atomic_write_bytes(path, keep)


class MetricsLog:
    """``metrics.jsonl`` always; TensorBoard and W&B when asked (imported lazily)."""

    def __init__(self, run_dir: Path, cfg: Any, resume_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        trim_metrics(self.path, resume_step)
        if cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("run.tensorboard=true needs: pip install 'memnets[tensorboard]'") from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.run.wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("run.wandb=true needs: pip install 'memnets[wandb]'") from None
            from .config import to_dict

            self.wandb = wandb.init(
                project=cfg.run.wandb_project,
                name=cfg.run.name,
                config=to_dict(cfg),
                dir=str(run_dir),
                resume="allow",
            )

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def last_eval(self, step: int) -> dict[str, Any]:
        """The evaluation record of ``step`` already in the file (without ``step``), or ``{}``."""
        if not self.enabled or not self.path.exists():
            return {}
        found: dict[str, Any] = {}
        for s, raw in parse_metrics(self.path.read_bytes())[0]:
            record = json.loads(raw)
            if s == step and "val_loss" in record:
                found = {k: v for k, v in record.items() if k != "step"}
        return found

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
