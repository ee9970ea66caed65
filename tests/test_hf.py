"""memnets.hf and scripts/export_hf.py: every registered mixer exports to a Hugging Face folder that
loads (with ``import memnets.hf`` and with ``trust_remote_code``) into a model whose logits equal the
memnets LM's and whose greedy ``generate`` equals ``LM.generate`` token for token; the byte tokenizer
round-trips as a Hugging Face tokenizer. Nothing is downloaded."""

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from helpers import load_script, train_tiny_text
from transformers import AutoModelForCausalLM, AutoTokenizer

import memnets
from memnets.checkpoint import save_checkpoint
from memnets.config import Config, DataConfig, TextConfig, save_config
from memnets.data.text import ByteTokenizer
from memnets.hf import MemnetsForCausalLM, build_hf_tokenizer, export_run
from memnets.model import ModelConfig

PROMPT = "the quick brown fox"
NEW = 8


def _fake_run(folder, mixer: str, step: int = 3, **model) -> memnets.LM:
    """A run folder laid out as the trainer leaves it (config.yaml, checkpoints/step_*.pt with the
    LM's state dict and step), with freshly initialised weights: what is tested is the export."""
    cfg = Config(
        model=ModelConfig(vocab_size=257, d_model=32, n_layers=2, num_heads=2, mixer=mixer, **model),
        data=DataConfig(kind="text", seq_len=16, path="corpus.txt", text=TextConfig(tokenizer="byte")),
    )
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    lm = memnets.LM(cfg.model).eval()
    save_checkpoint({"model": lm.state_dict(), "step": step}, folder / "checkpoints", step, keep=2)
    return lm


def _greedy_matches(hf_out: torch.Tensor, ref: torch.Tensor, eos: int) -> None:
    """HF stops a row at EOS and pads it; LM.generate always runs max_new_tokens: rows agree up to
    and including the first EOS."""
    for got, want in zip(hf_out.tolist(), ref.tolist()):
        n = len(got)
        if eos in got[-NEW:]:
            n = len(got) - NEW + got[-NEW:].index(eos) + 1
        assert got[:n] == want[:n]
        assert n == len(want) or got[n - 1] == eos


