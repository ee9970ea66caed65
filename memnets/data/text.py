"""Text corpora for language modelling (``data.kind: text``); ``data.path`` is one of

* a folder written by ``scripts/prepare_data.py``: ``meta.json``, ``train_*.bin`` shards and ``val.bin``,
  memory-mapped (see :mod:`memnets.data.shards`); ``data.text.val_fraction`` does not apply;
* a ``.bin``: pre-tokenized ``uint16``/``uint32`` tokens (nanoGPT-style), memory-mapped, described by a
  ``meta.json`` beside it or scanned for ids that do not fit the tokenizer;
* a ``.txt`` (one document), ``.jsonl``/``.json``/``.parquet`` (one document per row, ``text_field``):
  tokenized at start-up in this process, fine for small files; above ``LARGE_TEXT_BYTES`` a warning
  points to ``prepare_data.py``, which tokenizes once, with several processes, into shards.

Documents are tokenized (byte-level by default, see :mod:`memnets.data.tokenizer`) and packed with an EOS
after each; for a single file the last ``val_fraction`` of the stream is the validation split. Training
windows are assigned per :mod:`memnets.data.windows` (each window at most once per epoch, independent of
the number of processes; a resumed run sees exactly the batches it would have seen). Evaluation reports
loss and bits per byte.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataError, MissingData
from .shards import TokenFiles, dtype_for_vocab, open_bin, open_folder
from .sources import FILE_KINDS, Source, read_records
from .tokenizer import BYTE_EOS, ByteTokenizer, HFTokenizer, build_tokenizer
from .windows import WindowSampler

log = logging.getLogger("memnets")

LARGE_TEXT_BYTES = 100 * 2**20
_BATCH_CHARS = 4 * 2**20


class Concat:
    """Several token arrays read as one (for scripts that tile windows over the whole training stream)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.first = np.concatenate([[0], np.cumsum([len(p) for p in parts])])

    def __len__(self) -> int:
        return int(self.first[-1])

    def __getitem__(self, sl: slice) -> np.ndarray:
        lo, hi, _ = sl.indices(len(self))
        i = int(np.searchsorted(self.first, lo, side="right")) - 1
        out = []
        while lo < hi:
            part, off = self.parts[i], lo - int(self.first[i])
            piece = part[off : off + hi - lo]
            out.append(np.asarray(piece))
            lo += len(piece)
            i += 1
        return np.concatenate(out) if out else np.zeros(0, dtype=self.parts[0].dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[0 : len(self)].astype(dtype) if dtype is not None else self[0 : len(self)]


def tokenize_file(path: Path, tokenizer, text_field: str, errors: str) -> tuple[np.ndarray, int]:
    """A text file as one token stream (EOS after each document) in the smallest dtype that holds the
    vocabulary, and its size in UTF-8 bytes. Memory peaks near twice the stream (the pieces, then the
    joined array), not at a Python list of ints."""
    size = path.stat().st_size
    if size > LARGE_TEXT_BYTES:
        log.warning(
            "data.path=%s is %.0f MB of text, tokenized now in this process (and again at every start); "
            "tokenize it once with several processes: python scripts/prepare_data.py %s OUT_DIR --tokenizer %s, "
            "then data.path=OUT_DIR",
            path,
            size / 1e6,
            path,
            tokenizer.name,
        )
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    source = Source(FILE_KINDS[path.suffix.lower()], str(path), size)
    parts: list[np.ndarray] = []
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    n_bytes, batch, ends, chars = 0, [], [], 0

    def flush() -> None:
        nonlocal n_bytes
        for ids, text, end in zip(tokenizer.encode_batch(batch), batch, ends):
            parts.append(ids.astype(dtype, copy=False))
            n_bytes += len(ids) if isinstance(tokenizer, ByteTokenizer) else len(text.encode("utf-8"))
            if end:
                parts.append(eos)
        batch.clear()
        ends.clear()

    for rec in read_records(source, text_field, errors):
        batch.append(rec.text)
        ends.append(rec.ends_doc)
        chars += len(rec.text)
        if chars >= _BATCH_CHARS:
            flush()
            chars = 0
    flush()
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)), n_bytes


