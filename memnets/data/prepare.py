"""Tokenize a corpus once into a folder of token shards (``scripts/prepare_data.py``).

Records are read in one deterministic order (:mod:`memnets.data.sources`), tokenized in batches by
``workers`` processes (at most ``2 * workers`` batches in flight, so memory does not grow with the corpus)
and written back in that order by this process: an EOS after each document; record ``r`` goes to the
validation shard when ``r % val_every == 0`` until it holds ``val_tokens`` tokens (a document cut there
gets an EOS on both sides of the cut); a training shard is closed at the first record boundary at or past
``shard_tokens`` tokens. Output depends only on the inputs and options, never on ``workers``.

Crash safety: a shard is written as ``NAME.tmp`` and renamed when complete; after each rename
``progress.json`` (itself written to a temporary file and renamed) records the finished shards, the
records consumed and the validation tokens so far. A restart drops temporary files and shards that
``progress.json`` does not list, cuts ``val.partial`` back to the recorded length, skips the consumed
records without tokenizing them and carries on, so its shards are byte-identical to an uninterrupted
run's. ``meta.json`` is written last: its presence means the folder is complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .errors import DataError
from .hub import check_reachable
from .shards import FORMAT, VERSION, dtype_for_vocab, write_json_atomic
from .sources import Source, expand_inputs, read_records
from .tokenizer import build_tokenizer

BATCH_CHARS = 1 << 20
BATCH_RECORDS = 1024


@dataclass
class PrepareOptions:
    inputs: list[str]
    out: str
    tokenizer: str = "byte"
    workers: int = 1
    shard_tokens: int = 100_000_000
    val_every: int = 100
    val_tokens: int = 1_000_000
    text_field: str = "text"
    encoding_errors: str = "strict"
    split: str = "train"
    dataset_config: str | None = None
    progress_every: float = 5.0

    def check(self) -> None:
        for key, lo in (("workers", 0), ("shard_tokens", 1), ("val_every", 1), ("val_tokens", 1)):
            if getattr(self, key) < lo:
                raise DataError(f"--{key.replace('_', '-')}={getattr(self, key)} must be >= {lo}")
        if self.encoding_errors not in ("strict", "replace"):
            raise DataError(f"--encoding-errors={self.encoding_errors!r}; choose 'strict' or 'replace'")


# ----------------------------------------------------------------------------------------------------
# the worker side

_TOKENIZER = None


def _init_worker(spec: str) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: --workers is the parallelism
    _TOKENIZER = build_tokenizer(spec, key="--tokenizer")


@dataclass
class _Tokenized:
    """A batch of records tokenized: ``flat`` holds them in order, an EOS after each that ends a
    document; record ``i`` is ``flat[offsets[i]:offsets[i + 1]]``."""

    flat: np.ndarray
    offsets: np.ndarray
    n_bytes: np.ndarray
    ends: np.ndarray


def _tokenize(texts: list[str], ends: list[bool], dtype: str) -> _Tokenized:
    assert _TOKENIZER is not None
    eos = np.array([_TOKENIZER.eos_id], dtype=dtype)
    parts, lens, n_bytes = [], [], []
    for ids, text, end in zip(_TOKENIZER.encode_batch(texts), texts, ends):
        parts.append(ids.astype(dtype, copy=False))
        if end:
            parts.append(eos)
        lens.append(len(ids) + end)
        n_bytes.append(len(ids) if _TOKENIZER.name == "byte" else len(text.encode("utf-8")))
    offsets = np.concatenate([[0], np.cumsum(lens, dtype=np.int64)])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return _Tokenized(flat, offsets, np.asarray(n_bytes, dtype=np.int64), np.asarray(ends, dtype=bool))


class _InProcess(Executor):
    """``--workers 0``: tokenize in this process (debugging, profiling)."""

    def __init__(self, spec: str) -> None:
        _init_worker(spec)

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


# ----------------------------------------------------------------------------------------------------
# the writer side


@dataclass
class _Part:
    """A shard being written (appended to ``path``.tmp) and its tallies."""

    path: Path
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    max_token_id: int = 0
    open_doc: bool = False  # training side: the last record written did not end its document
    handle: Any = field(default=None, repr=False)

    def append(self, ids: np.ndarray, n_bytes: int, documents: int) -> None:
        if self.handle is None:
            self.handle = open(self.tmp, "ab")  # noqa: SIM115 -- kept open across appends, closed in finish()
        self.handle.write(ids.tobytes())
        self.tokens += len(ids)
        self.bytes += n_bytes
        self.documents += documents
        if len(ids):
            self.max_token_id = max(self.max_token_id, int(ids.max()))

    @property
    def tmp(self) -> Path:
        return self.path.with_name(self.path.name + ".tmp")

    def sync(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())

    def finish(self) -> dict[str, Any]:
        self.sync()
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        os.replace(self.tmp, self.path)
        return self.entry()

    def entry(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "max_token_id": self.max_token_id,
        }


class _Progress:
    """A line every ``every`` seconds: documents/s, tokens/s and, when the input size is known, the
    share read and an ETA from the rate since this run started (skipped records on resume excluded)."""

    def __init__(self, total_bytes: int | None, every: float, stream: TextIO) -> None:
        self.total, self.every, self.stream = total_bytes, every, stream
        self.t0 = self.last = time.time()
        self.docs = self.tokens = 0
        self.start_bytes: int | None = None  # input read when the first batch came back (ETA rate)
        self.t_start = self.t0

    def update(self, docs: int, tokens: int, done_bytes: int, force: bool = False) -> None:
        self.docs, self.tokens = self.docs + docs, self.tokens + tokens
        if self.start_bytes is None and tokens:
            self.t_start, self.start_bytes = time.time(), done_bytes
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        line = f"{self.docs:,} documents ({self.docs / dt:,.0f}/s) | {self.tokens:,} tokens ({self.tokens / dt:,.0f}/s)"
        if self.total:
            done = min(done_bytes, self.total)
            rate = (done - (self.start_bytes or 0)) / max(now - self.t_start, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            line += f" | {100 * done / self.total:.1f}% of {self.total / 1e6:,.0f} MB | eta {_fmt(eta)}"
        else:
            line += " | eta ? (input size unknown)"
        print(f"prepare: {line}", file=self.stream, flush=True)


def _fmt(seconds: float) -> str:
    if seconds != seconds:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _batches(
    sources: list[Source], opts: PrepareOptions, skip: int, progress: _Progress
) -> Iterator[tuple[list[str], list[bool], int]]:
    """Batches of ``(texts, ends_doc, bytes of input read so far)`` after the first ``skip`` records."""
    done_before, r = 0, 0
    texts: list[str] = []
    ends: list[bool] = []
    chars = 0
    for src in sources:
        pos = 0
        for rec in read_records(src, opts.text_field, opts.encoding_errors, opts.split, opts.dataset_config):
            pos = rec.pos
            r += 1
            if r <= skip:
                if r % 10_000 == 0:
                    progress.update(0, 0, done_before + pos)
                continue
            texts.append(rec.text)
            ends.append(rec.ends_doc)
            chars += len(rec.text)
            if chars >= BATCH_CHARS or len(texts) >= BATCH_RECORDS:
                yield texts, ends, done_before + pos
                texts, ends, chars = [], [], 0
        done_before += src.size or pos
    if texts:
        yield texts, ends, done_before


def _options_record(opts: PrepareOptions, sources: list[Source], tokenizer, dtype: str) -> dict[str, Any]:
    """What the shards depend on: a restart with anything else refuses to mix the two."""
    return {
        "sources": [f"{s.kind}:{s.location}" for s in sources],
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "dtype": dtype,
        **{
            k: v
            for k, v in asdict(opts).items()
            if k
            in (
                "shard_tokens",
                "val_every",
                "val_tokens",
                "text_field",
                "encoding_errors",
                "split",
                "dataset_config",
            )
        },
    }


def prepare(opts: PrepareOptions, log: TextIO = sys.stderr) -> dict[str, Any]:
    """Run (or finish) the preparation described by ``opts``; returns the ``meta.json`` contents."""
    opts.check()
    sources = expand_inputs(opts.inputs, key="input")
    for src in sources:
        if src.kind == "hub":  # before the output folder is made
            check_reachable(f"the Hugging Face dataset {src.location!r}")
    tokenizer = build_tokenizer(opts.tokenizer, key="--tokenizer")
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    record = _options_record(opts, sources, tokenizer, dtype)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path, progress_path = out / "meta.json", out / "progress.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("options") != record:
            raise DataError(f"{out} already holds a finished corpus prepared with other inputs or options")
        print(f"prepare: {out} is already complete ({meta_path})", file=log)
        return meta
    state = _load_state(progress_path, record, out)
    val = _Part(out / "val.bin", **state["val"])
    shards: list[dict[str, Any]] = state["shards"]
    records_done = state["records_done"]
    _clean(out, shards, val, dtype, state["val_closed"])
    print(
        f"prepare: {len(sources)} source(s) -> {out} | tokenizer {tokenizer.name} (vocabulary "
        f"{tokenizer.vocab_size}, EOS {tokenizer.eos_id}, {dtype}) | {opts.workers} worker(s)"
        + (f" | resuming after {len(shards)} shard(s), {records_done:,} records" if records_done else ""),
        file=log,
        flush=True,
    )
    total = None if any(s.size is None for s in sources) else sum(s.size for s in sources)
    progress = _Progress(total, opts.progress_every, log)
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    val_closed = state["val_closed"]
    train = _Part(out / f"train_{len(shards):05d}.bin", open_doc=state.get("train_open_doc", False))
    r = records_done

    def save_state() -> None:
        write_json_atomic(
            progress_path,
            {
                "options": record,
                "shards": shards,
                "records_done": r,
                "val": {k: v for k, v in val.entry().items() if k != "file"},
                "val_closed": val_closed,
                "train_open_doc": train.open_doc,
            },
        )

    pool: Executor = (
        _InProcess(opts.tokenizer)
        if opts.workers == 0
        else ProcessPoolExecutor(opts.workers, initializer=_init_worker, initargs=(opts.tokenizer,))
    )
    inflight: deque[tuple[Future, int]] = deque()
    batches = _batches(sources, opts, records_done, progress)
    try:
        while True:
            while len(inflight) < 2 * max(opts.workers, 1):
                nxt = next(batches, None)
                if nxt is None:
                    break
                inflight.append((pool.submit(_tokenize, nxt[0], nxt[1], dtype), nxt[2]))
            if not inflight:
                break
            fut, done_bytes = inflight.popleft()
            b: _Tokenized = fut.result()
            i, n = 0, len(b.ends)
            while i < n:  # runs of training records go to disk in one write; validation ones one by one
                if not val_closed and r % opts.val_every == 0:
                    if (
                        train.open_doc
                    ):  # a validation record always ends with EOS; a training document cut here too
                        train.append(eos, 0, 0)
                        train.open_doc = False
                    val.append(b.flat[b.offsets[i] : b.offsets[i + 1]], int(b.n_bytes[i]), int(b.ends[i]))
                    if not b.ends[i]:
                        val.append(eos, 0, 0)
                    if val.tokens >= opts.val_tokens:
                        val.finish()
                        val_closed = True
                    i, r = i + 1, r + 1
                    continue
                j = n if val_closed else min(n, i + opts.val_every - r % opts.val_every)
                reach = np.searchsorted(
                    b.offsets[i + 1 : j + 1] - b.offsets[i], opts.shard_tokens - train.tokens
                )
                full = reach < j - i  # the shard fills up at record i + reach
                j = i + int(reach) + 1 if full else j
                train.append(
                    b.flat[b.offsets[i] : b.offsets[j]], int(b.n_bytes[i:j].sum()), int(b.ends[i:j].sum())
                )
                train.open_doc = not b.ends[j - 1]
                i, r = j, r + j - i
                if full:
                    shards.append(train.finish())
                    val.sync()
                    train = _Part(out / f"train_{len(shards):05d}.bin", open_doc=train.open_doc)
                    save_state()
            docs, toks = int(b.ends.sum()), len(b.flat)
            progress.update(docs, toks, done_bytes)
    finally:
        pool.shutdown(cancel_futures=True)
    if train.tokens:
        shards.append(train.finish())
    if not val_closed:
        val.finish()
    if not shards:
        raise DataError(
            f"input {opts.inputs}: all {r} record(s) went to val.bin, none is left to train on; give more "
            "input, or a smaller --val-tokens or larger --val-every"
        )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "dtype": dtype,
        "bytes_per_token": sum(s["bytes"] for s in shards) / max(1, sum(s["tokens"] for s in shards)),
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "shards": shards,
        "val": val.entry(),
        "source": [s.location for s in sources],
        "options": record,
    }
    write_json_atomic(meta_path, meta)
    progress_path.unlink(missing_ok=True)
    progress.update(0, 0, total or 0, force=True)
    print(
        f"prepare: done: {len(shards)} training shard(s), {meta['tokens']:,} tokens, "
        f"{meta['documents']:,} documents; val.bin {val.tokens:,} tokens -> {meta_path}",
        file=log,
        flush=True,
    )
    return meta


def _load_state(path: Path, record: dict[str, Any], out: Path) -> dict[str, Any]:
    fresh = {"shards": [], "records_done": 0, "val": {}, "val_closed": False, "train_open_doc": False}
    if not path.is_file():
        if any(out.glob("train_*.bin*")):
            raise DataError(f"{out} holds shards but no progress.json or meta.json; use an empty folder")
        return fresh
    state = json.loads(path.read_text())
    if state.get("options") != record:
        raise DataError(
            f"{out} holds an unfinished preparation with other inputs or options; rerun it with the same "
            "ones to finish it, or use another output folder"
        )
    return state


def _clean(out: Path, shards: list[dict[str, Any]], val: _Part, dtype: str, val_closed: bool) -> None:
    """Remove what a crash left behind past the last recorded state."""
    listed = {s["file"] for s in shards}
    for p in out.glob("*.tmp"):
        if p.name != "val.bin.tmp":
            p.unlink()
    for p in out.glob("train_*.bin"):
        if p.name not in listed:
            p.unlink()
    if val_closed:
        return
    item = np.dtype(dtype).itemsize
    done = out / "val.bin"
    if done.is_file():  # closed after the last recorded state: reopen it
        os.replace(done, val.tmp)
    if val.tmp.is_file():
        with open(val.tmp, "r+b") as f:
            f.truncate(val.tokens * item)
    elif val.tokens:
        raise DataError(f"{val.tmp} is missing but progress.json records {val.tokens} validation tokens")