@pytest.mark.parametrize("mixer", memnets.list_mixers())
def test_export_load_logits_and_greedy_generation(mixer, tmp_path):
    torch.manual_seed(0)
    ref = _fake_run(tmp_path / "run", mixer)
    info = export_run(tmp_path / "run", tmp_path / "hf")
    assert info.step == 3 and info.weights.name == "step_0000003.pt" and info.tokenizer == "byte"

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert isinstance(model, MemnetsForCausalLM) and not model.training
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = tok([PROMPT, PROMPT.upper()], return_tensors="pt")["input_ids"]
    assert ids.tolist() == [ByteTokenizer().encode(PROMPT), ByteTokenizer().encode(PROMPT.upper())]

    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids), rtol=1e-5, atol=1e-5)
        want = ref.generate(ids, NEW)
        got = model.generate(ids, do_sample=False, max_new_tokens=NEW)
    _greedy_matches(got, want, tok.eos_token_id)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real 2-step training run (attention, byte text) and its export through the script."""
    folder = tmp_path_factory.mktemp("hf_trained")
    train_tiny_text(folder / "run", 100, "train.steps=2")
    assert load_script("scripts/export_hf.py").main([str(folder / "run"), str(folder / "hf")]) == 0
    return folder


def test_export_script_records_the_newest_checkpoint(trained_run):
    config = json.loads((trained_run / "hf" / "config.json").read_text())
    assert config["model_type"] == "memnets" and config["memnets_source"]["step"] == 2
    assert config["memnets_source"]["weights"].endswith("step_0000002.pt")
    assert config["vocab_size"] == 257 and config["eos_token_id"] == 256
    for name in ("model.safetensors", "tokenizer.json", "configuration_memnets.py", "modeling_memnets.py"):
        assert (trained_run / "hf" / name).is_file()


def test_trust_remote_code_loads_the_same_model(trained_run):
    from memnets.checkpoint import load_run

    _, ref = load_run(trained_run / "run")
    model = AutoModelForCausalLM.from_pretrained(trained_run / "hf", trust_remote_code=True)
    ids = torch.tensor([ByteTokenizer().encode(PROMPT)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", ["attention", "titans"])
def test_left_padded_batch_generates_each_row_as_alone(mixer, tmp_path):
    """generate on prompts of different lengths (left-padded, as lm-eval batches them) gives each
    row the tokens LM.generate gives it alone; untied embeddings also round-trip."""
    ref = _fake_run(tmp_path / "run", mixer, tie_embeddings=False)
    export_run(tmp_path / "run", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", padding_side="left")
    prompts = ["a short one", "a somewhat longer prompt"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        got = model.generate(**batch, do_sample=False, max_new_tokens=NEW)
        for row, prompt in zip(got, prompts):
            ids = torch.tensor([ByteTokenizer().encode(prompt)])
            want = ref.generate(ids, NEW)[0]
            _greedy_matches(row[-(ids.shape[1] + NEW) :][None], want[None], tok.eos_token_id)


def test_padding_and_beam_errors(tmp_path):
    _fake_run(tmp_path / "run", "attention")
    export_run(tmp_path / "run", tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 256, (2, 6))
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=right).logits, model(ids).logits)
        with pytest.raises(ValueError, match="right-padded"):
            model(ids, attention_mask=right, use_cache=True)
        with pytest.raises(ValueError, match="same side"):
            model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 0], [1] * 6]))
        with pytest.raises(NotImplementedError, match="num_beams=2"):
            model.generate(ids, num_beams=2, max_new_tokens=2)


def test_byte_tokenizer_equals_memnets_bytes():
    tok, ref = build_hf_tokenizer("byte"), ByteTokenizer()
    text = "plain ascii, tabs\tand\nnewlines, accents é ñ, CJK 日本語, emoji 🙂, controls \x00\x7f"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == ref.encode(text)
    assert tok.decode(ids) == text and tok.eos_token_id == ref.eos_id == 256 and len(tok) == 257
    every_byte = bytes(range(256)).decode("latin-1")
    assert tok(every_byte, add_special_tokens=False)["input_ids"] == ref.encode(every_byte)


def test_export_refuses_the_run_folder_itself(tmp_path):
    _fake_run(tmp_path / "run", "attention")
    with pytest.raises(ValueError, match="is the run folder"):
        export_run(tmp_path / "run", tmp_path / "run")


def test_memnets_import_is_lazy_and_the_missing_extra_is_named():
    code = (
        "import sys; import memnets; assert 'transformers' not in sys.modules, 'memnets imported transformers'\n"
        "sys.modules['transformers'] = None  # as if it were not installed\n"
        "try:\n    import memnets.hf\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'memnets[hf]'" in out.stdout


def test_mqar_run_exports_without_tokenizer(tmp_path):
    cfg = Config(
        model=ModelConfig(vocab_size=64, d_model=32, n_layers=1, num_heads=2, mixer="gated_deltanet")
    )
    (tmp_path / "run").mkdir()
    save_config(cfg, tmp_path / "run" / "config.yaml")
    ref = memnets.LM(cfg.model).eval()
    save_checkpoint({"model": ref.state_dict(), "step": 7}, tmp_path / "run" / "checkpoints", 7, keep=2)
    info = export_run(tmp_path / "run", tmp_path / "hf")
    assert info.tokenizer is None and not (tmp_path / "hf" / "tokenizer.json").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_eos", [True, False])
def test_tokenizer_json_run_keeps_its_ids_and_eos(tmp_path, with_eos):
    """A run trained with a tokenizer.json: the exported tokenizer gives HFTokenizer's ids, and its
    EOS (appended one past the vocabulary when the file has none, as memnets counts it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from memnets.data.text import HFTokenizer

    words = ["the", "quick", "brown", "fox", "[UNK]"] + (["</s>"] if with_eos else [])
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / "tokenizer.json"))
    ref = HFTokenizer(str(tmp_path / "tokenizer.json"))
    tok = build_hf_tokenizer(str(tmp_path / "tokenizer.json"))
    text = "the quick brown fox jumps"
    assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text)
    assert tok.eos_token_id == ref.eos_id and len(tok) == ref.vocab_size


def test_loading_is_strict_about_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    _fake_run(tmp_path / "run", "titans")
    export_run(tmp_path / "run", tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    weights = load_file(str(path))
    dropped = next(k for k in weights if ".mixer." in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
