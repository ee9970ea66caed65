"""Run-folder integrity (issue 25): metrics that survive ``kill -9`` and torn lines, the run lock,
rotation, temporary files, umask, checksums and a full disk. CPU, tiny models, seconds."""

import errno
import json
import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import ROOT, TINY_MQAR, run_train

from memnets import checkpoint as ckpt
from memnets.config import load_config
from memnets.metrics import parse_metrics
from memnets.run_dir import RunDirLocked, RunLock
from memnets.trainer import train

MQAR = str(ROOT / "configs/mqar/attention.yaml")


def _cfg(run_dir, *extra):
    return load_config(MQAR, [*TINY_MQAR, f"run.dir={run_dir}", *extra])


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same(row):
    """The part of a record that a resumed run reproduces bitwise (throughput is wall-clock, peak memory
    the process's)."""
    return {k: v for k, v in row.items() if k not in ("tokens_per_s", "peak_mem_mb")}


def _killed_child(target, delay: float, on_open_of: str | None = None) -> None:
    """Fork; the child runs ``target()`` and is SIGKILLed ``delay`` seconds after it starts, or, with
    ``on_open_of``, ``delay`` seconds after it first opens a file whose name contains that text for
    writing. Returns when the child is gone."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            me = os.getpid()

            def kill_later() -> None:
                threading.Timer(delay, os.kill, (me, signal.SIGKILL)).start()

            if on_open_of is None:
                kill_later()
            else:
                armed = []

                def hook(event: str, args: tuple) -> None:
                    if event != "open" or armed or on_open_of not in str(args[0]):
                        return
                    mode, flags = args[1], args[2]
                    writing = (mode is not None and any(c in mode for c in "wax+")) or (
                        mode is None and flags & (os.O_WRONLY | os.O_RDWR)
                    )
                    if writing:
                        armed.append(True)
                        kill_later()

                sys.addaudithook(hook)
            logging.getLogger("memnets").disabled = True
            target()
            time.sleep(60)  # finished before the kill: wait for it, so every child ends the same way
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 20-step run, checkpoints every 5 steps (all kept)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(
        _cfg(
            run,
            "train.steps=20",
            "train.eval_every=5",
            "train.checkpoint_every=5",
            "train.keep_checkpoints=10",
        )
    )
    return run


def _resumable_copy(reference, dest, step: int):
    """``reference`` as it would be after a crash right after the checkpoint of ``step``, with the
    metrics of the later steps still in the file."""
    shutil.copytree(reference, dest)
    for path in ckpt.list_checkpoints(dest / "checkpoints"):
        if ckpt.checkpoint_step(path) > step:
            path.unlink()
    (dest / "model.safetensors").unlink()
    return dest


def _resume_cfg(run):
    return _cfg(run, "train.steps=20", "train.eval_every=5", "train.checkpoint_every=5", "run.resume=auto")


def _check_rows_up_to_checkpoint(run, reference):
    """Every line parses but a torn last one, and the records up to the latest checkpoint are the
    uninterrupted run's."""
    data = (run / "metrics.jsonl").read_bytes()
    rows, bad = parse_metrics(data)
    assert bad in ([], [len(data.splitlines())]), f"unreadable lines {bad} before the last one"
    latest = ckpt.load_latest(run / "checkpoints")[0]["step"]
    got = [_same(json.loads(raw)) for step, raw in rows if step <= latest]
    want = [_same(r) for r in _rows(reference) if r["step"] <= latest]
    assert got == want, f"records up to the checkpoint's step {latest} differ"


def test_kill_while_resume_rewrites_metrics_never_loses_them(reference, tmp_path):
    """Case 1: resuming dropped the records after the checkpoint by rewriting metrics.jsonl in place,
    so a kill -9 during the write emptied it. The child is killed a few milliseconds after it first
    opens a metrics file for writing, while a large file is being written."""
    for i, delay in enumerate([0.0, 0.001, 0.003, 0.01]):
        run = _resumable_copy(reference, tmp_path / f"run{i}", step=10)
        # a long history: many records up to the checkpoint, and records of a longer lost run after it
        kept = b"".join(
            raw for step, raw in parse_metrics((run / "metrics.jsonl").read_bytes())[0] if step <= 10
        )
        kept += b"".join(b'{"step": 10, "pad": "%s"}\n' % (b"x" * 60) for _ in range(150_000))
        stale = b"".join(b'{"step": %d, "loss": 1.0}\n' % (11 + s) for s in range(20_000))
        (run / "metrics.jsonl").write_bytes(kept + stale)
        _killed_child(lambda run=run: train(_resume_cfg(run)), delay, on_open_of="metrics.jsonl")
        after = (run / "metrics.jsonl").read_bytes()
        assert after.startswith(kept), f"delay {delay}: records up to the checkpoint were lost"