class TextTask:
    def __init__(self, cfg, path: str, seq_len: int, seed: int) -> None:
        p = Path(path).expanduser()
        self.seq_len, self.seed = seq_len, seed
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        if p.is_dir():
            files = open_folder(p, self.tokenizer, cfg.dtype)  # its val.bin: val_fraction does not apply
        elif not p.exists():
            raise MissingData(f"data.path={path!r} does not exist")
        elif p.suffix.lower() == ".bin":
            files = self._split(open_bin(p, self.tokenizer, cfg.dtype), cfg.val_fraction)
        elif p.suffix.lower() in FILE_KINDS:
            stream, n_bytes = tokenize_file(p, self.tokenizer, cfg.text_field, cfg.encoding_errors)
            bpt = n_bytes / max(len(stream), 1)
            files = self._split(
                TokenFiles([stream], None, self.vocab_size, bpt, "tokenized now"), cfg.val_fraction
            )
        else:
            raise DataError(
                f"data.path={path!r}: unsupported file type {p.suffix!r}; use a folder from prepare_data.py, "
                ".txt, .jsonl, .json, .parquet or .bin"
            )
        need = seq_len + 2
        n_val = 0 if files.val is None else len(files.val)
        val_needed = p.is_dir() or cfg.val_fraction > 0  # 0 only from scripts that evaluate a whole file
        self.sampler = WindowSampler([len(s) for s in files.train], seq_len, seed)
        if self.sampler.total < 1 or sum(len(s) for s in files.train) < need or (val_needed and n_val < need):
            raise DataError(
                f"data.path={path!r} has {sum(len(s) for s in files.train)} training tokens and "
                f"{n_val} validation tokens: too few for "
                f"data.seq_len={seq_len} with data.text.val_fraction={cfg.val_fraction} (each split needs >= {need})"
            )
        self.shards = files.train
        self.train = files.train[0] if len(files.train) == 1 else Concat(files.train)
        self.val = files.val if files.val is not None else np.zeros(0, dtype=files.train[0].dtype)
        self.bytes_per_token = files.bytes_per_token
        log.info(
            "data: %s | %s | %d training windows of %d tokens in %d shard(s), %d validation tokens",
            path,
            files.described_by,
            self.sampler.total,
            seq_len + 1,
            len(self.shards),
            len(self.val),
        )

    @staticmethod
    def _split(files: TokenFiles, val_fraction: float) -> TokenFiles:
        stream = files.train[0]
        n_val = int(len(stream) * val_fraction)
        files.train, files.val = [stream[: len(stream) - n_val]], stream[len(stream) - n_val :]
        return files

    def _rows(self, data: list[np.ndarray], shard: np.ndarray, starts: np.ndarray) -> tuple[Tensor, Tensor]:
        rows = np.stack(
            [np.asarray(data[j][s : s + self.seq_len + 1], dtype=np.int64) for j, s in zip(shard, starts)]
        )
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """The global batch of ``step``: samples ``step * batch_size + [0, batch_size)``."""
        shard, starts = self.sampler.locate(step * batch_size + np.arange(batch_size))
        return self._rows(self.shards, shard, starts)

    def val_batches(self, batch_size: int, max_batches: int):
        """Non-overlapping windows tiled from the start of the validation split."""
        n = min((len(self.val) - 1) // self.seq_len, batch_size * max_batches)
        starts = np.arange(n) * self.seq_len
        for i in range(0, n, batch_size):
            sl = starts[i : i + batch_size]
            yield self._rows([self.val], np.zeros(len(sl), dtype=np.int64), sl)

    def bits_per_byte(self, loss: float) -> float:
        return loss / math.log(2) / self.bytes_per_token


__all__ = ["BYTE_EOS", "ByteTokenizer", "Concat", "DataError", "HFTokenizer", "TextTask", "build_tokenizer"]
