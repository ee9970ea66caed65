"""The profiling tools on tiny CPU shapes: scripts/profile_chunks.py (CSV/JSON/PNG contents), the
benchmark registry over every registered mixer, scripts/bench_train.py, and the FLOP formulas against
hand-worked counts. Speed itself is never asserted."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import load_script  # noqa: E402

from benchmarks.flops import gated_delta_fwd, mixer_flops, mlp_memory_fwd  # noqa: E402
from benchmarks.registry import PEERS, Bench, Shape, all_benches, model_case  # noqa: E402
from benchmarks.run import _options, compare_rows, run_benches  # noqa: E402
from benchmarks.timing import Budget  # noqa: E402
from memnets import list_mixers  # noqa: E402
from memnets.registry import mixer_options  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _chunked_mixer() -> str | None:
    return next((n for n in list_mixers() if "chunk_size" in mixer_options(n)), None)


def test_profile_chunks_outputs(tmp_path, capsys):
    chunked = _chunked_mixer()
    mixers = ["attention", "not_a_mixer"] + ([chunked] if chunked else [])
    prof = load_script("scripts/profile_chunks.py")
    argv = ["--mixers", ",".join(mixers), "--seq-lens", "16,24", "--chunk-sizes", "8,16"]
    argv += [
        "--batch",
        "1",
        "--heads",
        "2",
        "--head-dim",
        "8",
        "--device",
        "cpu",
        "--fast",
        "--out",
        str(tmp_path),
    ]
    assert prof.main(argv) == 0
    assert "mixer 'not_a_mixer' is not registered" in capsys.readouterr().out

    rows = list(csv.DictReader((tmp_path / "profile.csv").read_text().splitlines()))
    got = {(r["target"], r["chunk_size"], r["seq_len"]) for r in rows}
    want = {("attention", "", "16"), ("attention", "", "24")}
    if chunked:
        want |= {(chunked, c, t) for c in ("8", "16") for t in ("16", "24")}
    assert got == want and len(rows) == len(want)
    for r in rows:
        assert r["status"] == "ok", r
        for mode in ("fwd", "fwdbwd"):
            med, p20, p80 = (float(r[f"{mode}{k}_ms"]) for k in ("", "_p20", "_p80"))
            assert 0 < p20 <= med <= p80
            assert float(r[f"{mode}_tokens_per_s"]) > 0
        assert float(r["saved_mb"]) > 0
        assert r["fwdbwd_pct_peak"] == ""  # no peak on CPU

    data = json.loads((tmp_path / "profile.json").read_text())
    assert data["env"]["device_type"] == "cpu" and data["env"]["versions"]["torch"] == torch.__version__
    assert len(data["rows"]) == len(want)
    for name in ("time_vs_chunk.png", "tokens_vs_seqlen.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not (tmp_path / "loss_vs_chunk.png").exists()  # no training asked


def test_profile_chunks_training_and_config(tmp_path):
    """--train-steps on a config target: every chunk size trains and reports a finite MQAR loss."""
    chunked = _chunked_mixer() or "attention"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"base: {ROOT / 'configs/mqar/_base.yaml'}\nmodel: {{mixer: {chunked}, d_model: 16, n_layers: 1}}\n"
        "data: {seq_len: 16, mqar: {vocab_size: 32, num_kv_pairs: [2]}}\n"
    )
    prof = load_script("scripts/profile_chunks.py")
    argv = [
        "--configs",
        str(cfg),
        "--seq-lens",
        "16",
        "--chunk-sizes",
        "4,8",
        "--batch",
        "1",
        "--device",
        "cpu",
    ]
    argv += [
        "--fast",
        "--train-steps",
        "2",
        "--train-overrides",
        "train.batch_size=4",
        "data.mqar.num_test=8",
    ]
    assert prof.main([*argv, "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "profile.json").read_text())
    rows, quality = data["rows"], data["quality"]
    assert len(rows) == len(quality) == (2 if chunked != "attention" else 1)
    for r in rows:
        assert r["status"] == "ok" and r["kind"] == "config" and "val_loss" not in r
    for q in quality:
        assert q["status"] == "ok" and q["kind"] == "config" and q["seq_len"] == 16 and q["steps"] == 2
        assert math.isfinite(q["val_loss"]) and 0 <= q["val_accuracy"] <= 1
        assert q["chance_loss"] == pytest.approx(math.log(16))  # uniform over the 16 values of vocab 32
    assert (tmp_path / "out" / "loss_vs_chunk.png").read_bytes()[:8] == PNG


def test_registry_times_every_mixer():
    benches = [b for b in all_benches() if b.kind == "mixer"]
    assert {b.name for b in benches} == {f"mixer:{n}" for n in list_mixers()}
    benches += [Bench("model:attention", "model", model_case("attention")), *PEERS]
    rows = run_benches(
        benches, [Shape(1, 16, 2, 8)], torch.device("cpu"), torch.float32, budget=Budget.fast()
    )
    for r in rows:
        if r["name"].startswith(("mixer:", "model:")) or r["name"] == "sdpa":
            assert r["status"] == "ok", r
            assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0, r
        else:  # peers that are not installed (or need CUDA) say so instead of failing
            assert r["status"] == "ok" or r["status"].startswith("skipped:"), r
    assert {r["name"] for r in rows} == {b.name for b in benches}


def test_bench_run_option_reaches_the_mixers_that_take_it():
    """``--option KEY=VALUE``: YAML values, a malformed item refused; an entry that takes the option is
    built with it (a bad value fails that entry's row), one that does not take it is built as before."""
    assert _options(["gates=channel", "lr_max=0.5", "momentum=true"]) == {
        "gates": "channel",
        "lr_max": 0.5,
        "momentum": True,
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _options(["gates"])
    benches = [b for b in all_benches() if b.name in ("mixer:moneta", "mixer:attention")]
    shape, cpu = [Shape(1, 16, 2, 8)], torch.device("cpu")
    rows = run_benches(benches, shape, cpu, torch.float32, ("fwd",), Budget.fast(), {"gates": "bogus"})
    status = {r["name"]: r["status"] for r in rows}
    assert status["mixer:moneta"].startswith("failed:") and "bogus" in status["mixer:moneta"]
    assert status["mixer:attention"] == "ok"
    moneta = [b for b in benches if b.name == "mixer:moneta"]
    rows = run_benches(moneta, shape, cpu, torch.float32, ("fwd",), Budget.fast(), {"gates": "channel"})
    assert rows[0]["status"] == "ok"


def test_bench_train(tmp_path):
    bt = load_script("scripts/bench_train.py")
    out = tmp_path / "bt.json"
    over = ["train.device=cpu", "train.batch_size=4", "model.d_model=16", "data.mqar.num_test=8"]
    assert (
        bt.main(
            [
                str(ROOT / "configs/mqar/attention.yaml"),
                *over,
                "--warmup",
                "1",
                "--steps",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["tokens_per_s"] > 0 and len(r["step_s_all"]) == 2
    assert r["achieved_tflops"] > 0 and r["mfu_pct"] is None  # no peak on CPU


def test_flops_match_performance_spec():
    # Hand-worked forward counts per token-head: the MLP memory (E = 4) at (D, C) = (128, 64), (128, 16),
    # (64, 64), the gated delta rule at K = V = 128, C = 64; attention is FlashAttention's causal count.
    assert mlp_memory_fwd(1, 1, 1, 128, 64, 4.0, 2) == pytest.approx(1.09e6, rel=0.01)
    assert mlp_memory_fwd(1, 1, 1, 128, 16, 4.0, 2) == pytest.approx(983e3, rel=0.01)
    assert mlp_memory_fwd(1, 1, 1, 64, 64, 4.0, 2) == pytest.approx(313e3, rel=0.01)
    assert gated_delta_fwd(1, 1, 1, 128, 128, 64) == pytest.approx(183e3, rel=0.01)
    fwd, fwdbwd = mixer_flops("attention", {}, 2, 128, 64, 4)
    assert fwd == 4 * 2 * 4 * 128**2 * 16 / 2 and fwdbwd == 3.5 * fwd
    assert mixer_flops("no_formula_mixer", {}, 1, 16, 16, 2) is None


def test_compare_rows_ratio():
    row = {"name": "x", "shape": "B1_T8_H1_D8", "mode": "fwd", "status": "ok"}
    table = compare_rows([{**row, "median_ms": 2.0}], [{**row, "median_ms": 3.0}])
    assert table.splitlines()[1].split()[-1] == "1.50"
    assert str(Shape.parse("B2_T1024_H8_D64")) == "B2_T1024_H8_D64" == str(Shape.parse("2,1024,8,64"))


def test_profile_chunks_trains_each_chunk_size_on_a_text_config(tmp_path, capsys):
    """--train-config CONFIG key=value: the config's model on the user's corpus, every chunk size and
    seed trained at the config's length, quality rows of their own, the notes and the trade-off plot."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"note {i}: memory mixers write keys and read values.\n" for i in range(400)))
    prof = load_script("scripts/profile_chunks.py")
    argv = [
        "--train-config",
        str(ROOT / "configs/lm/titans-tiny.yaml"),
        f"data.path={corpus}",
        "model.d_model=16",
        "model.n_layers=1",
        "model.num_heads=2",
        "data.seq_len=16",
        "train.batch_size=2",
        "train.eval_batches=1",
        *("--chunk-sizes", "4,8", "--train-steps", "3", "--seeds", "2"),
        *("--batch", "1", "--device", "cpu", "--fast", "--out", str(tmp_path / "out")),
    ]
    assert prof.main(argv) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "profile.json").read_text())
    # timed at the one length it trains on (no --seq-lens), and no quality copied onto the timing rows
    assert [(r["chunk_size"], r["seq_len"]) for r in data["rows"]] == [(4, 16), (8, 16)]
    assert all(r["status"] == "ok" and "val_loss" not in r for r in data["rows"])
    quality = data["quality"]
    assert [(q["chunk_size"], q["seq_len"], q["steps"], q["tokens"]) for q in quality] == [
        (4, 16, 3, 3 * 2 * 16),
        (8, 16, 3, 3 * 2 * 16),
    ]
    for q in quality:
        seed = q["seeds"][0]
        assert q["seeds"] == [seed, seed + 1] and q["data"] == str(corpus)
        for s in q["seeds"]:  # one run per seed, at this chunk size
            run = tmp_path / "out" / "runs" / f"titans-tiny-c{q['chunk_size']}-T16-s{s}"
            saved = (run / "config.yaml").read_text()
            assert f"seed: {s}" in saved and f"chunk_size: {q['chunk_size']}" in saved
        assert q["val_loss_std"] is not None and q["val_loss_std"] >= 0
        # bits per byte, and the level in those units, at the corpus's bytes per token (~1: bytes and EOS)
        assert q["val_bpb"] / q["val_loss"] == pytest.approx(q["chance_bpb"] / q["chance_loss"], rel=1e-9)
        assert q["val_bpb"] == pytest.approx(q["val_loss"] / math.log(2), rel=0.05)
        assert q["train_tokens_per_s"] > 0 and "val_accuracy" not in q
        # three steps from a uniform start stay above predicting from byte frequencies
        assert 0 < q["chance_loss"] < q["val_loss"] and q["left_chance"] is False
    assert printed.count("NOTE: titans-tiny chunk") == 2 and "not below the context-free level" in printed
    md = (tmp_path / "out" / "profile.md").read_text()
    assert "Quality (mean ± standard deviation over seeds" in md and "not below the context-free" in md
    header = (tmp_path / "out" / "quality.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["target", "kind", "chunk_size", "seq_len"] and "val_loss_std" in header
    for name in ("time_vs_chunk.png", "loss_vs_chunk.png", "speed_vs_quality.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG
    # a second profile into the same folder does not train on top of the first one's runs
    argv[argv.index("4,8")] = "4"
    assert prof.main(argv) == 0
    (again,) = json.loads((tmp_path / "out" / "profile.json").read_text())["quality"]
    assert again["status"].startswith("train failed: FileExistsError") and "another --out" in again["status"]


def test_context_free_level_and_seed_statistics():
    cq = load_script("scripts/chunk_quality.py")

    class Text:  # training tokens 0 0 0 1 (add-one: p = 2/3, 1/3); the evaluation scores labels 0, 1
        vocab_size, train = 2, np.array([0, 0, 0, 1])

        def val_batches(self, batch_size, max_batches):
            yield torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 1]])

    assert cq.context_free_loss(Text(), 1, 1) == pytest.approx(-(math.log(2 / 3) + math.log(1 / 3)) / 2)
    runs = [
        {"val_loss": 2.0, "val_bpb": 3.0, "train_tokens_per_s": 100.0, "chance_loss": 2.5},
        {"val_loss": 2.2, "val_bpb": 3.2, "train_tokens_per_s": 300.0, "chance_loss": 2.5},
    ]
    agg = cq.aggregate(runs)
    assert agg["val_loss"] == pytest.approx(2.1) and agg["val_loss_std"] == pytest.approx(0.1 * math.sqrt(2))
    assert agg["train_tokens_per_s"] == 200.0 and agg["left_chance"] is True
    assert "val_accuracy" not in agg and cq.aggregate(runs[:1])["val_loss_std"] is None
    # within 2% of the level has not left it
    assert cq.aggregate([{**runs[0], "val_loss": 2.46}])["left_chance"] is False


def test_profile_plot_ticks_are_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = load_script("scripts/profile_plots.py")
    assert [plots.plain(v) for v in (0.5, 16, 40, 1234, 3.4e6)] == ["0.5", "16", "40", "1.23k", "3.4M"]
    fig, ax = plt.subplots()
    ax.plot([16, 32, 64, 128], [21.0, 25.0, 33.0, 40.0])
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    plots._ticks_at(ax.xaxis, [16, 32, 64, 128])
    plots._plain_log(ax, "y")
    fig.canvas.draw()
    xs = [t.get_text() for t in ax.get_xticklabels()]
    ys = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert xs == ["16", "32", "64", "128"]
    assert ys and all(y.replace(".", "").isdigit() for y in ys), ys  # never 2^4 or 4x10^1
