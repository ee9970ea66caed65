"""scripts/prepare_data.py: shards and meta.json, identical output for any number of workers, a killed run
finishes byte-identical, inputs of every kind, and train.py on the prepared folder."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import ROOT, load_script

from memnets.data.errors import DataError
from memnets.data.prepare import PrepareOptions, prepare
from memnets.data.shards import dtype_for_vocab

tokenizers = pytest.importorskip("tokenizers")
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
]
N_DOCS = 9000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) for _ in range(N_DOCS)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (root / "notes.txt").write_text("".join(f"note {i}: {docs[i]}\n" for i in range(500)))
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]", "</s>"])
    tok.train_from_iterator(docs[:200], trainer)
    tok.save(str(root / "tokenizer.json"))
    return root


def _opts(corpus, out, **kw):
    base = dict(
        inputs=[str(corpus / "docs.jsonl"), str(corpus / "notes.txt")],
        out=str(out),
        tokenizer=str(corpus / "tokenizer.json"),
        shard_tokens=20_000,
        val_every=50,
        val_tokens=3_000,
        progress_every=0.0,
    )
    return PrepareOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "shards"
    prepare(_opts(corpus, out, workers=2), log=io.StringIO())
    return out


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".bin"}


def test_shards_and_meta_describe_the_corpus(reference, corpus):
    meta = json.loads((reference / "meta.json").read_text())
    tok = tokenizers.Tokenizer.from_file(str(corpus / "tokenizer.json"))
    eos = tok.token_to_id("</s>")
    assert meta["dtype"] == "uint16" and meta["eos_id"] == eos and meta["vocab_size"] == tok.get_vocab_size()
    assert len(meta["shards"]) > 3 and not (reference / "progress.json").exists()
    docs = 0
    for entry in [*meta["shards"], meta["val"]]:
        ids = np.fromfile(reference / entry["file"], dtype=np.uint16)
        assert len(ids) == entry["tokens"] and ids.max() == entry["max_token_id"] < meta["vocab_size"]
        docs += entry["documents"]
    assert docs == N_DOCS + 1, "every jsonl row and the .txt file, each once"
    assert meta["val"]["tokens"] >= 3_000 and all(s["tokens"] >= 20_000 for s in meta["shards"][:-1])
    first = np.fromfile(reference / meta["shards"][0]["file"], dtype=np.uint16)
    text = tok.decode(first[: int(np.argmax(first == eos))].tolist())
    assert text.split() == json.loads((corpus / "docs.jsonl").open().readlines()[1])["text"].split(), (
        "row 0 went to val.bin (val_every), row 1 opens the first training shard"
    )
    assert 1 < meta["bytes_per_token"] < 10 and dtype_for_vocab(70_000) == "uint32"


def test_the_number_of_workers_does_not_change_the_shards(reference, corpus, tmp_path):
    prepare(_opts(corpus, tmp_path / "w1", workers=1), log=io.StringIO())
    prepare(_opts(corpus, tmp_path / "w0", workers=0), log=io.StringIO())
    assert _files(tmp_path / "w1") == _files(reference) == _files(tmp_path / "w0")
    log = io.StringIO()
    assert prepare(_opts(corpus, tmp_path / "w1"), log=log)["shards"], "a finished folder is left as it is"
    assert "already complete" in log.getvalue()
    with pytest.raises(DataError, match="finished corpus prepared with other inputs or options"):
        prepare(_opts(corpus, tmp_path / "w1", shard_tokens=5_000), log=io.StringIO())


def test_a_killed_run_restarts_into_byte_identical_shards(reference, corpus, tmp_path):
    out = tmp_path / "killed"
    o = _opts(corpus, out)
    cmd = [
        sys.executable,
        str(ROOT / "scripts/prepare_data.py"),
        *o.inputs,
        str(out),
        "--tokenizer",
        o.tokenizer,
    ]
    cmd += ["--shard-tokens", "20000", "--val-every", "50", "--val-tokens", "3000", "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / "train_00001.bin").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its worker
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (out / "progress.json").exists() and not (out / "meta.json").exists(), "killed mid-run"
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        prepare(_opts(corpus, out, workers=2), log=f)
    assert "resuming after" in log.read_text()
    assert _files(out) == _files(reference)
    ref_meta, meta = (json.loads((d / "meta.json").read_text()) for d in (reference, out))
    assert meta["shards"] == ref_meta["shards"] and meta["val"] == ref_meta["val"]


def test_an_unfinished_folder_refuses_other_options(corpus, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "progress.json").write_text(json.dumps({"options": {"shard_tokens": 1}}))
    with pytest.raises(DataError, match="unfinished preparation with other inputs or options"):
        prepare(_opts(corpus, out), log=io.StringIO())


def test_folders_globs_parquet_and_saved_datasets_are_read(corpus, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line)["text"] for line in (corpus / "docs.jsonl").read_text().splitlines()[:300]]
    data = tmp_path / "in"
    (data / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"text": rows[:100]}), data / "sub" / "a.parquet")
    (data / "b.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows[100:200]))
    datasets.Dataset.from_dict({"text": rows[200:]}).save_to_disk(str(tmp_path / "saved"))
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        meta = prepare(
            PrepareOptions(
                [str(data), str(tmp_path / "in" / "*.jsonl"), str(tmp_path / "saved")],
                str(tmp_path / "out"),
                workers=0,
                shard_tokens=5_000,
                val_every=10,
                val_tokens=500,
                progress_every=0.0,
            ),
            log=f,
        )
    stream = b"".join(
        np.fromfile(tmp_path / "out" / s["file"], dtype=np.uint16).astype(np.uint8).tobytes()
        for s in [meta["val"], *meta["shards"]]
    )
    assert sum(s["documents"] for s in [*meta["shards"], meta["val"]]) == 400, (
        "folder (2 files) + glob + saved"
    )
    assert stream.count(rows[0].encode()) == 1 and stream.count(rows[150].encode()) == 2
    assert meta["tokens"] + meta["val"]["tokens"] == sum(len(r.encode()) + 1 for r in rows + rows[100:200])
    progress = log.read_text()
    assert "documents (" in progress and "tokens (" in progress and "eta" in progress


def test_a_hub_dataset_name_fails_at_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ConnectionError, match=r"'memnets-test/no-such-dataset'.*offline mode is on"):
        prepare(PrepareOptions(["memnets-test/no-such-dataset"], str(tmp_path / "o")), log=io.StringIO())
    assert time.time() - t0 < 5 and not (tmp_path / "o").exists()


def test_non_utf8_input_names_the_file_or_is_replaced_when_asked(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good text\n" * 50 + b"\xff\xfe" + b"more\n" * 30_000)
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte 500"):
        prepare(PrepareOptions([str(tmp_path / "bad.txt")], str(tmp_path / "o")), log=io.StringIO())
    meta = prepare(
        PrepareOptions(
            [str(tmp_path / "bad.txt")], str(tmp_path / "o2"), encoding_errors="replace", val_tokens=10
        ),
        log=io.StringIO(),
    )
    n_bytes = sum(s["bytes"] for s in meta["shards"]) + meta["val"]["bytes"]
    assert n_bytes == 500 + 2 * 3 + 150_000, "U+FFFD (3 bytes) for each bad byte"
    assert meta["tokens"] + meta["val"]["tokens"] == n_bytes + 2, (
        "EOS closing val.bin's piece and the document"
    )


def _train_main():
    return load_script("train.py").main


def test_train_py_reads_the_prepared_folder(reference, corpus, tmp_path, capsys):
    args = [
        str(ROOT / "configs/lm/attention-tiny.yaml"),
        f"data.path={reference}",
        f"data.text.tokenizer={corpus / 'tokenizer.json'}",
        "data.seq_len=32",
        "model.d_model=32",
        "model.n_layers=1",
        "train.steps=4",
        "train.batch_size=4",
        "train.eval_batches=2",
        f"run.dir={tmp_path / 'run'}",
    ]
    assert _train_main()(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if "val_loss" in r][-1]
    meta = json.loads((reference / "meta.json").read_text())
    expect = final["val_loss"] / np.log(2) / (meta["val"]["bytes"] / meta["val"]["tokens"])
    assert final["step"] == 4 and np.isclose(final["val_bpb"], expect), (
        "bits per byte from meta.json, not NaN"
    )
    assert _train_main()([*args[:2], "data.seq_len=32", f"run.dir={tmp_path / 'run2'}"]) == 2
    assert "set data.text.tokenizer=" in capsys.readouterr().err, (
        "the byte tokenizer on BPE shards: a clear error"
    )


def test_a_transformers_tokenizer_folder_prepares_and_trains(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer.from_file(str(corpus / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")
    fast.save_pretrained(str(tmp_path / "hf_tok"))
    spec = f"hf:{tmp_path / 'hf_tok'}"
    from memnets.data.tokenizer import build_tokenizer

    wrapped = build_tokenizer(spec)
    text = "alpha beta gamma delta"
    assert wrapped.encode(text) == tok.encode(text, add_special_tokens=False).ids
    assert wrapped.eos_id == tok.token_to_id("</s>") and wrapped.vocab_size == tok.get_vocab_size()
    meta = prepare(_opts(corpus, tmp_path / "o", tokenizer=spec, workers=1), log=io.StringIO())
    assert meta["tokenizer"] == spec and meta["tokenizer_fingerprint"].startswith("transformers:")
    from memnets.config import TextConfig
    from memnets.data.text import TextTask

    task = TextTask(TextConfig(tokenizer=spec), str(tmp_path / "o"), 16, 0)
    assert task.sampler.total > 0 and math.isfinite(task.bytes_per_token)


def test_a_vocabulary_past_65536_gets_uint32_shards_that_train_reads(tmp_path):
    vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(70_000)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rng = np.random.default_rng(0)
    rows = [" ".join(f"w{i}" for i in rng.integers(60_000, 70_000, size=50)) for _ in range(200)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    spec = str(tmp_path / "tokenizer.json")
    meta = prepare(
        PrepareOptions([str(tmp_path / "d.jsonl")], str(tmp_path / "o"), tokenizer=spec, val_tokens=500),
        log=io.StringIO(),
    )
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70_002
    ids = np.fromfile(tmp_path / "o" / meta["shards"][0]["file"], dtype=np.uint32)
    assert ids.max() >= 60_002 and (ids == 1).sum() == meta["shards"][0]["documents"]
    from memnets.config import TextConfig
    from memnets.data.text import TextTask

    task = TextTask(TextConfig(tokenizer=spec), str(tmp_path / "o"), 16, 0)
    x, y = task.train_batch(0, 4)
    assert task.shards[0].dtype == np.uint32 and task.val.dtype == np.uint32
    assert int(x.max()) >= 60_002 and torch.equal(x[:, 1:], y[:, :-1])
