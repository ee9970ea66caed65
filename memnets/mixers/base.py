"""The contract every token mixer follows.

* ``__init__(self, d_model: int, num_heads: int, *, <options>)`` — every option is a keyword with a
  type hint and a default; configs pass them by name and the registry checks names and types.
  Memory mixers take ``chunk_size: int`` and ``backend: Backend``.
* ``forward(x [B, T, d_model], state=None, cu_seqlens=None) -> (y [B, T, d_model], state)`` — ``state``
  is the mixer's recurrent state (``None`` = start of sequence); the returned state continues the
  sequence exactly, both for another ``forward`` and for ``step``. ``cu_seqlens`` (int ``[N + 1]``,
  with B = 1) marks packed independent sequences; mixers that do not support it raise.
* ``step(x_t [B, d_model], state) -> (y_t [B, d_model], state)`` — decode one token. Feeding a sequence
  token by token through ``step`` equals ``forward`` on the whole sequence.
* Optional attribute ``aux_loss`` (scalar tensor) set during ``forward`` in training, added to the LM
  loss by the trainer (e.g. MoM load balancing).
* Optional ``state_size(seq_len) -> int``: numbers of recurrent state per sequence (recall vs state).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

Backend = Literal["auto", "reference", "chunked", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "chunked", "triton")

log = logging.getLogger("memnets")
_announced: set[str] = set()


def log_once(message: str, *args: object) -> None:
    """Log ``message % args`` at INFO the first time this exact text comes up (which path ran)."""
    text = message % args
    if text not in _announced:
        _announced.add(text)
        log.info(text)


def triton_available(device: torch.device) -> bool:
    """Whether ``auto`` may pick the Triton kernels: on CUDA devices only. Under ``TRITON_INTERPRET=1``
    (kernel tests on CPU) they run only when asked for by name, so ``auto`` keeps meaning the same
    path whichever test module set the variable first."""
    import os

    if os.environ.get("MEMNETS_DISABLE_TRITON") == "1" or device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(
    owner: str,
    backend: str,
    device: torch.device,
    supported: tuple[str, ...] = ("reference", "chunked"),
    no_kernel: str | None = None,
) -> str:
    """Turn ``backend`` into the implementation to run and say once per (mixer, path) which ran.

    ``auto`` picks ``triton`` on CUDA when the mixer supports it, else ``chunked``; ``no_kernel`` (why
    the Triton kernels do not cover this mixer's configuration) goes into the log when ``auto`` could
    have run a kernel on this device but does not. Asking explicitly for an unsupported backend is an
    error, never a silent fallback."""
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend={backend!r} is not one of {list(BACKENDS)}")
    if backend == "auto":
        chosen = "triton" if "triton" in supported and triton_available(device) else "chunked"
        if chosen not in supported:
            chosen = supported[0]
    elif backend not in supported:
        raise ValueError(f"{owner}: backend={backend!r} is not implemented; supported: {list(supported)}")
    else:
        chosen = backend
    why = ""
    if backend == "auto" and chosen != "triton" and no_kernel and triton_available(device):
        why = f"; the Triton kernels do not cover {no_kernel}"
    log_once("%s: running the %s backend (asked for %s on %s%s)", owner, chosen, backend, device.type, why)
    return chosen


def kernel_reason(owner: str, backend: str, no_kernel: str | None) -> str | None:
    """``no_kernel`` (why the Triton kernels do not cover a mixer's configuration, ``None`` if they do),
    refused when ``backend`` asks for them explicitly."""
    if backend == "triton" and no_kernel is not None:
        raise ValueError(
            f"{owner}: backend='triton' does not support {no_kernel}; use backend='chunked' or 'auto'"
        )
    return no_kernel


def resolve_kernel_backend(owner: str, backend: str, device: torch.device, no_kernel: str | None) -> str:
    """:func:`resolve_backend` for a mixer with the reference and chunked PyTorch paths and, where
    ``no_kernel`` is ``None``, a Triton kernel."""
    supported = ("reference", "chunked") if no_kernel else ("reference", "chunked", "triton")
    return resolve_backend(owner, backend, device, supported, no_kernel)


def last_sequence_conv(conv: dict[str, torch.Tensor], cu_seqlens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The conv states of the last packed sequence alone (what running it by itself leaves): the
    states' inputs from before its first token are zeros."""
    start, end = cu_seqlens[-2:].tolist()
    out = {}
    for n, s in conv.items():
        pos = end - s.shape[1] + torch.arange(s.shape[1], device=s.device)
        out[n] = s * (pos >= start).to(s.dtype)[None, :, None]
    return out


def check_cu_seqlens(owner: str, x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> None:
    if cu_seqlens is None:
        return
    if x.shape[0] != 1:
        raise ValueError(
            f"{owner}: cu_seqlens needs a packed batch of size 1, got x of shape {tuple(x.shape)}"
        )
    if cu_seqlens.dim() != 1 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != x.shape[1]:
        raise ValueError(
            f"{owner}: cu_seqlens must be 1-D, start at 0 and end at T={x.shape[1]}; got {cu_seqlens.tolist()}"
        )
