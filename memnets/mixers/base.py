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
  loss by the trainer (e.g. MoM load balancing), and optional ``router_stats`` (``mom.RouterStats``)
  that the model pools over all layers into one load-balancing loss (MoM's ``aux_loss: pooled``).
* Optional ``state_size(seq_len) -> int``: numbers of recurrent state per sequence (recall vs state).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


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


class OneTokenStep(nn.Module):
    """``step`` as ``forward`` on a one-token sequence: for mixers whose forward already continues any
    state, so decoding equals the parallel forward by construction (the contract above)."""

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        y, state = self.forward(x[:, None], state)
        return y[:, 0], state


def keyword_options(init: Callable[..., None]) -> list[inspect.Parameter]:
    """A mixer constructor's keyword options (its keyword-only parameters), annotations resolved."""
    hints = typing.get_type_hints(init)
    params = inspect.signature(init).parameters.values()
    return [p.replace(annotation=hints.get(p.name, Any)) for p in params if p.kind is p.KEYWORD_ONLY]


def show_options(init: Callable[..., None], options: list[inspect.Parameter]) -> None:
    """Give a constructor that passes ``**options`` on to another the signature and annotations that
    list ``options`` after its positional parameters: configs and the registry's option checks read
    them there."""
    hints = typing.get_type_hints(init)
    params = inspect.signature(init).parameters.values()
    positional = [
        p.replace(annotation=hints.get(p.name, p.empty)) for p in params if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    init.__signature__ = inspect.Signature([*positional, *options])  # type: ignore[attr-defined]
    annotated = [p for p in (*positional, *options) if p.annotation is not p.empty]
    init.__annotations__ = {p.name: p.annotation for p in annotated} | {"return": None}


def takes_options(
    base_init: Callable[..., None], *not_taken: str, own_last: bool = False
) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator for a constructor that takes its own keyword options and passes the rest on as
    ``**options`` to ``base_init``: its signature lists its own options, then (``own_last``: before)
    ``base_init``'s keyword options but ``not_taken`` (left at their defaults); an own option named
    as one of the base's (another default) takes the base's place. So a family of mixers writes each
    shared option once."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        own = {p.name: p for p in keyword_options(cls.__init__)}
        base = [own.pop(p.name, p) for p in keyword_options(base_init) if p.name not in not_taken]
        show_options(cls.__init__, [*base, *own.values()] if own_last else [*own.values(), *base])
        return cls

    return wrap
