"""Learning rule inside one chunk: momentum and retention in closed form (derived here: the papers write
decay without momentum, Titans Eq. 16-17 and Miras Eq. 28-29, and momentum without decay, ATLAS Eq. 39,
or leave momentum to an associative scan, Titans Eq. 18; fla's Titans reference code computes the same
closed form).

Per token i of a chunk (all per head; neutral names, paper letters beside them)::

    u_i = ∇_W ℓ(W_ref; k_i, v_i)          gradient at the chunk-start weights (Titans Eq. 16-18)
    S_i = mom_i · S_{i-1} − lr_i · u_i      Titans Eq. 14: mom = η_t, lr = θ_t
    W_i = keep_i · W_{i-1} + S_i            Titans Eq. 13: keep = 1 − α_t (Miras/ATLAS: α_t)

Without momentum (``mom`` absent) the rule is ``W_i = keep_i · W_{i-1} − lr_i · u_i`` (Miras Eq. 28).
Unrolled from the segment start (W_0, S_0), with β_t = Π_{i≤t} keep_i and m_t = Π_{i≤t} mom_i::

    W_t = β_t W_0 + f_t S_0 − Σ_{j≤t} G[t, j] u_j,    S_t = m_t S_0 − Σ_{j≤t} lr_j (m_t / m_j) u_j
    f_t = Σ_{i≤t} (β_t/β_i) m_i,                      G[t, j] = lr_j Σ_{i=j..t} (β_t/β_i)(m_i/m_j)

Numerics: every ratio is formed as ``exp`` of a segment sum of logs, P[t, i] = β_t/β_i and
Q[i, j] = m_i/m_j for i ≥ j. Since keep, mom ∈ [0, 1] these are all in [0, 1]: nothing can overflow,
underflow to 0 is harmless, and G = (P @ Q) · lr is one small matmul. mom or keep exactly 0
(log = −∞) is allowed: segment sums are built without subtracting cumulative sums, so −∞ never meets
−∞. Gates are clamped to >= 1e-30 before the log so gradients stay finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_TINY = 1e-30


def safe_log(gate: Tensor) -> Tensor:
    return torch.log(gate.clamp_min(_TINY))


def segsum(log_gate: Tensor) -> Tensor:
    """``out[..., t, i] = Σ_{s=i+1..t} log_gate[..., s]`` for i ≤ t and −∞ above the diagonal, so that
    ``exp(out)[t, i] = Π_{s=i+1..t} gate_s`` (the decay from after token i to token t)."""
    L = log_gate.shape[-1]
    x = log_gate[..., :, None].expand(*log_gate.shape, L)  # x[..., s, i] = log_gate[s]
    strict = torch.ones(L, L, dtype=torch.bool, device=log_gate.device).tril(-1)  # s > i
    out = x.masked_fill(~strict, 0.0).cumsum(-2)  # out[t, i] = Σ_{i < s ≤ t} log_gate[s]
    lower = torch.ones(L, L, dtype=torch.bool, device=log_gate.device).tril()
    return out.masked_fill(~lower, float("-inf"))


@dataclass
class ChunkCoefficients:
    """Coefficients of one segment of L tokens, all ``[B, H, L]`` or ``[B, H, L, L]``.

    ``beta[t]`` multiplies W_0, ``f[t]`` multiplies S_0 (``None`` without momentum), ``G[t, j]``
    multiplies u_j in W_t (zero for j > t). At the segment end: ``m_end`` multiplies S_0 and
    ``s_coef[j]`` = lr_j m_L/m_j multiplies u_j in S_L (both ``None`` without momentum).

    The engine's ``dual_read`` and ``segment_end_state`` only need G as a ``[B, H, L_read, L_grad]``
    matrix over the gradient rows they are given, so a rule whose gradient rows differ from the
    read rows (e.g. ATLAS's Omega window, which adds the previous chunk's last c − 1 keys) can build
    its own ``ChunkCoefficients`` with a rectangular G and ``s_coef`` of length L_grad.
    """

    beta: Tensor
    G: Tensor
    f: Tensor | None
    m_end: Tensor | None
    s_coef: Tensor | None


def chunk_coefficients(lr: Tensor, log_keep: Tensor | None, log_mom: Tensor | None) -> ChunkCoefficients:
    """``lr``, ``log_keep``, ``log_mom``: ``[B, H, L]`` (``log_keep=None`` means keep = 1,
    ``log_mom=None`` means no momentum)."""
    if log_keep is None:
        log_keep = torch.zeros_like(lr)
    P = segsum(log_keep).exp()  # [B, H, L, L]: β_t / β_i
    beta = log_keep.cumsum(-1).exp()
    if log_mom is None:
        return ChunkCoefficients(beta=beta, G=P * lr[..., None, :], f=None, m_end=None, s_coef=None)
    Q = segsum(log_mom).exp()  # m_i / m_j
    m = log_mom.cumsum(-1).exp()
    G = (P @ Q) * lr[..., None, :]
    f = (P @ m[..., None])[..., 0]
    return ChunkCoefficients(beta=beta, G=G, f=f, m_end=m[..., -1], s_coef=Q[..., -1, :] * lr)
