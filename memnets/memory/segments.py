"""The chunk grid every form of the memory shares: a sequence's tokens cut at the chunk boundaries,
counted from the sequence start, into the runs each form updates at once (token by token for the
references, whole segments for the chunked forms), and their reads joined back into one output. TNT's
local memories cut their sequences at the shard boundaries the same way (:mod:`memnets.memory.sharded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Segment:
    """Tokens ``span`` of a sequence that lie in one chunk: ``offset`` tokens of that chunk come before
    them, and ``ends_chunk`` says whether the last of them completes it."""

    span: slice
    offset: int
    ends_chunk: bool

    def take(self, *xs: Tensor | None) -> tuple[Tensor | None, ...]:
        """The segment's tokens of each ``[B, H, T, ...]`` tensor (``None`` stays ``None``)."""
        return tuple(None if x is None else x[:, :, self.span] for x in xs)


def segments(
    T: int, chunk_size: int, offset: int, most: int | None = None, first_alone: bool = False
) -> Iterator[Segment]:
    """Tokens ``0..T-1`` cut at the chunk boundaries, the first chunk ``offset`` tokens in already: the
    runs the chunked forms update in parallel, at most ``most`` tokens long (1: one token at a time, as
    the references step). ``first_alone``: a chunk's first token is a run of its own (Memora's lag
    token, :mod:`memnets.memory.miras`). The offset after the last token is ``(offset + T) % chunk_size``."""
    start = 0
    while start < T:
        length = 1 if first_alone and offset == 0 else chunk_size - offset
        end = min(T, start + (length if most is None else min(length, most)))
        after = (offset + end - start) % chunk_size
        yield Segment(slice(start, end), offset, after == 0)
        offset, start = after, end


def segment_reads(ys: list[Tensor], v: Tensor, dtype: torch.dtype) -> Tensor:
    """The segments' reads ``[B, H, L, D]`` joined into ``y [B, T, H, D]`` in ``dtype``; ``v [B, H, T, D]``
    (the values) gives the width when there is no token."""
    y = torch.cat(ys, 2) if ys else v.new_zeros(*v.shape[:2], 0, v.shape[-1])
    return y.transpose(1, 2).to(dtype)


def split_started_chunk(
    offset: int, chunk_size: int, *xs: Tensor | None
) -> tuple[tuple[Tensor | None, ...], tuple[Tensor | None, ...]]:
    """Each ``[B, T, ...]`` input (``None`` stays ``None``) cut where the chunk a state is ``offset``
    tokens into ends: the tokens that finish that chunk, and the rest (empty when there is none)."""

    def cut(s: slice) -> tuple[Tensor | None, ...]:
        return tuple(None if x is None else x[:, s] for x in xs)

    n = chunk_size - offset
    return cut(slice(None, n)), cut(slice(n, None))
