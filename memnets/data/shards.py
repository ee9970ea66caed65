"""Token files on disk: the ``meta.json`` that describes them, and the checks made before training reads
them (dtype, tokenizer, vocabulary, file sizes, token ids).

A prepared folder (``scripts/prepare_data.py``) holds ``train_00000.bin``, ``train_00001.bin``, ... and
``val.bin`` (raw little-endian ``uint16`` or ``uint32`` tokens, an EOS after each document) and
``meta.json``::

    {"format": "memnets-tokens", "version": 1, "tokenizer": "byte", "tokenizer_fingerprint": "byte",
     "vocab_size": 257, "eos_id": 256, "dtype": "uint16", "bytes_per_token": 0.99,
     "shards": [{"file": "train_00000.bin", "documents": 812, "tokens": 1048611, "bytes": 1047800,
                 "max_token_id": 256}, ...],
     "val": {"file": "val.bin", ...same fields...}, "source": [...], "options": {...}}

A single ``.bin`` is described by a ``meta.json`` in its folder that lists it. A bare ``.bin`` (no such
``meta.json``, nanoGPT-style) is read with ``data.text.dtype`` (``auto``: ``uint16``) and scanned: token
ids at or above the vocabulary, and a ``uint16`` reading whose every odd position is zero (``uint32``
tokens), are errors naming the file. Its bytes per token (for bits per byte) are 1 with the byte
tokenizer, else estimated by decoding its first tokens (the warning about the file says so).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

log = logging.getLogger("memnets")

FORMAT, VERSION = "memnets-tokens", 1
DTYPES = ("uint16", "uint32")
SCAN_CHUNK = 1 << 24
BPT_SAMPLE = 1 << 20  # tokens of a bare .bin decoded to estimate its bytes per token


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a memnets token meta.json (format {FORMAT!r} expected)")
    if meta.get("dtype") not in DTYPES:
        raise DataError(f"{path}: dtype={meta.get('dtype')!r}; expected one of {DTYPES}")
    return meta


@dataclass
class TokenFiles:
    """The token arrays training reads (memory-mapped), and what is known about them."""

    train: list[np.ndarray]
    val: np.ndarray | None
    vocab_size: int
    bytes_per_token: float  # of the validation tokens when known (for bits per byte), else nan
    described_by: str  # meta.json path, or a note that nothing describes the file


def _open(path: Path, dtype: str, tokens: int | None) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path} is listed in meta.json but does not exist")
    size, item = path.stat().st_size, np.dtype(dtype).itemsize
    if size % item or (tokens is not None and size != tokens * item):
        expect = (
            f"{tokens} {dtype} tokens = {tokens * item} bytes" if tokens is not None else f"whole {dtype}s"
        )
        raise DataError(f"{path}: {size} bytes, expected {expect}; the file is truncated or of another dtype")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _check_tokenizer(meta: dict[str, Any], where: Path, tokenizer, dtype_cfg: str) -> None:
    if (
        meta.get("tokenizer_fingerprint") != tokenizer.fingerprint
        or meta.get("vocab_size") != tokenizer.vocab_size
    ):
        raise DataError(
            f"{where} was tokenized with {meta.get('tokenizer')!r} (vocabulary {meta.get('vocab_size')}) but "
            f"data.text.tokenizer={tokenizer.name!r} (vocabulary {tokenizer.vocab_size}) is another "
            f"tokenizer; set data.text.tokenizer={meta.get('tokenizer')!r}"
        )
    if dtype_cfg not in ("auto", meta["dtype"]):
        raise DataError(
            f"data.text.dtype={dtype_cfg!r} but {where} states dtype {meta['dtype']!r}; "
            "leave data.text.dtype=auto (the default) for files a meta.json describes"
        )


def _bytes_per_token(entries: list[dict[str, Any]]) -> float:
    tokens = sum(e.get("tokens", 0) for e in entries)
    nbytes = [e.get("bytes") for e in entries]
    if not tokens or any(b is None for b in nbytes):
        return float("nan")
    return sum(nbytes) / tokens


def _check_ids(entries: list[dict[str, Any]], folder: Path, vocab: int) -> None:
    for e in entries:
        if e.get("max_token_id", 0) >= vocab:
            raise DataError(
                f"{folder / e['file']}: token id {e['max_token_id']} >= vocabulary {vocab} (meta.json)"
            )


def open_folder(folder: Path, tokenizer, dtype_cfg: str) -> TokenFiles:
    """A folder written by ``prepare_data.py``."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        hint = (
            " (prepare_data.py is still running or was stopped: rerun it to finish)"
            if (folder / "progress.json").is_file()
            else ""
        )
        raise DataError(
            f"data.path={str(folder)!r} is a folder without meta.json{hint}; a folder must be written by "
            "scripts/prepare_data.py, otherwise point data.path to a .txt/.jsonl/.json/.parquet/.bin file"
        )
    meta = read_meta(meta_path)
    _check_tokenizer(meta, meta_path, tokenizer, dtype_cfg)
    entries = list(meta.get("shards", []))
    val_entry = meta.get("val")
    if not entries:
        raise DataError(f"{meta_path} lists no training shards")
    if not val_entry or not val_entry.get("tokens"):
        raise DataError(f"{meta_path} has no validation shard; rerun prepare_data.py with --val-tokens > 0")
    _check_ids([*entries, val_entry], folder, tokenizer.vocab_size)
    train = [_open(folder / e["file"], meta["dtype"], e["tokens"]) for e in entries]
    val = _open(folder / val_entry["file"], meta["dtype"], val_entry["tokens"])
    return TokenFiles(train, val, tokenizer.vocab_size, _bytes_per_token([val_entry]), str(meta_path))


