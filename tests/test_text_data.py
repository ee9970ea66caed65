import json
import math

import numpy as np
import pytest
import torch

from memnets.config import TextConfig
from memnets.data.text import BYTE_EOS, TextTask


def test_txt_is_byte_tokenized_with_eos_and_split(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("héllo world " * 50)
    task = TextTask(TextConfig(val_fraction=0.1), str(path), seq_len=16, seed=0)
    assert task.vocab_size == 257
    stream = np.concatenate([task.train, task.val])
    assert stream[-1] == BYTE_EOS and bytes(stream[:6].tolist()) == "héllo".encode()
    x, y = task.train_batch(3, 4)
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(task.train_batch(3, 4)[0], x), "a batch is a function of (seed, step)"
    assert math.isclose(
        task.bits_per_byte(math.log(2)), len(stream) / len("héllo world ".encode() * 50) * 1.0, rel_tol=1e-9
    )


def test_jsonl_documents_are_packed_with_eos(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = [{"body": f"document number {i} " * 5} for i in range(30)]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = TextTask(TextConfig(text_field="body", val_fraction=0.2), str(path), seq_len=32, seed=0)
    stream = np.concatenate([task.train, task.val])
    assert (stream == BYTE_EOS).sum() == 30
    with pytest.raises(ValueError, match=r"docs\.jsonl:1: no 'text' field .*keys: \['body'\]"):
        TextTask(TextConfig(), str(path), seq_len=32, seed=0)


def test_pretokenized_bin_memmap(tmp_path):
    path = tmp_path / "tokens.bin"
    (np.arange(1000, dtype=np.uint16) % 257).tofile(path)
    task = TextTask(TextConfig(dtype="uint16", val_fraction=0.1), str(path), seq_len=8, seed=1)
    assert isinstance(task.train, np.memmap) and len(task.train) == 900 and task.val[0] == 900 % 257
    batches = list(task.val_batches(batch_size=4, max_batches=2))
    assert batches[0][0][0].tolist() == [i % 257 for i in range(900, 908)]


def test_hf_tokenizer_from_a_local_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    text = "the cat sat on the mat and the dog sat on the log " * 20
    tok.train_from_iterator(
        [text], tokenizers.trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]", "</s>"])
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "c.txt").write_text(text)
    task = TextTask(
        TextConfig(tokenizer=str(tmp_path / "tokenizer.json"), val_fraction=0.2),
        str(tmp_path / "c.txt"),
        8,
        0,
    )
    assert task.tokenizer.eos_id == tok.token_to_id("</s>") and task.vocab_size == tok.get_vocab_size()
    assert task.bytes_per_token > 1


def test_bad_inputs_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path='nope.txt'"):
        TextTask(TextConfig(), "nope.txt", 8, 0)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        TextTask(TextConfig(), str(tmp_path / "x.csv"), 8, 0)
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ValueError, match="too few for data.seq_len=64"):
        TextTask(TextConfig(), str(tmp_path / "short.txt"), 64, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4097])
def test_window_permutation_is_a_bijection(n):
    from memnets.data.windows import permute

    out = permute(np.arange(n), n, (3, 1))
    assert sorted(out.tolist()) == list(range(n))
    if n > 16:
        other_seed = permute(np.arange(n), n, (3, 2))
        assert not np.array_equal(out, np.arange(n)) and not np.array_equal(out, other_seed)


def test_each_window_once_per_epoch_whatever_the_batch_split(tmp_path):
    from memnets.data.windows import WindowSampler

    lengths, seq_len = [1000, 33, 0, 517], 16
    sampler = WindowSampler(lengths, seq_len, seed=5)
    total = sum((n - 1) // seq_len for n in lengths if n)
    assert sampler.total == total
    for epoch in range(2):
        shard, start = sampler.locate(np.arange(epoch * total, (epoch + 1) * total))
        pairs = set(zip(shard.tolist(), start.tolist()))
        assert len(pairs) == total, "no window twice in an epoch"
        assert all(s + seq_len + 1 <= lengths[j] for j, s in pairs)
    path = tmp_path / "c.txt"
    path.write_text("some words to fill the windows. " * 200)
    task = TextTask(TextConfig(), str(path), seq_len=16, seed=0)
    # a batch is samples step * batch_size + row: the split into steps (or processes) does not move them
    big = task.train_batch(1, 8)[0]
    assert torch.equal(big, torch.cat([task.train_batch(2, 4)[0], task.train_batch(3, 4)[0]]))
    assert torch.equal(big[:4], task.train_batch(1, 8)[0][:4])
