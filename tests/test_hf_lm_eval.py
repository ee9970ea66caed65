"""lm-evaluation-harness on an exported memnets model, on CPU, through ``scripts/eval.py --lm-eval``
(which exports the run and runs lm-eval's ``hf`` model with ``trust_remote_code``, as ``lm_eval --model
hf`` does), over the tiny tasks in ``tests/data/lm_eval_tasks`` (local data, nothing downloaded). The
harness's numbers are checked against the memnets LM: log-likelihoods of the choices, whole-document
log-likelihoods, and greedy generations (in batches of prompts of different lengths)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from helpers import ROOT, load_script

import memnets
from memnets.checkpoint import save_checkpoint
from memnets.config import Config, DataConfig, ModelConfig, save_config
from memnets.data.text import ByteTokenizer
from memnets.hf import build_hf_tokenizer

TASKS = ROOT / "tests" / "data" / "lm_eval_tasks"
NAMES = ("memnets_tiny_choice", "memnets_tiny_generation", "memnets_tiny_rolling")


def _eval_script():
    return load_script("scripts/eval.py")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A titans run folder (trainer layout, initialised weights) evaluated on the three tiny tasks."""
    run = tmp_path_factory.mktemp("lm_eval") / "run"
    torch.manual_seed(0)
    cfg = Config(
        model=ModelConfig(vocab_size=257, d_model=32, n_layers=2, num_heads=2, mixer="titans"),
        data=DataConfig(kind="text", seq_len=16, path="corpus.txt"),
    )
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    lm = memnets.LM(cfg.model).eval()
    save_checkpoint({"model": lm.state_dict(), "step": 5}, run / "checkpoints", 5, keep=2)
    argv = [str(run), "--lm-eval", ",".join(NAMES), "--lm-eval-include", str(TASKS)]
    argv += ["--lm-eval-samples", "--batch-size", "2", "--device", "cpu"]
    assert _eval_script().main(argv) == 0
    return lm, json.loads((run / "lm_eval.json").read_text())


def _log_likelihood(lm, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = lm(ids)[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    return float(logp[len(context) - 1 :].gather(-1, targets[len(context) - 1 :, None]).sum())


def test_results_file_records_the_run_and_every_task(evaluated):
    _, record = evaluated
    assert record["step"] == 5 and record["weights"].endswith("step_0000005.pt")
    assert set(record["results"]) == set(NAMES)
    res = record["results"]
    assert 0.0 <= res["memnets_tiny_choice"]["acc,none"] <= 1.0
    assert 0.0 <= res["memnets_tiny_generation"]["exact_match,none"] <= 1.0
    assert res["memnets_tiny_rolling"]["bits_per_byte,none"] > 0


def test_choice_log_likelihoods_equal_memnets(evaluated):
    lm, record = evaluated
    tok = ByteTokenizer()
    samples = record["samples"]["memnets_tiny_choice"]
    assert len(samples) == 4
    for sample in samples:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            want = _log_likelihood(lm, tok.encode(context), tok.encode(continuation))
            assert resp[0][0] == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_rolling_log_likelihoods_equal_memnets(evaluated):
    """loglikelihood_rolling scores every token of the document, the first after EOS."""
    lm, record = evaluated
    tok = ByteTokenizer()
    for sample in record["samples"]["memnets_tiny_rolling"]:
        text = sample["arguments"][0][0]
        want = _log_likelihood(lm, [tok.eos_id], tok.encode(text))
        assert sample["resps"][0][0] == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_generations_equal_memnets_greedy(evaluated):
    lm, record = evaluated
    hf_tok = build_hf_tokenizer("byte")
    samples = record["samples"]["memnets_tiny_generation"]
    assert len({len(s["arguments"][0][0]) for s in samples}) > 1  # batches were left-padded
    for sample in samples:
        context, gen_kwargs = sample["arguments"][0]
        ids = torch.tensor([ByteTokenizer().encode(context)])
        new = lm.generate(ids, gen_kwargs["max_gen_toks"])[0, ids.shape[1] :].tolist()
        if hf_tok.eos_token_id in new:
            new = new[: new.index(hf_tok.eos_token_id)]
        want = hf_tok.decode(new).split("\n")[0]
        assert sample["resps"][0][0] == want


def test_mqar_run_is_refused(tmp_path, capsys):
    cfg = Config(model=ModelConfig(vocab_size=64, d_model=32, n_layers=1, num_heads=2, mixer="attention"))
    tmp_path.joinpath("run").mkdir()
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert _eval_script().main([str(tmp_path / "run"), "--lm-eval", "piqa"]) == 2
    assert "lm-eval needs a text run" in capsys.readouterr().err
