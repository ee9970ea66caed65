"""scripts/compare.py as a resumable sweep: two mixers on tiny MQAR, stopped by SIGINT inside a run (before
its first log line) and between runs, resumed until done, then reused without training; a real Ctrl-C
(SIGINT to the process group of a compare.py process) stops the whole sweep and a second call resumes
it; unfinished and failed runs are never drawn."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
from helpers import ROOT, TINY_MQAR, load_script, write_corpus

from memnets import trainer as trainer_module
from memnets.data import build_task
from memnets.data.baseline import context_free_loss

compare = load_script("scripts/compare.py")

CONFIGS = [str(ROOT / "configs/mqar/attention.yaml"), str(ROOT / "configs/mqar/gated_deltanet.yaml")]
# log only the last step, so that a run stopped at step 1 has no metrics.jsonl yet
ARGS = [*CONFIGS, *TINY_MQAR, "train.log_every=50", "--steps", "3"]


def _results(out):
    res = json.loads((out / "results.json").read_text())
    return res, {r["name"]: r for r in res["results"]}


def test_interrupted_sweep_resumes_and_finishes_only_what_is_missing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    args = [*ARGS, "--out", str(out)]
    handler = signal.getsignal(signal.SIGINT)
    real_step = trainer_module.Trainer.train_step

    # 1. Ctrl-C during attention's first step: it saves step 1 and the whole sweep stops
    def interrupted_step(self):
        signal.raise_signal(signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", interrupted_step)
    assert compare.main(args) == 128 + signal.SIGINT
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    assert signal.getsignal(signal.SIGINT) is handler
    captured = capsys.readouterr()
    assert "FAILED" not in captured.err and "Traceback" not in captured.err
    res, rows = _results(out)
    assert res["stopped_by"] == "SIGINT" and res["failed"] == []
    assert rows["attention"]["status"] == "unfinished" and rows["attention"]["steps"] == 1
    assert rows["attention"]["tokens_per_s"] is None  # nothing logged yet
    assert rows["gated_deltanet"]["status"] == "not started"
    assert "unfinished" in captured.out and "not started" in captured.out
    assert "still to run: attention, gated_deltanet" in captured.out
    assert not (out / "compare.png").exists()  # nothing finished: nothing drawn

    # 2. the second call resumes attention from step 1; a SIGINT while loading the next config stops it
    real_load = compare.load_config

    def interrupted_load(path, overrides):
        if "gated_deltanet" in str(path):
            signal.raise_signal(signal.SIGINT)
        return real_load(path, overrides)

    trained = []

    def counted_step(self):
        trained.append((self.cfg.run.name, self.step + 1))
        return real_step(self)

    monkeypatch.setattr(compare, "load_config", interrupted_load)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", counted_step)
    assert compare.main(args) == 128 + signal.SIGINT
    monkeypatch.setattr(compare, "load_config", real_load)
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    capsys.readouterr()
    assert trained == [("attention", 2), ("attention", 3)]  # continued from the checkpoint of step 1
    res, rows = _results(out)
    assert rows["attention"]["status"] == "finished" and rows["attention"]["steps"] == 3
    assert rows["attention"]["tokens_per_s"] > 0 and 0 <= rows["attention"]["val_accuracy"] <= 1
    assert rows["gated_deltanet"]["status"] == "not started"
    assert (out / "compare.png").is_file()  # attention alone, gated_deltanet named as left out

    # 3. the third call trains only gated_deltanet
    seconds = rows["attention"]["seconds"]
    assert compare.main(args) == 0
    captured = capsys.readouterr()
    assert "attention: finished in an earlier call" in captured.out
    res, rows = _results(out)
    assert res["stopped_by"] is None
    assert [(r["name"], r["status"], r["steps"]) for r in res["results"]] == [
        ("attention", "finished", 3),
        ("gated_deltanet", "finished", 3),
    ]
    assert rows["attention"]["seconds"] == seconds
    assert rows["gated_deltanet"]["mixer"] == "gated_deltanet" and rows["gated_deltanet"]["params"] > 0
    table = (out / "results.md").read_text()
    assert table in captured.out
    header = [c.strip() for c in table.splitlines()[0].strip("| ").split(" | ")]
    assert header[:3] == ["name", "status", "steps"] and "peak memory (MB)" in header
    assert "accuracy 2 pairs" in header and (out / "curves.png").is_file()

    # 4. nothing is left: a fourth call builds no trainer and writes the same table
    def no_training(*a, **k):
        raise AssertionError("a finished sweep must not train again")

    monkeypatch.setattr(compare, "Trainer", no_training)
    assert compare.main(args) == 0
    assert _results(out)[0]["results"] == res["results"]
    # a new step budget is not the same config: the finished runs continue instead of being reused
    with pytest.raises(AssertionError, match="must not train again"):
        compare.main([*ARGS[:-1], "4", "--out", str(out)])


def test_plot_draws_finished_runs_only_and_names_the_rest(tmp_path):
    rows = [
        {"name": "a", "status": "finished", "val_loss": 1.5, "tokens_per_s": 1000.0, "state_size": 64},
        {"name": "b", "status": "unfinished", "steps": 7},
        {"name": "c", "status": "failed", "error": "RuntimeError: out of memory"},
        {"name": "d", "status": "not started"},
    ]
    assert compare.headline(rows) == ("val_loss", "validation loss (nats/token)")
    drawn, left_out = compare.plotted(rows, "val_loss")
    assert [r["name"] for r in drawn] == ["a"]
    assert left_out == ["b (unfinished at step 7)", "c (failed)", "d (not started)"]
    assert compare.plot(rows, tmp_path / "a.png") and (tmp_path / "a.png").stat().st_size > 1000
    assert not compare.plot(rows[1:], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    text = [{**rows[0], "val_bpb": 2.0}]
    assert compare.headline(text)[0] == "val_bpb"


def test_ctrl_c_to_the_process_group_stops_the_whole_sweep_and_a_second_call_resumes(tmp_path):
    """A real Ctrl-C: SIGINT to the sweep's process group once the first run logs a step. One signal stops
    everything (exit 130, the run in progress checkpointed and marked unfinished, the next not started);
    a second call finishes both at the step budget it is given."""
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # far more steps than the test waits for: the signal lands inside the first run
    argv = [*CONFIGS, *TINY_MQAR, "--steps", "100000", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts/compare.py"), *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job is
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step "):
                os.killpg(proc.pid, signal.SIGINT)
                break
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGINT, printed + err
    assert "Traceback" not in err and "FAILED" not in err
    assert "=== gated_deltanet" not in printed  # the sweep did not go on to the next config
    assert "still to run: attention, gated_deltanet" in printed
    res, rows = _results(out)
    assert res["stopped_by"] == "SIGINT"
    stopped_at = rows["attention"]["steps"]
    assert rows["attention"]["status"] == "unfinished" and 1 <= stopped_at < 100000
    assert rows["gated_deltanet"]["status"] == "not started"

    # the second call continues attention from its checkpoint and trains gated_deltanet
    budget = stopped_at + 2
    assert compare.main([*CONFIGS, *TINY_MQAR, "--steps", str(budget), "--out", str(out)]) == 0
    res, rows = _results(out)
    assert res["stopped_by"] is None
    assert [(r["name"], r["status"], r["steps"]) for r in res["results"]] == [
        ("attention", "finished", budget),
        ("gated_deltanet", "finished", budget),
    ]
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 4 and all("| finished |" in line for line in table[2:])


def test_a_bits_per_byte_of_nan_is_a_missing_figure():
    got = compare.val_metrics({"val_loss": 2.5, "val_bpb": float("nan"), "loss": 2.4})
    assert got == {"val_loss": 2.5}
    assert (
        compare.table([{"name": "a", "status": "finished", **got}]).splitlines()[2]
        == "| a | finished | 2.5000 |"
    )


def test_text_rows_carry_the_unigram_level_and_the_difference_to_attention(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 300)
    tiny = ["model.d_model=32", "model.n_layers=1", "model.num_heads=2", "data.seq_len=32"]
    configs = [
        str(ROOT / "configs/lm/attention-tiny.yaml"),
        str(ROOT / "configs/lm/gated_deltanet-tiny.yaml"),
    ]
    out = tmp_path / "lb"
    args = [*configs, "--preset", "cpu", f"data.path={corpus}", *tiny, "--steps", "2", "--out", str(out)]
    assert compare.main(args) == 0
    _, rows = _results(out)
    att, gdn = rows["attention-tiny"], rows["gated_deltanet-tiny"]
    # the level is the unigram cross-entropy of the evaluated bytes, in bits per byte
    cfg = compare.load_config(configs[0], [*compare.CPU_BUDGET, f"data.path={corpus}", *tiny])
    task = build_task(cfg.data, cfg.run.seed)
    loss = context_free_loss(task, cfg.train.batch_size, cfg.train.eval_batches)
    level = task.bits_per_byte(loss)
    assert level == pytest.approx(loss / math.log(2), rel=1e-3)  # a byte per token, but for the EOS
    assert att["unigram_bpb"] == pytest.approx(level) and gdn["unigram_bpb"] == pytest.approx(level)
    assert att["bpb_vs_attention"] == 0.0
    assert gdn["bpb_vs_attention"] == pytest.approx(gdn["val_bpb"] / att["val_bpb"] - 1.0)
    header = (out / "results.md").read_text().splitlines()[0]
    assert "unigram bits per byte" in header and "bits per byte vs attention" in header


def test_no_attention_run_no_relative_column():
    rows = [{"name": "a", "status": "finished", "mixer": "titans", "val_bpb": 3.0}]
    compare.against_attention(rows)
    assert "bpb_vs_attention" not in rows[0]
    rows.append({"name": "b", "status": "finished", "mixer": "attention", "val_bpb": 2.0})
    compare.against_attention(rows)
    assert rows[0]["bpb_vs_attention"] == pytest.approx(0.5) and "+50.0%" in compare.table(rows)


def test_a_second_stage_starts_from_the_sweeps_first_stage(tmp_path):
    """TNT's stage 2 (``train.init_from: runs/tnt-stage1-tiny``) in a sweep with stage 1 trains after it,
    from this sweep's stage-1 run, for stage 2's share of the sweep's steps (100 of 2000: 1 of 20 here),
    and changes only what it trains (the local memories): every other weight is stage 1's."""
    from memnets.checkpoint import list_checkpoints, load_checkpoint

    corpus = write_corpus(tmp_path / "corpus.txt", 300)
    tiny = ["model.d_model=32", "model.n_layers=1", "model.num_heads=2", "data.seq_len=64"]
    stage1, stage2 = (str(ROOT / f"configs/lm/tnt-stage{i}-tiny.yaml") for i in (1, 2))
    out = tmp_path / "lb"
    args = [
        stage2,
        stage1,
        "--preset",
        "cpu",
        f"data.path={corpus}",
        *tiny,
        "--steps",
        "20",
        "--out",
        str(out),
    ]
    assert compare.main(args) == 0
    res, rows = _results(out)
    assert [r["name"] for r in res["results"]] == ["tnt-stage1-tiny", "tnt-stage2-tiny"]
    assert rows["tnt-stage1-tiny"]["steps"] == 20 and rows["tnt-stage2-tiny"]["steps"] == 1
    assert all(r["status"] == "finished" and math.isfinite(r["val_bpb"]) for r in rows.values())

    def weights(name: str) -> dict:
        return load_checkpoint(list_checkpoints(out / "runs" / name / "checkpoints")[-1])["model"]

    first, second = weights("tnt-stage1-tiny"), weights("tnt-stage2-tiny")
    local = [k for k in first if ".mixer.local." in k]
    assert local and first.keys() == second.keys()
    assert all(first[k].equal(second[k]) for k in first if k not in local)
    assert any(not first[k].equal(second[k]) for k in local)