def _scan_bin(path: Path, stream: np.ndarray, dtype: str, vocab: int) -> None:
    if dtype == "uint16" and len(stream) >= 64 and len(stream) % 2 == 0:
        # sample evenly spaced blocks: uint32 ids below 65536 read as uint16 put a zero at every odd position
        picks = np.linspace(0, len(stream) // 2 - 16, num=min(64, len(stream) // 32), dtype=np.int64) * 2
        block = np.concatenate([np.asarray(stream[p : p + 32]) for p in picks])
        if not block[1::2].any() and block[0::2].any():
            raise DataError(
                f"{path}: read as uint16, every odd token is 0; the file holds uint32 tokens. "
                "Set data.text.dtype=uint32, or put a meta.json beside it (scripts/prepare_data.py writes one)"
            )
    for lo in range(0, len(stream), SCAN_CHUNK):
        top = int(np.max(stream[lo : lo + SCAN_CHUNK]))
        if top >= vocab:
            at = lo + int(np.argmax(np.asarray(stream[lo : lo + SCAN_CHUNK]) >= vocab))
            raise DataError(
                f"{path}: token id {int(stream[at])} at position {at} >= the tokenizer's vocabulary {vocab}; "
                "was it written with another tokenizer (data.text.tokenizer) or dtype (data.text.dtype)?"
            )


def open_bin(path: Path, tokenizer, dtype_cfg: str) -> TokenFiles:
    """One ``.bin``: described by a ``meta.json`` beside it that lists it, or bare (scanned)."""
    meta_path = path.parent / "meta.json"
    if meta_path.is_file():
        meta = read_meta(meta_path)
        entries = [e for e in [*meta.get("shards", []), meta.get("val") or {}] if e.get("file") == path.name]
        if entries:
            _check_tokenizer(meta, meta_path, tokenizer, dtype_cfg)
            _check_ids(entries, path.parent, tokenizer.vocab_size)
            stream = _open(path, meta["dtype"], entries[0]["tokens"])
            return TokenFiles([stream], None, tokenizer.vocab_size, _bytes_per_token(entries), str(meta_path))
    dtype = "uint16" if dtype_cfg == "auto" else dtype_cfg
    stream = _open(path, dtype, None)
    _scan_bin(path, stream, dtype, tokenizer.vocab_size)
    bpt, how = (1.0, "") if tokenizer.name == "byte" else _decoded_bytes_per_token(stream, tokenizer)
    note = f"nothing (bare .bin read as {dtype}; no meta.json beside it lists {path.name})"
    log.warning(
        "data.path=%s: no meta.json beside it states its dtype and tokenizer; reading it as %s%s",
        path,
        dtype,
        how,
    )
    return TokenFiles([stream], None, tokenizer.vocab_size, bpt, note)


def _decoded_bytes_per_token(stream: np.ndarray, tokenizer) -> tuple[float, str]:
    """Bytes per token of a bare ``.bin`` (for bits per byte), estimated by decoding its first
    ``BPT_SAMPLE`` tokens to UTF-8 text; the EOS tokens count as tokens, as in ``meta.json``. A tokenizer
    whose decoding does not restore the text exactly (one that puts spaces between pieces) makes it
    approximate, so the warning about the file gives the figure and says how it was found."""
    sample = np.asarray(stream[:BPT_SAMPLE]).tolist()
    try:
        n_bytes = len(tokenizer.decode(sample).encode("utf-8"))
    except Exception as e:  # a tokenizer that cannot decode these ids: bits per byte stays unknown
        return float("nan"), f"; val_bpb is unknown (decoding the tokens failed: {type(e).__name__}: {e})"
    bpt = n_bytes / max(len(sample), 1)
    return bpt, (
        f"; val_bpb uses {bpt:.3f} bytes per token, estimated by decoding the first {len(sample):,} tokens "
        "(a meta.json from scripts/prepare_data.py states the exact figure)"
    )
