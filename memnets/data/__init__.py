"""Data: synthetic recall tasks (MQAR) generated on the fly, and text corpora (files, or folders of
token shards written by ``scripts/prepare_data.py``)."""

from __future__ import annotations

from .errors import DataError
from .mqar import MQARTask
from .text import TextTask


def build_task(data_cfg, seed: int) -> MQARTask | TextTask:
    if data_cfg.kind == "mqar":
        return MQARTask(data_cfg.mqar, data_cfg.seq_len, seed)
    return TextTask(data_cfg.text, data_cfg.path, data_cfg.seq_len, seed)


__all__ = ["DataError", "MQARTask", "TextTask", "build_task"]
