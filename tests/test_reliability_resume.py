"""Resuming and stopping (issue 25): which weights eval/generate load, what a resume may change,
signals during evaluation, resuming across single-process, DDP and FSDP runs. CPU, seconds."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY_MQAR, load_script, run_train
from safetensors.torch import load_file

from memnets import checkpoint as ckpt
from memnets import trainer as trainer_mod
from memnets.config import load_config
from memnets.resume import optimizer_state_for
from memnets.trainer import train
from memnets.validation import ConfigError

MQAR = str(ROOT / "configs/mqar/attention.yaml")


def _cfg(run_dir, *extra):
    return load_config(MQAR, [*TINY_MQAR, f"run.dir={run_dir}", *extra])


def _rows(run_dir):
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stop_at(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """Make the run behave as if ``signum`` arrived during ``step``."""
    real = trainer_mod.Trainer._stop_requested
    monkeypatch.setattr(
        trainer_mod.Trainer, "_stop_requested", lambda self: signum if self.step == step else real(self)
    )


def test_eval_and_generate_use_the_newest_weights_and_say_which(tmp_path, monkeypatch, capsys):
    """Case 5: a run that finished at step 4, was extended with --resume and stopped at step 6 was
    evaluated with the step-4 model.safetensors, without saying which step."""
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=4", "train.lr=1e-2"))
    with monkeypatch.context() as m:
        _stop_at(m, 6)
        assert (
            train(_cfg(run, "train.steps=10", "train.lr=1e-2", "run.resume=auto")).preempted == signal.SIGTERM
        )
    found = ckpt.open_run(run)
    assert (found.source.name, found.step) == ("step_0000006.pt", 6)
    saved = torch.load(run / "checkpoints/step_0000006.pt", weights_only=False)["model"]
    for k, v in found.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    capsys.readouterr()
    assert load_script("scripts/eval.py").main([str(run), "--num-test", "16"]) == 0
    assert f"weights: {run / 'checkpoints/step_0000006.pt'} (step 6)" in capsys.readouterr().out

    train(_cfg(run, "train.steps=10", "train.lr=1e-2", "run.resume=auto"))  # finish: the export is newest
    found = ckpt.open_run(run)
    assert (found.source.name, found.step) == ("model.safetensors", 10)
    weights = found.model.state_dict()
    for k, v in load_file(run / "model.safetensors").items():  # tied weights are stored once
        assert torch.equal(weights[k], v), k


def test_generate_rejects_bad_sampling_arguments(capsys):
    generate = load_script("scripts/generate.py")
    for args, message in [
        (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1, got -5"),
        (["--top-k", "0"], "--top-k must be >= 1"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            generate.main(["no-such-run", *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_resume_names_every_difference_that_matters_including_the_seed(tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(run, "train.steps=2"))
    resume = ["train.steps=4", "run.resume=auto"]
    with pytest.raises(ConfigError, match=r"run\.seed differs from the checkpoint \(0 there, 1 now\)"):
        train(_cfg(run, *resume, "run.seed=1"))
    with pytest.raises(ConfigError, match=r"model\.d_model differs .*; run\.seed differs"):
        train(_cfg(run, *resume, "run.seed=1", "model.d_model=64"))
    # data.num_workers does not change the batches; train settings may change and are logged
    capsys.readouterr()
    assert train(_cfg(run, *resume, "data.num_workers=2", "train.lr=5e-3")).step == 4
    assert "resuming with train.lr=0.005 (the checkpoint had 0.003)" in capsys.readouterr().out


def test_train_steps_below_the_checkpoint_and_a_finished_run(tmp_path):
    """`train.steps` below the checkpoint's step appended duplicate evaluation rows."""
    run = tmp_path / "run"
    first = train(_cfg(run, "train.steps=6"))
    rows = _rows(run)
    with pytest.raises(ConfigError, match=r"train\.steps=4 is below the step of the checkpoint .*\(6, "):
        train(_cfg(run, "train.steps=4", "run.resume=auto"))
    again = train(_cfg(run, "train.steps=6", "run.resume=auto"))  # already done: nothing is appended
    assert _rows(run) == rows
    assert again.step == 6 and again.metrics == first.metrics


def _abandon_on_second_eval_batch(monkeypatch, signals: list[int]) -> list[int]:
    real = trainer_mod.Trainer._abandon_eval
    calls: list[int] = []

    def checked(self):
        calls.append(self.step)
        if len(calls) == 2:  # the second batch of the first evaluation
            for signum in signals:
                os.kill(os.getpid(), signum)  # the handler runs before the next bytecode
        return real(self)

    monkeypatch.setattr(trainer_mod.Trainer, "_abandon_eval", checked)
    return calls


