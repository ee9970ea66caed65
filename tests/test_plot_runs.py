"""scripts/plot_runs.py on tiny runs trained for a few steps on CPU: the curves' data (tokens from the
run's config), the validation panel's metric, the PNG, and the errors for folders with nothing to draw."""

from __future__ import annotations

import sys

import pytest
from helpers import ROOT, TINY_MQAR, load_script, train_tiny_text

from memnets.config import load_config
from memnets.trainer import train

plot_runs = load_script("scripts/plot_runs.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A text run (4 steps, batch 4 x 32 tokens, evaluations at steps 2 and 4) and an MQAR run (3 steps,
    batch 8 x 32 tokens, one evaluation)."""
    folder = tmp_path_factory.mktemp("plot")
    text = ["train.steps=4", "train.log_every=1", "train.eval_every=2", "train.eval_batches=2"]
    train_tiny_text(folder / "text", 200, *text)
    train(
        load_config(
            ROOT / "configs/mqar/attention.yaml", [*TINY_MQAR, "train.steps=3", f"run.dir={folder / 'mqar'}"]
        )
    )
    return folder


def test_curves_of_a_text_run_are_drawn_against_tokens(runs):
    run = plot_runs.load_run(runs / "text", "text")
    assert run.tokens_per_step == 4 * 32
    assert [x for x, _ in plot_runs.points(run, "train", "loss")] == [128, 256, 384, 512]
    assert len(plot_runs.points(run, "train", "lr")) == 4
    assert all(g > 0 for _, g in plot_runs.points(run, "train", "grad_norm"))
    bpb = plot_runs.points(run, "evals", "val_bpb")
    assert [x for x, _ in bpb] == [256, 512] and all(v > 0 for _, v in bpb)
    assert plot_runs.panels([run])[1][1:] == ("val_bpb", "validation bits per byte")


def test_text_and_mqar_runs_in_one_png(runs, tmp_path, capsys):
    out = tmp_path / "sub" / "curves.png"
    assert plot_runs.main([str(runs / "text"), str(runs / "mqar"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("text | step 4 (512 tokens)") and "val_bpb" in printed[0]
    assert printed[1].startswith("mqar | step 3 (768 tokens)") and "val_bpb" not in printed[1]
    # MQAR has no bits per byte, so the shared validation panel falls back to the loss
    both = [plot_runs.load_run(runs / n, n) for n in ("text", "mqar")]
    assert plot_runs.panels(both)[1][1] == "val_loss"


def test_folders_with_nothing_to_draw_are_errors(runs, tmp_path, capsys):
    assert plot_runs.main([str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text((runs / "text" / "config.yaml").read_text())
    assert plot_runs.main([str(started), "--out", str(tmp_path / "x.png")]) == 2
    assert "nothing logged yet" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_labels_and_ticks():
    assert plot_runs.run_labels([ROOT / "a/run", ROOT / "b/run", ROOT / "c/other"]) == [
        "a/run",
        "b/run",
        "other",
    ]
    assert [plot_runs._tokens_label(v) for v in (0, 750, 12_000, 1_500_000, 2e9)] == [
        "0",
        "750",
        "12k",
        "1.5M",
        "2G",
    ]


def test_legend_columns_fit_the_names_across_the_figure():
    assert plot_runs.legend_columns(["a", "b"]) == 2
    assert plot_runs.legend_columns([f"run{i}" for i in range(9)]) == 4
    long = [f"titans-tiny-c{c}-T128-s{s}" for c in (16, 32, 64) for s in (0, 1)]
    assert plot_runs.legend_columns(long) == 2  # 4 columns of these ran off both edges
    assert plot_runs.legend_columns(["x" * 100]) == 1


def test_without_matplotlib_the_error_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"memnets\[plot\]"):
        plot_runs.plot([plot_runs.load_run(runs / "text", "text")], tmp_path / "x.png")
