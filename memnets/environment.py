"""The process a run executes in: the distributed group (``torchrun``'s environment), the device
(``train.device`` checked against this machine), the ``memnets`` logger, the process's peak memory, and
what ``meta.json`` records about the machine and the code."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import __version__
from .validation import ConfigError

log = logging.getLogger("memnets")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_cfg: str, tf32: bool = True) -> tuple[Dist, torch.device]:
    """The process group and this rank's device; on CUDA, float32 matmuls (the memory engine's
    chunked form, float32 training) may run as TF32 on tensor cores when ``tf32`` (``train.tf32``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_cfg == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = check_device(device_cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(int(os.environ.get("RANK", "0")), world, local), device


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
REUSE_LIMIT = 1 << 30


def reuse_cpu_memory(limit: int = REUSE_LIMIT) -> str:
    """Let glibc's malloc keep freed blocks of up to ``limit`` bytes for reuse (``train.cpu_allocator:
    reuse``). By default glibc serves every allocation above its mmap threshold (at most 32 MB) with fresh
    pages from the kernel and unmaps them on free, so a tensor of that size made in every chunk step
    (Moneta's per-token accumulators at batch 64) page-faults and zero-fills its memory anew each time
    (benchmarks/RESULTS.md section 45). Raising the mmap and trim thresholds
    keeps such blocks in the heap, as PyTorch's CUDA caching allocator does on the GPU; the price is that
    the process's resident memory stays at its peak. Returns what was done, for the log."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"train.cpu_allocator=reuse does nothing here (it tunes glibc's malloc; this is {platform.system()})"
    libc = ctypes.CDLL(None)
    done = [libc.mallopt(opt, ctypes.c_int(limit)) for opt in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)]
    if not all(done):
        return f"train.cpu_allocator=reuse: glibc refused mallopt({limit}) ({done}); its defaults stay"
    return (
        f"train.cpu_allocator=reuse: glibc malloc keeps freed blocks up to {limit >> 20} MiB for reuse "
        "(mmap and trim thresholds; 'default' keeps glibc's)"
    )


def check_device(name: str) -> torch.device:
    """``train.device`` as a device this machine has, or a config error saying what it has."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device={name!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"train.device={name!r} but this machine has no usable CUDA device; use auto or cpu"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"train.device={name!r} but this machine has {count} CUDA device(s) (cuda:0..{count - 1})"
            )
    elif device.type != "cpu":
        raise ConfigError(f"train.device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def setup_logging(main: bool) -> None:
    if main and not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO if main else logging.WARNING)


def git_info() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "memnets": __version__,
    }
    for mod in ("triton", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far, in megabytes (10^6 bytes): the CUDA caching allocator's peak of
    allocated tensor memory on a CUDA device (what the model and its activations need; the allocator's
    cache and the CUDA context come on top), the peak resident set size of the process on CPU. Both count
    from the start of the process: a second run in the same process (a notebook, ``scripts/compare.py``)
    reports at least the first one's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
