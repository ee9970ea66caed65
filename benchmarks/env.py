"""The environment header written into every benchmark result: device, versions, git revision, date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def git_revision(root: Path = ROOT) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("memnets", "triton", "fla", "flash_attn", "titans_pytorch"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "installed")
        except Exception:  # peers are optional; a broken install counts as absent
            out[mod] = None
    out["cuda"] = torch.version.cuda
    return out


def environment(device: torch.device) -> dict[str, Any]:
    import memnets

    return {
        "device": device_name(device),
        "device_type": device.type,
        "versions": versions(),
        "git": git_revision(Path(memnets.__file__).resolve().parent.parent),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def title(env: dict[str, Any]) -> str:
    """One line for plot titles and table headers."""
    v = env["versions"]
    parts = [env["device"], f"torch {v['torch']}"]
    if v.get("triton"):
        parts.append(f"triton {v['triton']}")
    if env.get("git"):
        parts.append(f"memnets {env['git']}")
    parts.append(env["date"][:10])
    return " | ".join(parts)


def configure_threads(threads: int | None, device: torch.device) -> None:
    """CPU runs default to ONE torch thread: on a shared machine (our 2-core CI box runs several jobs)
    OpenMP threads spin against each other and a 2-thread run can be many times slower and wildly noisy
    (``benchmarks/RESULTS.md``, introduction).
    Pass ``--threads N`` on a quiet machine to use more."""
    if threads:
        torch.set_num_threads(threads)
    elif device.type == "cpu":
        torch.set_num_threads(1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write a benchmark result as indented JSON, creating its folder (values JSON lacks as strings)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=str))
