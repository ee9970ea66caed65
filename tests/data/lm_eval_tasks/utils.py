"""Datasets of the tiny lm-evaluation-harness tasks beside this file, read from their local jsonl files
(``custom_dataset`` in the task YAMLs), so the tests download nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _local(name: str):
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def choice_dataset(**_: Any):
    return _local("choice.jsonl")


def generation_dataset(**_: Any):
    return _local("generation.jsonl")


def rolling_dataset(**_: Any):
    return _local("rolling.jsonl")
