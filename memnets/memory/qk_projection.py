"""Q-K projection of queries onto the keys a memory has seen (TNT arXiv 2511.07343 §4.1.2, Eq. 7, Eq. 15,
App. C).

A memory trained on keys but read with queries suffers a domain mismatch (TNT "Challenge 2"). TNT
reads with the query projected onto the span of the keys written since the memory's last reset::

    P_t = Σ_{τ = reset..t} k_τ k_τᵀ          (App. C: M_t = k_t k_tᵀ at a reset, else M_{t−1} + k_t k_tᵀ)
    q̃_t = P_t q_t

(with l2-normalised keys, k kᵀ/‖k‖² = k kᵀ). The sum runs from the reset, not from the chunk start as
Eq. 7/15 print (App. B/C). Never forming a per-token d×d matrix, the rows of a block of
``block_size`` tokens are, with ``G`` the Gram sum of all earlier blocks (derived here; App. C carries
the d×d prefix sum instead)::

    Q̃ = Q Gᵀ + tril(Q Kᵀ) K         G ← G + Kᵀ K at the block end

Σ k kᵀ is an orthogonal projector only for orthonormal keys; in general its scale grows with the number
of keys since the reset, and so does the memory's input. The paper is silent on this, so ``norm``
offers ``"none"`` (the paper as printed), ``"l2"`` (re-normalise q̃ to unit length, the scale of an
l2-normalised query) and ``"count"`` (divide by the number of keys since the reset: the mean of
k kᵀ).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ProjectionNorm = Literal["none", "l2", "count"]
PROJECTION_NORMS: tuple[str, ...] = ("none", "l2", "count")


def _normalize(qp: Tensor, norm: str, count0: int) -> Tensor:
    """Apply ``norm`` to projected queries ``[B, T, H, D]`` whose first row has ``count0 + 1`` keys."""
    if norm == "l2":  # in the compute dtype (modules.l2norm rounds to float32)
        return qp * torch.rsqrt(qp.pow(2).sum(-1, keepdim=True) + 1e-6)
    if norm == "count":
        T = qp.shape[1]
        n = torch.arange(count0 + 1, count0 + T + 1, device=qp.device, dtype=qp.dtype)
        return qp / n[None, :, None, None]
    if norm != "none":
        raise ValueError(f"qk_project: norm={norm!r} is not one of {list(PROJECTION_NORMS)}")
    return qp


def qk_project(
    q: Tensor,
    k: Tensor,
    gram: Tensor | None = None,
    count0: int = 0,
    *,
    norm: ProjectionNorm = "none",
    block_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Project ``q [B, T, H, D]`` onto the keys ``k [B, T, H, D]`` seen so far (token t's own key
    included).

    ``gram [B, H, D, D]`` is Σ k kᵀ of the keys before this call since the reset (``None`` = zero,
    i.e. the call starts at a reset) and ``count0`` their number (used by ``norm="count"``).
    Returns the projected queries in ``q``'s dtype and the Gram sum after the last token. Blocks are
    processed in parallel: the Gram sum before each block is an exclusive prefix sum over blocks."""
    if q.shape != k.shape or q.dim() != 4:
        raise ValueError(f"qk_project: q and k must share the shape [B, T, H, D]; got {q.shape}, {k.shape}")
    if block_size < 1:
        raise ValueError(f"qk_project: block_size must be >= 1, got {block_size}")
    B, T, H, D = q.shape
    if gram is None:
        gram = q.new_zeros(B, H, D, D)
    L = min(block_size, max(T, 1))
    n = -(-T // L)
    pad = n * L - T
    # [B, T, H, D] -> [B, H, n, L, D]; padded keys are zero, so they add nothing to any sum
    Qb, Kb = (F.pad(t, (0, 0, 0, 0, 0, pad)).view(B, n, L, H, D).permute(0, 3, 1, 2, 4) for t in (q, k))
    KK = Kb.transpose(-1, -2) @ Kb  # [B, H, n, D, D]: the Gram sum of each block
    before = torch.cat([gram[:, :, None], KK[:, :, :-1]], 2).cumsum(2)  # Gram sum before each block
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    qp = Qb @ before.transpose(-1, -2) + ((Qb @ Kb.transpose(-1, -2)) * causal) @ Kb  # rows: (P q)ᵀ
    qp = qp.permute(0, 2, 3, 1, 4).reshape(B, n * L, H, D)[:, :T]
    return _normalize(qp, norm, count0), gram + KK.sum(2)


def qk_project_reference(
    q: Tensor, k: Tensor, gram: Tensor | None = None, count0: int = 0, *, norm: ProjectionNorm = "none"
) -> tuple[Tensor, Tensor]:
    """Token by token with the explicit d×d operator P_t = P_{t−1} + k_t k_tᵀ (App. C as written)."""
    B, T, H, D = q.shape
    P = q.new_zeros(B, H, D, D) if gram is None else gram
    rows = []
    for t in range(T):
        kt = k[:, t]  # [B, H, D]
        P = P + kt[..., :, None] * kt[..., None, :]
        rows.append((P @ q[:, t, :, :, None])[..., 0])
    qp = torch.stack(rows, 1) if rows else q.clone()
    return _normalize(qp, norm, count0), P
