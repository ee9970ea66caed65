"""Tokenize a corpus once into a folder of token shards that training memory-maps (``data.path=OUT``).

    python scripts/prepare_data.py corpus.txt more/*.jsonl data/ OUT --tokenizer byte --workers 8
    python scripts/prepare_data.py HuggingFaceFW/fineweb-edu OUT --tokenizer gpt2 --dataset-config sample-10BT
    python scripts/prepare_data.py books.parquet OUT --tokenizer path/to/tokenizer.json --shard-tokens 50000000

Inputs: .txt (one document each), .jsonl/.json and .parquet (one document per row, --text-field) files,
folders and globs of them, a folder written by ``datasets.save_to_disk`` or a Hub dataset name (streamed).
Tokenizers: ``byte``, a tokenizer.json (or its folder), ``tiktoken:ENCODING``, a Hub model id, or
``hf:NAME_OR_FOLDER`` (transformers.AutoTokenizer).
OUT gets train_00000.bin ..., val.bin and meta.json (see memnets/data/shards.py). Rerun the same command
after a crash or kill to finish: completed shards are kept and the result is byte-identical.
"""

from __future__ import annotations

import argparse
import sys

from memnets.data.errors import DataError
from memnets.data.prepare import PrepareOptions, prepare


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = PrepareOptions([], "")
    p.add_argument("inputs", nargs="+", help="files, folders, globs, a datasets folder or a Hub dataset name")
    p.add_argument("out", help="output folder")
    p.add_argument(
        "--tokenizer",
        default=d.tokenizer,
        help="byte | tokenizer.json | tiktoken:NAME | Hub model id | hf:NAME",
    )
    p.add_argument("--workers", type=int, default=d.workers, help="tokenizing processes (0: in this one)")
    p.add_argument("--shard-tokens", type=int, default=d.shard_tokens, help="tokens per training shard")
    p.add_argument("--val-every", type=int, default=d.val_every, help="every N-th record goes to val.bin...")
    p.add_argument("--val-tokens", type=int, default=d.val_tokens, help="...until it holds this many tokens")
    p.add_argument("--text-field", default=d.text_field, help="the text column of .jsonl/.parquet/datasets")
    p.add_argument(
        "--encoding-errors",
        choices=("strict", "replace"),
        default=d.encoding_errors,
        help="non-UTF-8 input: stop with an error (strict) or read bad bytes as U+FFFD",
    )
    p.add_argument("--split", default=d.split, help="split of a Hub dataset or datasets folder")
    p.add_argument("--dataset-config", default=None, help="configuration name of a Hub dataset")
    p.add_argument(
        "--progress-every", type=float, default=d.progress_every, help="seconds between progress lines"
    )
    opts = PrepareOptions(**vars(p.parse_args(argv)))  # each argument is the field of its name
    try:
        prepare(opts)
    except (DataError, ImportError) as e:
        print(f"prepare_data.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
