"""What keeps a run folder consistent when runs are killed, preempted or started twice.

* :class:`RunLock`: an exclusive ``flock`` on ``run.dir/.lock``, held for the whole run by one process
  (rank 0). The kernel drops it when that process dies, however it dies, so a lock left by a killed
  run is never stale; the file records the holder's pid and host for the error of a second launch.
* :func:`atomic_write_bytes` / :func:`atomic_write_text`: a file is written under a temporary name in
  the same folder, flushed to disk and renamed over the old one, so a reader (or the next run) sees the
  old file or the new one, never a part. The file gets mode 0666 minus the process umask, like any
  file ``open()`` creates (``tempfile.mkstemp`` and safetensors would leave 0600).
  :func:`remove_orphaned_tmp` deletes the temporary files a ``kill -9`` left.

``metrics.jsonl`` has its own module, :mod:`memnets.metrics`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

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
