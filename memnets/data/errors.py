"""Errors about the data a run or ``prepare_data.py`` was given. Each is a :class:`ConfigError`, so
``train.py`` reports it in one line (exit code 2) before any run folder is made; the missing-path and
unreachable-Hub ones are also ``FileNotFoundError`` / ``ConnectionError`` for callers that catch those."""

from __future__ import annotations

from ..validation import ConfigError


class DataError(ConfigError):
    """Input data that cannot be used as it is; the message names the file and where in it."""


class MissingData(DataError, FileNotFoundError):
    """A data or tokenizer path that does not exist."""


class HubUnreachable(DataError, ConnectionError):
    """A Hugging Face Hub name that is not cached, while the Hub cannot be reached (or offline mode is on)."""
