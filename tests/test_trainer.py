import json
import logging
import math
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_MQAR, run_train, write_corpus
from safetensors.torch import load_file

from memnets import checkpoint as ckpt
from memnets.config import load_config
from memnets.trainer import train

MQAR = str(ROOT / "configs/mqar/attention.yaml")


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_twenty_steps_lower_the_loss_and_write_run_files(tmp_path):
    cfg = load_config(MQAR, [*TINY_MQAR, "train.steps=20", "train.lr=1e-2", f"run.dir={tmp_path}"])
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    assert {"val_loss", "val_accuracy", "val_accuracy_kv2"} <= set(result.metrics)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {"git", "versions", "device"} <= set(meta) and meta["versions"]["torch"] == torch.__version__
    saved = load_config(tmp_path / "config.yaml")
    assert saved.model.vocab_size == 64 and saved.train.steps == 20  # resolved from the data
    assert (tmp_path / "model.safetensors").is_file()
    record = read_metrics(tmp_path)[0]
    assert {"step", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(record)


def test_existing_run_needs_resume_flag(tmp_path):
    args = [MQAR, *TINY_MQAR, "train.steps=2", f"run.dir={tmp_path}"]
    assert run_train(args).returncode == 0
    again = run_train(args)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    assert run_train([*args, "train.steps=3", "--resume"]).returncode == 0
    changed = run_train([*args, "model.d_model=64", "--resume"])
    assert changed.returncode == 2 and "model.d_model differs" in changed.stderr


def test_sigterm_then_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    steps = 40
    common = [MQAR, *TINY_MQAR, f"train.steps={steps}", "train.eval_every=15", "train.checkpoint_every=7"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    assert run_train([*common, f"run.dir={full_dir}"]).returncode == 0

    env_cmd = [sys.executable, str(ROOT / "train.py"), *common, f"run.dir={cut_dir}"]
    proc = subprocess.Popen(
        env_cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", **_pyenv()},
    )
    metrics = cut_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 11):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    stopped = ckpt.list_checkpoints(cut_dir / "checkpoints")[-1]
    stop_step = int(stopped.stem.split("_")[1])
    assert 11 <= stop_step < steps, "stopped mid-run, at a step that is not a periodic checkpoint"
    resumed = run_train([*common, f"run.dir={cut_dir}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr

    full, cut = read_metrics(full_dir), read_metrics(cut_dir)
    assert [r["step"] for r in cut] == [r["step"] for r in full]
    for a, b in zip(full, cut):
        for key in ("loss", "grad_norm", "val_loss", "val_accuracy"):
            assert a.get(key) == b.get(key), f"step {a['step']}: {key} {a.get(key)} != {b.get(key)}"
    wa, wb = load_file(full_dir / "model.safetensors"), load_file(cut_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _pyenv():
    import os

    return {
        k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "HOME", "PATH", "LD_", "VIRTUAL_ENV"))
    }


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    good = {"step": 1, "weights": torch.arange(10.0)}
    ckpt.save_checkpoint(good, tmp_path, 1, keep=3)

    def broken_save(obj, f):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"step": 2}, tmp_path, 2, keep=3)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000001.pt"]
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file is cleaned up"
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], good["weights"])
    # a damaged newest file (e.g. truncated by a full disk) is skipped in favour of an older one
    (tmp_path / "step_0000003.pt").write_bytes(b"garbage")
    state, path = ckpt.load_latest(tmp_path)
    assert path.name == "step_0000001.pt"


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    from memnets import trainer as trainer_mod

    cfg = load_config(MQAR, [*TINY_MQAR, "train.steps=10", "train.max_bad_steps=3", f"run.dir={tmp_path}"])
    real = trainer_mod.Trainer._loss

    def nan_loss(self, model, ids, labels):
        loss, aux = real(self, model, ids, labels)
        return loss * float("nan") if self.step >= 2 else loss, aux

    monkeypatch.setattr(trainer_mod.Trainer, "_loss", nan_loss)
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        train(cfg)
    records = read_metrics(tmp_path)
    assert [r.get("skipped", 0) for r in records] == [0, 0, 1, 1, 1]


