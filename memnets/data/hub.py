"""Reaching the Hugging Face Hub without hanging: the local cache first, then a quick reachability
probe, so an offline machine gets a clear error in about a second instead of ~25 s of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import HubUnreachable

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def require(module: str, extra: str):
    """Import an optional dependency, or fail with the ``pip install`` line that brings it."""
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"{module} is needed for this; install it with: pip install 'memnets[{extra}]'"
        ) from None


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def check_reachable(what: str, timeout: float = 3.0) -> None:
    """Raise :class:`HubUnreachable` (a ``ConnectionError``) naming ``what`` when the Hub cannot be used: offline mode is set, or
    its host does not answer within ``timeout`` seconds."""
    if offline():
        set_vars = [v for v in OFFLINE_VARS if os.environ.get(v)]
        raise HubUnreachable(
            f"{what} is not in the local Hugging Face cache and offline mode is on ({', '.join(set_vars)}); "
            "use a local path, or unset it on a machine with network access"
        )
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or endpoint
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        raise HubUnreachable(
            f"{what} is not in the local Hugging Face cache and {host} cannot be reached ({e}); "
            "use a local path, or set HF_HUB_OFFLINE=1 to use only the cache"
        ) from None


def hub_file(repo_id: str, filename: str, what: str) -> str:
    """Local path of ``filename`` in the model repo ``repo_id``: the cache if it holds it, else a download
    after :func:`check_reachable`."""
    hf_hub = require("huggingface_hub", "data")
    try:
        return hf_hub.hf_hub_download(repo_id, filename, local_files_only=True)
    except Exception:  # not cached (the exception class differs across huggingface_hub versions)
        pass
    check_reachable(what)
    return hf_hub.hf_hub_download(repo_id, filename)