def test_a_second_signal_abandons_an_evaluation_and_saves(tmp_path, monkeypatch):
    """SIGINT during a long evaluation was ignored until the evaluation ended."""
    calls = _abandon_on_second_eval_batch(monkeypatch, [signal.SIGINT, signal.SIGINT])
    result = train(_cfg(tmp_path / "run", "train.steps=10", "train.eval_every=4"))
    assert result.preempted == signal.SIGINT and result.step == 4
    assert calls == [4, 4], "stopped at the first check after the second signal (of 8 batches)"
    assert not any("val_loss" in r for r in _rows(tmp_path / "run"))
    assert ckpt.load_latest(tmp_path / "run/checkpoints")[0]["step"] == 4


def test_one_signal_abandons_an_evaluation_after_the_grace_period(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "EVAL_GRACE_S", -1.0)  # the deadline has passed at the next check
    calls = _abandon_on_second_eval_batch(monkeypatch, [signal.SIGTERM])
    result = train(_cfg(tmp_path / "run", "train.steps=10", "train.eval_every=4"))
    assert result.preempted == signal.SIGTERM and result.step == 4 and calls == [4, 4]


def test_one_signal_lets_a_short_evaluation_finish(tmp_path, monkeypatch):
    calls = _abandon_on_second_eval_batch(monkeypatch, [signal.SIGTERM])
    result = train(_cfg(tmp_path / "run", "train.steps=10", "train.eval_every=4"))
    assert result.preempted == signal.SIGTERM and result.step == 4 and len(calls) == 8
    assert [r["step"] for r in _rows(tmp_path / "run") if "val_loss" in r] == [4]


def test_optimizer_state_converts_between_index_and_name_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": [model[1].weight, model[0].weight]}, {"params": [model[0].bias]}])
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    by_index = opt.state_dict()
    by_name = optimizer_state_for(by_index, model, opt, by_name=True)
    assert by_name["param_groups"][0]["params"] == ["1.weight", "0.weight"]
    assert torch.equal(by_name["state"]["1.weight"]["exp_avg"], by_index["state"][0]["exp_avg"])
    back = optimizer_state_for(by_name, model, opt, by_name=False)
    assert (
        back["param_groups"] == by_index["param_groups"] and back["state"].keys() == by_index["state"].keys()
    )
    same = optimizer_state_for(by_index, model, opt, by_name=False)
    assert (
        same["param_groups"] == by_index["param_groups"] and same["state"].keys() == by_index["state"].keys()
    )


def test_a_state_saved_by_name_follows_its_parameters_into_other_groups():
    """A resume that moves a parameter out of weight decay (train.no_decay) keeps its AdamW moments."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    saved = torch.optim.AdamW([{"params": [model[0].weight, model[1].weight]}, {"params": [model[0].bias]}])
    model(torch.randn(2, 3)).sum().backward()
    saved.step()
    by_name = optimizer_state_for(saved.state_dict(), model, saved, by_name=True)
    now = torch.optim.AdamW(
        [{"params": [model[0].weight]}, {"params": [model[1].weight, model[0].bias]}], weight_decay=0.3
    )
    loaded = optimizer_state_for(by_name, model, now, by_name=False)
    now.load_state_dict(loaded)
    torch.testing.assert_close(now.state[model[1].weight]["exp_avg"], saved.state[model[1].weight]["exp_avg"])
    torch.testing.assert_close(now.state[model[0].bias]["exp_avg"], saved.state[model[0].bias]["exp_avg"])
    with pytest.raises(
        ValueError, match=r"optimizer groups hold \[2, 1\] parameters where this run's hold \[1, 2\]"
    ):
        optimizer_state_for(saved.state_dict(), model, now, by_name=False)


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*cmd, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_resume_across_single_process_and_fsdp(tmp_path):
    """Resuming a single-process (or DDP) checkpoint under FSDP failed with KeyError 'state.0.step'."""
    common = [MQAR, *TINY_MQAR, "train.lr=1e-2", "train.checkpoint_every=3", "train.distributed=fsdp"]
    full = run_train([*common, "train.steps=6", f"run.dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr
    # single process -> FSDP
    assert run_train([*common, "train.steps=3", f"run.dir={tmp_path / 'a'}"]).returncode == 0
    to_fsdp = _torchrun([*common, "train.steps=6", f"run.dir={tmp_path / 'a'}", "--resume"])
    assert to_fsdp.returncode == 0, to_fsdp.stderr[-3000:]
    # FSDP -> single process
    from_fsdp = _torchrun([*common, "train.steps=3", f"run.dir={tmp_path / 'b'}"])
    assert from_fsdp.returncode == 0, from_fsdp.stderr[-3000:]
    resumed = run_train([*common, "train.steps=6", f"run.dir={tmp_path / 'b'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    want = load_file(tmp_path / "full/model.safetensors")
    for name in ("a", "b"):
        got = load_file(tmp_path / name / "model.safetensors")
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")


@pytest.mark.slow
def test_launcher_exits_128_plus_signal_when_preempted(tmp_path):
    """torchrun exits 1 with a traceback when it is sent SIGTERM; `train.py --nproc-per-node` exits
    143 after its workers saved a checkpoint."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), MQAR, *TINY_MQAR, "train.steps=100000", f"run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*cmd, "--nproc-per-node", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("step"):
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert ckpt.load_latest(run / "checkpoints") is not None