def test_skipped_first_step_keeps_the_schedule_without_a_warning(tmp_path, monkeypatch):
    """A non-finite first step is skipped, the schedule still advances one step, and PyTorch's
    "lr_scheduler.step() before optimizer.step()" warning (true but expected here) is not shown."""
    from memnets import trainer as trainer_mod

    cfg = load_config(MQAR, [*TINY_MQAR, "train.steps=3", f"run.dir={tmp_path}"])
    real = trainer_mod.Trainer._loss

    def nan_first(self, model, ids, labels):
        loss, aux = real(self, model, ids, labels)
        return loss * float("nan") if self.step == 0 else loss, aux

    monkeypatch.setattr(trainer_mod.Trainer, "_loss", nan_first)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"Detected call of `lr_scheduler")
        train(cfg)
    records = [r for r in read_metrics(tmp_path) if "loss" in r]  # the training steps' records
    assert [r.get("skipped", 0) for r in records] == [1, 0, 0]
    assert records[1]["lr"] > records[0]["lr"]  # the warm-up moved on past the skipped step


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tmp_path, strategy):
    common = [MQAR, *TINY_MQAR, "train.steps=6", "train.lr=1e-2", f"train.distributed={strategy}"]
    single = run_train([*common, f"run.dir={tmp_path / 'one'}"])
    assert single.returncode == 0, single.stderr
    env_cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        *common,
        f"run.dir={tmp_path / 'two'}",
    ]
    ddp = subprocess.run(
        env_cmd, cwd=ROOT, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", **_pyenv()}
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 processes" in ddp.stdout
    a, b = load_file(tmp_path / "one/model.safetensors"), load_file(tmp_path / "two/model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    la = [r["loss"] for r in read_metrics(tmp_path / "one") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "two") if "loss" in r]
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=1e-5, atol=1e-6)


def test_text_training_on_a_plain_file(tmp_path):
    text = write_corpus(tmp_path / "corpus.txt", 400)
    cfg = load_config(
        ROOT / "configs/lm/attention-tiny.yaml",
        [
            f"data.path={text}",
            "data.seq_len=64",
            "model.d_model=32",
            "model.n_layers=1",
            "train.steps=30",
            "train.batch_size=8",
            "train.lr=3e-3",
            "train.warmup_steps=5",
            "train.log_every=5",
            f"run.dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert losses[-1] < losses[0] - 0.5
    assert result.metrics["val_bpb"] < 8 and cfg.model.vocab_size == 257

    # the run folder alone rebuilds the model; generate.py decodes with the recurrent states
    from memnets.checkpoint import load_run

    saved_cfg, model = load_run(tmp_path / "run")
    assert saved_cfg.model == cfg.model
    ids = torch.tensor([list(b"line 1")])
    greedy = model.generate(ids, 5)
    for t in range(ids.shape[1], greedy.shape[1]):
        assert greedy[0, t] == model(greedy[:, :t])[0, -1].argmax()
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/generate.py"),
            str(tmp_path / "run"),
            "--prompt",
            "line 1",
            "--max-new-tokens",
            "5",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("line 1") and out.stdout.rstrip("\n") == bytes(greedy[0].tolist()).decode(
        errors="replace"
    )


def test_bits_per_byte_of_a_bare_bin_with_a_bpe_tokenizer(tmp_path):
    """A nanoGPT-style .bin (no meta.json) tokenized with a byte-level BPE: bits per byte from the bytes
    per token its decoded tokens hold (it was NaN), close to the figure of the text it came from."""
    tokenizers = pytest.importorskip("tokenizers")
    docs = [f"note {i}: memory mixers write keys and read values, chunk by chunk." for i in range(300)]
    tok = tokenizers.ByteLevelBPETokenizer()  # GPT-2 style: decoding restores the text
    tok.train_from_iterator(docs, vocab_size=300, special_tokens=["</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    eos = tok.token_to_id("</s>")
    ids = [i for d in docs for i in [*tok.encode(d).ids, eos]]
    np.asarray(ids, dtype=np.uint16).tofile(tmp_path / "tokens.bin")
    true_bpt = sum(len(d.encode()) for d in docs) / len(ids)
    cfg = load_config(
        ROOT / "configs/lm/attention-tiny.yaml",
        [
            f"data.path={tmp_path / 'tokens.bin'}",
            f"data.text.tokenizer={tmp_path / 'tokenizer.json'}",
            "data.seq_len=32",
            "model.d_model=16",
            "model.n_layers=1",
            "train.steps=2",
            "train.batch_size=2",
            "train.eval_batches=2",
            f"run.dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    bpt = result.metrics["val_loss"] / math.log(2) / result.metrics["val_bpb"]
    assert bpt == pytest.approx(true_bpt, rel=1e-3)


def test_memory_saving_settings_are_logged(tmp_path):
    """``train.activation_checkpointing`` and ``train.memory_recompute`` each say what they do in the log
    (the large LM configs turn them on), and neither line appears when they are off."""
    titans = str(ROOT / "configs/mqar/titans.yaml")
    on = ["train.activation_checkpointing=true", "train.memory_recompute=true"]

    def logged(overrides: list[str], run_dir) -> str:
        lines: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
        log = logging.getLogger("memnets")
        log.addHandler(handler)
        try:
            train(load_config(titans, [*TINY_MQAR, "train.steps=1", *overrides, f"run.dir={run_dir}"]))
        finally:
            log.removeHandler(handler)
        return "\n".join(lines)

    text = logged(on, tmp_path / "on")
    assert "train.activation_checkpointing: each block" in text
    assert "train.memory_recompute: the chunked and compiled memory engines" in text
    text = logged([], tmp_path / "off")
    assert "train.activation_checkpointing" not in text and "train.memory_recompute" not in text
