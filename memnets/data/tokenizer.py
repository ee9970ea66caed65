"""Tokenizers named by one string (``data.text.tokenizer``, ``prepare_data.py --tokenizer``):

* ``byte``: token = UTF-8 byte, EOS = 256, vocabulary 257; nothing to download.
* a path to a ``tokenizer.json`` (Hugging Face ``tokenizers``), or to a folder holding one.
* ``tiktoken:ENCODING`` (e.g. ``tiktoken:gpt2``, ``tiktoken:cl100k_base``; extra ``memnets[tiktoken]``).
* ``hf:NAME_OR_FOLDER``: ``transformers.AutoTokenizer`` (extra ``memnets[hf]``), for tokenizers that
  ship no ``tokenizer.json`` (SentencePiece-only repositories and the like).
* anything else is a Hugging Face Hub model id whose ``tokenizer.json`` is used (cached, or downloaded
  when the Hub can be reached; an offline machine gets an error at once, not after retries).

``fingerprint`` identifies the vocabulary (a hash of the tokenizer's JSON), so a prepared corpus can be
checked against the tokenizer a run asks for even when the two name it by different paths.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .errors import HubUnreachable, MissingData
from .hub import check_reachable, hub_file, require

BYTE_EOS = 256
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ByteTokenizer:
    name = "byte"
    vocab_size = 257
    eos_id = BYTE_EOS
    fingerprint = "byte"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer from a ``tokenizer.json`` file (see :func:`build_tokenizer`
    for how a name becomes that file). EOS is the first of ``</s>``, ``<|endoftext|>``, ``<eos>``,
    ``[SEP]`` the vocabulary has, else one id past it."""

    def __init__(self, file: str, name: str | None = None) -> None:
        tokenizers = require("tokenizers", "data")
        self.name = name or file
        self.tok = tokenizers.Tokenizer.from_file(file)
        self.fingerprint = "tokenizers:" + hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]
        eos = next(
            (
                self.tok.token_to_id(t)
                for t in ("</s>", "<|endoftext|>", "<eos>", "[SEP]")
                if self.tok.token_to_id(t) is not None
            ),
            None,
        )
        n = self.tok.get_vocab_size()
        self.vocab_size = n + (1 if eos is None else 0)
        self.eos_id = eos if eos is not None else n

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [
            np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)
        ]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.eos_id])


class TiktokenTokenizer:
    def __init__(self, encoding: str) -> None:
        tiktoken = require("tiktoken", "tiktoken")
        if encoding not in tiktoken.list_encoding_names():
            raise MissingData(
                f"tiktoken:{encoding}: no such encoding; available: {tiktoken.list_encoding_names()}"
            )
        try:
            self.enc = tiktoken.get_encoding(encoding)
        except Exception as e:  # its download raises requests' or urllib's errors, by version
            raise HubUnreachable(
                f"tiktoken:{encoding}: the encoding is not in tiktoken's cache (TIKTOKEN_CACHE_DIR) and "
                f"could not be downloaded ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        self.name = f"tiktoken:{encoding}"
        self.fingerprint = self.name
        self.eos_id = self.enc.eot_token
        self.vocab_size = self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(ids, dtype=np.int64) for ids in self.enc.encode_ordinary_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode([i for i in ids if i != self.eos_id])


class TransformersTokenizer:
    """``transformers.AutoTokenizer`` from a local folder or a Hub id (the cache first; a Hub that cannot
    be reached is an error at once). EOS is the tokenizer's ``eos_token_id``, else one id past it."""

    def __init__(self, name: str, key: str) -> None:
        transformers = require("transformers", "hf")
        self.name = f"hf:{name}"
        if Path(name).expanduser().is_dir():
            tok = transformers.AutoTokenizer.from_pretrained(str(Path(name).expanduser()))
        else:
            try:
                tok = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
            except OSError:  # not cached
                check_reachable(f"{key}={self.name!r}")
                tok = transformers.AutoTokenizer.from_pretrained(name)
        self.tok = tok
        vocab = json.dumps(sorted(tok.get_vocab().items())).encode()
        self.fingerprint = "transformers:" + hashlib.sha256(vocab).hexdigest()[:16]
        n = len(tok)
        self.vocab_size = n + (1 if tok.eos_token_id is None else 0)
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else n

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [
            np.asarray(ids, dtype=np.int64) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]
        ]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.eos_id])


Tokenizer = ByteTokenizer | HFTokenizer | TiktokenTokenizer | TransformersTokenizer


def build_tokenizer(name: str, key: str = "data.text.tokenizer") -> Tokenizer:
    """The tokenizer ``name`` stands for (see the module docstring); errors name ``key``."""
    if name == "byte":
        return ByteTokenizer()
    if name.startswith("tiktoken:"):
        return TiktokenTokenizer(name.split(":", 1)[1])
    if name.startswith("hf:"):
        return TransformersTokenizer(name[3:], key)
    path = Path(name).expanduser()
    if path.is_file():
        return HFTokenizer(str(path))
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise MissingData(
                f"{key}={name!r} is a folder without a tokenizer.json; point to the file itself, or save one "
                "there (transformers: AutoTokenizer.from_pretrained(...).save_pretrained(FOLDER))"
            )
        return HFTokenizer(str(path / "tokenizer.json"), name)
    if name.endswith(".json") or name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise MissingData(
            f"{key}={name!r}: no such tokenizer file; expected 'byte', 'tiktoken:ENCODING', 'hf:NAME', a path "
            "to a tokenizer.json (or a folder holding one) or a Hugging Face Hub model id"
        )
    try:
        file = hub_file(name, "tokenizer.json", f"{key}={name!r}")
    except HubUnreachable:
        raise
    except Exception as e:  # the repository or its tokenizer.json does not exist (class varies by version)
        raise MissingData(
            f"{key}={name!r}: no tokenizer.json in that Hub repository ({type(e).__name__}); for a tokenizer "
            f"without one use {key}=hf:{name} (transformers)"
        ) from None
    return HFTokenizer(file, name)
