"""Local text corpora for language modelling.

* ``.bin``: a pre-tokenized stream (``uint16`` or ``uint32``, nanoGPT-style), memory-mapped.
* ``.txt``: read as one document (UTF-8).
* ``.jsonl`` / ``.json`` / ``.parquet``: one document per row (``text_field``), loaded through Hugging
  Face ``datasets`` offline (extra ``memnets[data]``).

Documents are tokenized (byte-level by default: token = byte, EOS = 256, vocabulary 257, nothing to
download; or a Hugging Face ``tokenizers`` tokenizer by file path or name) and packed into one stream
with an EOS after each document. The last ``val_fraction`` of the stream is the validation split.
Training windows of ``seq_len + 1`` tokens start at offsets drawn from ``(seed, step)``, so a resumed
run sees exactly the batches it would have seen. Evaluation reports loss and bits per byte.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

BYTE_EOS = 256


def _require(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed for this; install it with: pip install 'memnets[{extra}]'"
        ) from None


class ByteTokenizer:
    vocab_size = 257
    eos_id = BYTE_EOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer from a ``tokenizer.json`` path or a hub name."""

    def __init__(self, name: str) -> None:
        tokenizers = _require("tokenizers", "data")
        path = Path(name)
        tok = (
            tokenizers.Tokenizer.from_file(str(path))
            if path.is_file()
            else tokenizers.Tokenizer.from_pretrained(name)
        )
        self.tok = tok
        eos = next(
            (
                tok.token_to_id(t)
                for t in ("</s>", "<|endoftext|>", "<eos>", "[SEP]")
                if tok.token_to_id(t) is not None
            ),
            None,
        )
        self.vocab_size = tok.get_vocab_size() + (1 if eos is None else 0)
        self.eos_id = eos if eos is not None else tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.eos_id])


def build_tokenizer(name: str) -> ByteTokenizer | HFTokenizer:
    return ByteTokenizer() if name == "byte" else HFTokenizer(name)


def _documents(path: Path, text_field: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [path.read_text(encoding="utf-8", errors="replace")]
    kinds = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    if suffix not in kinds:
        raise ValueError(
            f"data.path={str(path)!r}: unsupported file type {suffix!r}; use .txt, .jsonl, .json, .parquet or .bin"
        )
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    datasets = _require("datasets", "data")
    ds = datasets.load_dataset(kinds[suffix], data_files=str(path), split="train")
    if text_field not in ds.column_names:
        raise ValueError(
            f"data.text.text_field={text_field!r} is not a column of {path}; columns: {ds.column_names}"
        )
    return list(ds[text_field])


class TextTask:
    def __init__(self, cfg, path: str, seq_len: int, seed: int) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"data.path={path!r} does not exist")
        self.seq_len, self.seed = seq_len, seed
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        if p.suffix.lower() == ".bin":
            stream = np.memmap(p, dtype=np.dtype(cfg.dtype), mode="r")
            self.bytes_per_token = 1.0 if cfg.tokenizer == "byte" else float("nan")
        else:
            docs = _documents(p, cfg.text_field)
            ids: list[int] = []
            for doc in docs:
                ids.extend(self.tokenizer.encode(doc))
                ids.append(self.tokenizer.eos_id)
            stream = np.asarray(ids, dtype=np.int64)
            n_bytes = sum(len(d.encode("utf-8")) for d in docs)
            self.bytes_per_token = n_bytes / max(len(ids), 1)
        self.vocab_size = self.tokenizer.vocab_size
        n_val = int(len(stream) * cfg.val_fraction)
        need = seq_len + 2
        if len(stream) - n_val < need or (cfg.val_fraction > 0 and n_val < need):
            raise ValueError(
                f"data.path={path!r} has {len(stream)} tokens: too few for data.seq_len={seq_len} "
                f"with data.text.val_fraction={cfg.val_fraction} (each split needs >= {need})"
            )
        self.train = stream[: len(stream) - n_val]
        self.val = stream[len(stream) - n_val :]

    def _windows(self, data, starts: np.ndarray) -> tuple[Tensor, Tensor]:
        rows = np.stack([np.asarray(data[s : s + self.seq_len + 1], dtype=np.int64) for s in starts])
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.train) - self.seq_len - 1, size=batch_size)
        return self._windows(self.train, starts)

    def val_batches(self, batch_size: int, max_batches: int):
        """Non-overlapping windows tiled from the start of the validation split."""
        n = min((len(self.val) - 1) // self.seq_len, batch_size * max_batches)
        starts = np.arange(n) * self.seq_len
        for i in range(0, n, batch_size):
            yield self._windows(self.val, starts[i : i + batch_size])

    def bits_per_byte(self, loss: float) -> float:
        return loss / math.log(2) / self.bytes_per_token
