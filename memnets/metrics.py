"""A run's metrics: ``metrics.jsonl`` always, TensorBoard and W&B when asked.

``metrics.jsonl`` is only ever appended to. Resuming from step ``s`` drops the records after ``s`` by
writing the kept ones to a new file and renaming it over the old one (:func:`trim_metrics`); a torn
line (an append cut by a crash or a full disk) is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .config import to_dict
from .run_dir import atomic_write_bytes

log = logging.getLogger("memnets")


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
