"""Reading documents from ``.txt``, ``.jsonl``/``.json`` and ``.parquet`` files, folders and globs of them,
a dataset folder written by ``datasets.save_to_disk`` or a Hugging Face Hub dataset (streamed), one record
at a time so that memory does not grow with the corpus.

A record is a piece of text plus whether it ends a document: a ``.txt`` file is one document read in
pieces of about 64 KiB cut after a newline; every ``.jsonl``/``.parquet`` row is one document. Errors
name the file and the line (``.jsonl``), the row (``.parquet``) or the byte offset (``.txt``). A ``.json``
holding one JSON array is the exception: it is parsed whole (use JSON lines for large corpora).
Non-UTF-8 input is an error unless ``errors="replace"`` is asked for.
"""

from __future__ import annotations

import codecs
import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, MissingData
from .hub import check_reachable, require

FILE_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
TXT_PIECE = 1 << 16


@dataclass(frozen=True)
class Record:
    text: str
    ends_doc: bool
    pos: int  # bytes of the source read so far (approximate for .parquet), for progress


@dataclass(frozen=True)
class Source:
    kind: str  # txt | jsonl | json | parquet | saved (datasets.save_to_disk folder) | hub
    location: str
    size: int | None  # bytes, when known: for progress and ETA


def _file_source(path: Path) -> Source:
    return Source(FILE_KINDS[path.suffix.lower()], str(path), path.stat().st_size)


def expand_inputs(inputs: list[str], key: str = "input") -> list[Source]:
    """Files, folders (searched recursively for supported files), globs, dataset folders and Hub dataset
    names, in a deterministic order: inputs as given, the files of a folder or glob sorted by path."""
    out: list[Source] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            if path.suffix.lower() not in FILE_KINDS:
                raise DataError(
                    f"{key}={item!r}: unsupported file type {path.suffix!r}; use {', '.join(FILE_KINDS)}"
                )
            out.append(_file_source(path))
        elif path.is_dir():
            if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
                out.append(Source("saved", str(path), None))
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_KINDS)
            if not files:
                raise DataError(f"{key}={item!r} is a folder with no {'/'.join(FILE_KINDS)} files in it")
            out.extend(_file_source(p) for p in files)
        elif glob.has_magic(item):
            files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            files = [p for p in files if p.is_file() and p.suffix.lower() in FILE_KINDS]
            if not files:
                raise DataError(f"{key}={item!r}: the pattern matches no {'/'.join(FILE_KINDS)} file")
            out.extend(_file_source(p) for p in files)
        elif item.count("/") == 1 and not item.startswith((".", "/", "~")) and not path.parent.is_dir():
            out.append(Source("hub", item, None))  # owner/name, with no local folder 'owner' to mean a path
        else:
            raise MissingData(f"{key}={item!r} does not exist (not a file, folder, glob or Hub dataset name)")
    return out


def _txt(path: str, errors: str) -> Iterator[Record]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    pos, carry, pending = 0, "", None
    with open(path, "rb") as f:
        while True:
            raw = f.read(TXT_PIECE)
            final = not raw
            try:
                text = carry + decoder.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: not valid UTF-8 at byte {pos + e.start} ({e.reason}); is it a text file? "
                    "Pass errors='replace' (data.text.encoding_errors=replace, prepare_data.py "
                    "--encoding-errors replace) to read it with U+FFFD for the bad bytes"
                ) from None
            pos += len(raw)
            if final:  # the document ends with the last non-empty piece
                if pending is not None and not text:
                    yield Record(pending.text, True, pos)
                    return
                if pending is not None:
                    yield pending
                yield Record(text, True, pos)
                return
            cut = text.rfind("\n") + 1
            if cut:
                if pending is not None:
                    yield pending
                pending = Record(text[:cut], False, pos)
            carry = text[cut:]


def _row_text(row: Any, field: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with a {field!r} field, got {type(row).__name__}")
    if field not in row:
        keys = list(row)[:10]
        raise DataError(f"{where}: no {field!r} field (data.text.text_field / --text-field); keys: {keys}")
    value = row[field]
    if not isinstance(value, str):
        got = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
        raise DataError(f"{where}: field {field!r} is {got}; expected a string")
    return value


def _jsonl(path: str, field: str, errors: str) -> Iterator[Record]:
    pos = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            pos += len(raw)
            try:
                line = raw.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield Record(_row_text(row, field, f"{path}:{lineno}"), True, pos)


def _json(path: str, field: str, errors: str) -> Iterator[Record]:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):  # JSON lines under a .json name
        yield from _jsonl(path, field, errors)
        return
    try:
        rows = json.loads(Path(path).read_bytes().decode("utf-8", errors))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read it as a JSON array ({e})") from None
    size = Path(path).stat().st_size
    for i, row in enumerate(rows):
        yield Record(_row_text(row, field, f"{path}: item {i}"), True, size * (i + 1) // len(rows))


def _parquet(path: str, field: str) -> Iterator[Record]:
    pq = require("pyarrow.parquet", "data").parquet
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    if field not in names:
        raise DataError(
            f"{path}: no column {field!r} (data.text.text_field / --text-field); columns: {names}"
        )
    kind = f.schema_arrow.field(field).type
    if str(kind) not in ("string", "large_string", "string_view"):
        raise DataError(f"{path}: column {field!r} holds {kind}; expected strings")
    size, total, row = Path(path).stat().st_size, max(f.metadata.num_rows, 1), 0
    for batch in f.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is None:
                raise DataError(f"{path}: row {row}: column {field!r} is null; expected a string")
            row += 1
            yield Record(value, True, size * row // total)


def _datasets_rows(ds, where: str, field: str) -> Iterator[Record]:
    for i, row in enumerate(ds):
        yield Record(_row_text(row, field, f"{where}: row {i}"), True, 0)


def _saved(path: str, field: str, split: str) -> Iterator[Record]:
    datasets = require("datasets", "data")
    ds = datasets.load_from_disk(path)  # memory-mapped Arrow files, not read into memory
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r} (--split); splits: {list(ds)}")
        ds = ds[split]
    yield from _datasets_rows(ds.select_columns([field]) if field in ds.column_names else ds, path, field)


def _hub(name: str, field: str, split: str, config: str | None) -> Iterator[Record]:
    datasets = require("datasets", "data")
    check_reachable(f"the Hugging Face dataset {name!r}")
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    yield from _datasets_rows(ds, name, field)


def read_records(
    source: Source,
    text_field: str = "text",
    errors: str = "strict",
    split: str = "train",
    config: str | None = None,
) -> Iterator[Record]:
    """The records of one source, in file order."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors={errors!r}; choose 'strict' or 'replace'")
    if source.kind == "txt":
        return _txt(source.location, errors)
    if source.kind == "jsonl":
        return _jsonl(source.location, text_field, errors)
    if source.kind == "json":
        return _json(source.location, text_field, errors)
    if source.kind == "parquet":
        return _parquet(source.location, text_field)
    if source.kind == "saved":
        return _saved(source.location, text_field, split)
    return _hub(source.location, text_field, split, config)
