"""Data that used to be read silently wrong or fail with a traceback far from its cause (issue 25): each
case is now an error naming the file (and line, key or value), checked before training starts."""

import json
import math
import time

import numpy as np
import pytest
from helpers import ROOT, load_script

from memnets.config import TextConfig, load_config
from memnets.data.text import TextTask
from memnets.validation import ConfigError


def _task(path, seq_len=8, **kw):
    return TextTask(TextConfig(**kw), str(path), seq_len, 0)


def test_non_utf8_text_is_an_error_naming_the_file_unless_replace_is_asked(tmp_path):
    path = tmp_path / "b.txt"
    path.write_bytes(b"plain ascii text " * 20 + bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match=r"b\.txt: not valid UTF-8 at byte 340"):
        _task(path)
    task = _task(path, encoding_errors="replace")
    assert (task.train == 0xEF).any(), "U+FFFD (EF BF BD) stands for the bad bytes when asked"
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "bad \xff byte"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not valid UTF-8"):
        _task(jsonl)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": "thr\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:4: not valid JSON"):
        _task(path)


@pytest.mark.parametrize(("value", "said"), [(None, "null"), (7, "int 7"), (["a"], "list")])
def test_non_string_text_fields_are_named(tmp_path, value, said):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "ok " * 40}) + "\n" + json.dumps({"text": value}) + "\n")
    with pytest.raises(ValueError, match=rf"d\.jsonl:2: field 'text' is {said}.*expected a string"):
        _task(path)


def test_a_directory_is_not_reported_as_missing(tmp_path):
    (tmp_path / "x.txt").write_text("text")
    with pytest.raises(ValueError, match=r"is a folder without meta\.json.*prepare_data\.py"):
        _task(tmp_path)


def test_a_missing_tokenizer_path_is_not_called_a_bad_hub_id(tmp_path):
    (tmp_path / "c.txt").write_text("text " * 100)
    t0 = time.time()
    with pytest.raises(
        FileNotFoundError, match=r"tokenizer='nowhere/tokenizer\.json': no such tokenizer file"
    ):
        _task(tmp_path / "c.txt", tokenizer="nowhere/tokenizer.json")
    assert time.time() - t0 < 2, "no network attempt for a path"


def test_a_hub_tokenizer_name_fails_at_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "c.txt").write_text("text " * 100)
    t0 = time.time()
    with pytest.raises(ConnectionError, match=r"'memnets-test/no-such-model'.*offline mode is on"):
        _task(tmp_path / "c.txt", tokenizer="memnets-test/no-such-model")
    assert time.time() - t0 < 5


def test_gpt2_ids_read_with_the_byte_tokenizer_name_the_file(tmp_path):
    path = tmp_path / "gpt2.bin"
    np.random.default_rng(0).integers(0, 50257, size=4000).astype(np.uint16).tofile(path)
    with pytest.raises(
        ValueError, match=r"gpt2\.bin: token id \d+ at position \d+ >= the tokenizer's vocabulary 257"
    ):
        _task(path)


def test_uint32_tokens_read_as_uint16_are_caught(tmp_path):
    path = tmp_path / "u32.bin"
    np.random.default_rng(0).integers(1, 257, size=4000).astype(np.uint32).tofile(path)
    with pytest.raises(ValueError, match=r"u32\.bin: read as uint16, every odd token is 0.*uint32"):
        _task(path, dtype="uint16")
    assert _task(path, dtype="uint32").train.dtype == np.uint32


def _describe(folder, files, dtype="uint16", vocab=257, tokenizer="byte"):
    shards = [{"file": f, "documents": 1, "tokens": n, "bytes": 2 * n, "max_token_id": 200} for f, n in files]
    meta = {
        "format": "memnets-tokens",
        "version": 1,
        "tokenizer": tokenizer,
        "tokenizer_fingerprint": tokenizer,
        "vocab_size": vocab,
        "eos_id": 256,
        "dtype": dtype,
        "shards": shards,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def test_a_bin_with_meta_json_is_read_and_checked_by_it(tmp_path):
    path = tmp_path / "tokens.bin"
    np.arange(3000, dtype=np.uint32).__mod__(200).astype(np.uint32).tofile(path)
    _describe(tmp_path, [("tokens.bin", 3000)], dtype="uint32")
    task = _task(path)  # dtype auto: from meta.json
    assert task.train.dtype == np.uint32 and task.bytes_per_token == 2.0
    with pytest.raises(
        ValueError, match=r"data\.text\.dtype='uint16' but .*meta\.json states dtype 'uint32'"
    ):
        _task(path, dtype="uint16")
    _describe(tmp_path, [("tokens.bin", 3000)], dtype="uint32", vocab=50257, tokenizer="tiktoken:gpt2")
    with pytest.raises(
        ValueError, match=r"tokenized with 'tiktoken:gpt2' \(vocabulary 50257\).*set data\.text\.tokenizer"
    ):
        _task(path)
    _describe(tmp_path, [("tokens.bin", 2999)], dtype="uint32")
    with pytest.raises(ValueError, match=r"tokens\.bin: 12000 bytes, expected 2999 uint32 tokens"):
        _task(path)


def test_zero_val_fraction_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"data\.text\.val_fraction=0 leaves no validation split"):
        load_config(ROOT / "configs/lm/attention-tiny.yaml", ["data.path=x.txt", "data.text.val_fraction=0"])


def test_large_text_files_point_to_prepare_data(tmp_path, monkeypatch, caplog):
    import memnets.data.text as text

    monkeypatch.setattr(text, "LARGE_TEXT_BYTES", 1000)
    path = tmp_path / "big.txt"
    path.write_text("many words here " * 200)
    with caplog.at_level("WARNING", logger="memnets"):
        _task(path)
    assert "prepare_data.py" in caplog.text and "big.txt" in caplog.text


def test_loading_a_txt_peaks_near_a_few_times_its_size(tmp_path):
    import tracemalloc

    path = tmp_path / "m.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 60_000)  # 2.6 MB
    tracemalloc.start()
    task = _task(path, seq_len=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(task.train) + len(task.val) == path.stat().st_size + 1
    assert peak < 6 * path.stat().st_size, f"peak {peak / path.stat().st_size:.1f}x the file (was ~22x)"
    assert math.isclose(task.bytes_per_token, path.stat().st_size / (path.stat().st_size + 1))


def test_train_py_reports_data_errors_in_one_line(tmp_path, capsys):
    module = load_script("train.py")
    (tmp_path / "c.txt").write_text("text " * 100)
    base = [str(ROOT / "configs/lm/attention-tiny.yaml"), f"run.dir={tmp_path / 'run'}"]
    cases = [
        ([f"data.path={tmp_path / 'missing.txt'}"], "missing.txt' does not exist"),
        (
            [f"data.path={tmp_path / 'c.txt'}", "data.text.tokenizer=no/such/tokenizer.json"],
            "no such tokenizer file",
        ),
        ([f"data.path={tmp_path}"], "is a folder without meta.json"),
    ]
    for overrides, said in cases:
        assert module.main([*base, *overrides]) == 2
        err = capsys.readouterr().err
        assert err.startswith("config error: ") and said in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "checked before the run folder is made"
