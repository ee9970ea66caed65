"""scripts/eval.py says which split and how many windows and batches its text metrics cover, and how
that relates to the training log's val_loss / val_bpb (train.eval_batches batches of the validation
split): on the same windows the figures agree."""

from __future__ import annotations

import json

import pytest
from helpers import load_script, train_tiny_text

eval_script = load_script("scripts/eval.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Byte-level text run, 3 steps; its evaluation covers 2 batches of 4 windows of 32 tokens."""
    folder = tmp_path_factory.mktemp("evalcov")
    train_tiny_text(folder / "run", 200, "train.steps=3", "train.eval_batches=2")
    return folder


def _eval(args, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert eval_script.main([*args, "--out", str(out)]) == 0
    return json.loads(out.read_text())["text"], capsys.readouterr().out


def test_the_whole_validation_split_is_said_to_differ_from_the_log(run, tmp_path, capsys):
    t, printed = _eval([str(run / "run")], tmp_path, capsys)
    assert t["split"] == "validation" and t["windows"] == t["available_windows"] > 8
    assert t["batches"] == -(-t["windows"] // 16) and t["batch_size"] == 16
    assert t["training_eval_windows"] == 8
    assert f"evaluated {t['windows']} windows of 32 tokens in {t['batches']} batches of 16" in printed
    assert "all of the validation split" in printed
    assert "train.eval_batches=2 x train.batch_size=4" in printed and "so the figures differ" in printed


def test_the_training_log_windows_give_the_training_log_figure(run, tmp_path, capsys):
    args = [str(run / "run"), "--batch-size", "4", "--max-batches", "2"]
    t, printed = _eval(args, tmp_path, capsys)
    assert t["windows"] == t["training_eval_windows"] == 8 and t["batches"] == 2
    assert f"the first 8 of the validation split's {t['available_windows']} (--max-batches 2)" in printed
    assert "the same windows, so the figures agree" in printed
    records = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "val_bpb" in r][-1]
    assert t["bits_per_byte"] == pytest.approx(logged["val_bpb"], rel=1e-5)


def test_another_file_is_not_compared_with_the_log(run, tmp_path, capsys):
    t, printed = _eval([str(run / "run"), "--data", str(run / "corpus.txt")], tmp_path, capsys)
    assert t["split"] == "file" and t["training_eval_windows"] is None
    assert "all of the file" in printed and "--data: the whole file, not the validation split" in printed