def test_kill_9_at_random_moments_of_resume_start_up(reference, tmp_path):
    """Acceptance: 20 kill -9 at random moments of `--resume` start-up (and of the steps after it)
    never lose or corrupt a record up to the checkpoint's step; the run then finishes like the
    uninterrupted one."""
    run = _resumable_copy(reference, tmp_path / "run", step=5)
    rng = random.Random(25)
    for _ in range(20):
        _killed_child(lambda: train(_resume_cfg(run)), rng.uniform(0.0, 0.8))
        _check_rows_up_to_checkpoint(run, reference)
    train(_resume_cfg(run))
    assert [_same(r) for r in _rows(run)] == [_same(r) for r in _rows(reference)]
    assert not list(run.rglob("*.tmp")), "temporary files of killed writes are removed at start"


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    """Case 2: a half-written last line (full disk during an append) made --resume crash with
    JSONDecodeError until the file was edited by hand."""
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=4", "train.checkpoint_every=2"))
    good = (run / "metrics.jsonl").read_bytes()
    with (run / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 31, "loss": 5.3')
    capsys.readouterr()
    train(_cfg(run, "train.steps=6", "train.checkpoint_every=2", "run.resume=auto"))
    assert "dropped unreadable line(s) 6 (torn by a crash or a full disk)" in capsys.readouterr().out
    after = (run / "metrics.jsonl").read_bytes()
    assert after.startswith(good) and b'"step": 31' not in after
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_rotation_never_deletes_the_checkpoint_it_just_wrote(tmp_path):
    """Case 7: with keep_checkpoints=1 and an unreadable checkpoint of a higher step, every new save
    was deleted right after it was written."""
    (tmp_path / "step_0000030.pt").write_bytes(b"truncated")
    for step in (5, 10, 15):
        ckpt.save_checkpoint({"step": step}, tmp_path, step, keep=1)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_0000015.pt", "step_0000030.pt"]
    assert ckpt.load_latest(tmp_path)[0]["step"] == 15


def test_second_launch_into_a_run_folder_is_refused(tmp_path):
    """Case 8: nothing locked run.dir, so two launches into one folder interleaved their metrics."""
    run = tmp_path / "run"
    lock = RunLock(run)  # a live run holds the folder
    try:
        with pytest.raises(RunDirLocked, match=rf"run\.dir='{run}' is in use by pid {os.getpid()}"):
            train(_cfg(run, "train.steps=2"))
        second = run_train([MQAR, *TINY_MQAR, "train.steps=2", f"run.dir={run}"])
        assert second.returncode == 3, second.stderr
        assert "is in use by pid" in second.stderr
        assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    finally:
        lock.release()
    assert train(_cfg(run, "train.steps=2")).step == 2  # released: the folder is usable again


def test_lock_of_a_killed_run_is_not_stale(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from memnets.run_dir import RunLock; "
            f"RunLock(Path({str(run)!r})); print('locked', flush=True); import time; time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunDirLocked):
        RunLock(run)
    holder.kill()
    holder.wait()
    RunLock(run).release()  # the kernel dropped the dead holder's lock


def test_orphaned_temporary_files_are_removed_at_start(tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=2"))
    orphans = [run / "checkpoints/.step_0000003.pt.4242.tmp", run / ".metrics.jsonl.4242.tmp"]
    for p in orphans:
        p.write_bytes(b"x" * 1000)
    keep = run / "notes.tmp"  # not one of ours: no leading dot
    keep.write_text("mine")
    capsys.readouterr()
    train(_cfg(run, "train.steps=3", "run.resume=auto"))
    assert not any(p.exists() for p in orphans) and keep.exists()
    assert "(1000 bytes) left by an interrupted write" in capsys.readouterr().out


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_process_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        train(_cfg(tmp_path / "run", "train.steps=2", "train.checkpoint_checksum=true"))
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"]
    assert {p.name for p in files} >= {"config.yaml", "meta.json", "metrics.jsonl", "model.safetensors"}
    assert any(p.suffix == ".pt" for p in files) and any(p.suffix == ".sha256" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p


def test_checksum_catches_a_checkpoint_that_loads_but_is_corrupt(tmp_path, caplog):
    for step in (1, 2):
        ckpt.save_checkpoint({"step": step, "w": torch.arange(1000.0)}, tmp_path, step, keep=5, checksum=True)
    path = tmp_path / "step_0000002.pt"
    digest = (tmp_path / "step_0000002.pt.sha256").read_text().strip()
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data: torch.load still succeeds
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=False)["step"] == 2
    with caplog.at_level(logging.WARNING, logger="memnets"):
        found = ckpt.load_latest(tmp_path)[1]
    assert found.name == "step_0000001.pt" and "checksum mismatch" in caplog.text
    ckpt.save_checkpoint({"step": 2}, tmp_path, 2, keep=5)  # rewritten without a checksum
    assert not (tmp_path / "step_0000002.pt.sha256").exists()
    assert ckpt.load_latest(tmp_path)[0]["step"] == 2


def test_full_disk_during_a_save_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint({"step": 1}, tmp_path, 1, keep=3)
    real = torch.save

    def full_disk(obj, f):
        class Full:
            written = 0

            def write(self, data):
                self.written += len(data)
                if self.written > 64:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return f.write(data)

            def flush(self):
                f.flush()

        real(obj, Full())

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left on device while writing .*step_0000002\.pt") as err:
        ckpt.save_checkpoint({"step": 2, "w": torch.zeros(10_000)}, tmp_path, 2, keep=3)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000001.pt"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_run_that_fails_its_checks_leaves_no_folder(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train\.trainable pattern 'nothing\*' matches no parameter"):
        train(_cfg(run, "train.steps=2", "train.trainable=['nothing*']"))
    assert not run.exists()
