"""Peak memory in the training log: ``peak_mem_mb`` in every training and evaluation record of
``metrics.jsonl`` and ``mem ... GB`` in every progress and evaluation line."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_MQAR

from memnets.config import load_config
from memnets.environment import peak_memory_mb
from memnets.trainer import train


def _vm_hwm_mb() -> float:
    """The kernel's own figure for the peak resident set size (``VmHWM``, in KiB), in megabytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_cpu_peak_is_the_peak_resident_set_size_in_megabytes():
    # ru_maxrss and VmHWM are kept by different kernel accounting (they differ by a few hundred KiB), so
    # this checks the unit (a KiB-for-bytes slip is a factor of 1024), not the last page
    before = _vm_hwm_mb()
    peak = peak_memory_mb(torch.device("cpu"))
    assert 0.95 * before <= peak <= 1.05 * _vm_hwm_mb()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_every_training_record_and_progress_line_has_the_peak(tmp_path):
    cfg = load_config(
        str(ROOT / "configs/mqar/attention.yaml"), [*TINY_MQAR, "train.steps=3", f"run.dir={tmp_path}"]
    )
    # the logger's own records: a stdout handler left by an earlier test would write to its own capture
    log, lines = logging.getLogger("memnets"), _Lines()
    log.addHandler(lines)
    try:
        result = train(cfg)
    finally:
        log.removeHandler(lines)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in records if "loss" in r]
    assert len(training) == 3
    peaks = [r["peak_mem_mb"] for r in training]
    assert all(p > 0 for p in peaks)
    assert peaks == sorted(peaks)  # a peak never falls within a process
    progress = [line for line in lines.lines if line.startswith("step ")]
    assert len(progress) == 3
    shown = [float(m.group(1)) for line in progress if (m := re.search(r"\| mem (\d+\.\d\d) GB \|", line))]
    assert shown == [round(p / 1e3, 2) for p in peaks]
    # the final evaluation (no training record follows it) has its own figure, in its record and line
    (evaluation,) = [r for r in records if "val_loss" in r]
    assert evaluation["step"] == 3 and evaluation["peak_mem_mb"] >= peaks[-1]
    (eval_line,) = [line for line in lines.lines if line.startswith("eval step 3 ")]
    assert eval_line.endswith(f"| mem {evaluation['peak_mem_mb'] / 1e3:.2f} GB")
    # a call at train.steps takes the final evaluation from the file: its metrics, not the memory figure
    again = train(
        load_config(
            str(ROOT / "configs/mqar/attention.yaml"),
            [*TINY_MQAR, "train.steps=3", f"run.dir={tmp_path}", "run.resume=auto"],
        )
    )
    assert again.step == 3 and again.metrics == result.metrics and "peak_mem_mb" not in again.metrics
