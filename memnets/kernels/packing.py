"""Packed sequences (``cu_seqlens``, B = 1, as fla) for the chunked memory kernels: the sequence lengths,
checked, and the layout of every sequence's chunks (or tiles) restarting at its first token."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_lengths(owner: str, q: Tensor, cu_seqlens: Tensor | None) -> list[int]:
    """The lengths of the sequences of ``q [B, T, ...]``: B of length T, or those ``cu_seqlens`` packs."""
    B, T = q.shape[:2]
    if cu_seqlens is None:
        return [T] * B
    bounds = cu_seqlens.tolist() if cu_seqlens.dim() == 1 else None
    if B != 1 or bounds is None or cu_seqlens.is_floating_point() or bounds[0] != 0 or bounds[-1] != T:
        raise ValueError(
            f"{owner}: cu_seqlens must be 1-D integer offsets from 0 to T with a packed batch of size 1; "
            f"got q of shape {tuple(q.shape)} and cu_seqlens {cu_seqlens.tolist()}"
        )
    lengths = [e - s for s, e in itertools.pairwise(bounds)]
    if min(lengths, default=0) < 0:
        raise ValueError(f"{owner}: cu_seqlens must be non-decreasing, got {bounds}")
    return lengths


def chunk_layout(lengths: list[int], L: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """cu_seqlens and chunk_offsets ``[N + 1]`` (int32; sequence n's chunks of ``L`` tokens are the
    packed chunks ``chunk_offsets[n] ..``) and the gather index ``[NC, L]`` of every packed chunk's
    tokens, pointing past the last token (a padding slot) after a sequence's end. Built on the host
    from the lengths, so no launch waits on a device-to-host copy."""
    lens = torch.tensor(lengths, dtype=torch.int64)
    cu = F.pad(lens.cumsum(0), (1, 0))
    n_chunks = (lens + L - 1) // L
    offsets = F.pad(n_chunks.cumsum(0), (1, 0))
    seq = torch.repeat_interleave(torch.arange(len(lengths)), n_chunks)  # each packed chunk's sequence
    pos = (cu[seq] + (torch.arange(len(seq)) - offsets[seq]) * L)[:, None] + torch.arange(L)
    index = torch.where(pos < cu[seq + 1][:, None], pos, cu[-1])
    return cu.to(device, torch.int32), offsets.to(device, torch.int32), index.to(device)
