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

**Per-channel gates.** Each gate may instead be a vector over the memory's units: one entry per
output unit of every weight matrix (``units``: the ``d_out`` of each matrix, concatenated). A weight
``W [d_in, d_out]`` then decays and steps column by column, the row form of Titans App. C's
``diag(1 − α_t) M_{t−1} − diag(θ_t) ∇ℓ`` (arXiv 2501.00663; column form, diag on the output side).
Every formula above holds entrywise per unit, so the coefficients just gain a unit axis in front of
the token axes (β ``[B, H, N, L]``, G ``[B, H, N, L, L]``, ...), and the gated gradient sum stays a
matmul: each token's gradient is rank one, u_j = x_jᵀ δ_j, so column c of Σ_j G[t, j, c] u_j is
Σ_j G[t, j, c] δ_j[c] x_j — a scaling of δ, never a per-token weight-sized tensor.
:class:`ChunkCoefficients` hides the two layouts behind ``layer``/``rows``/``last``/``mix``.
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


def unit_major(gate: Tensor | None, units: tuple[int, ...] | None) -> Tensor | None:
    """A per-channel gate ``[B, H, L, N]`` with its unit axis in front of the token axis,
    ``[B, H, N, L]``, so every formula over tokens runs per unit; a per-head gate as it is."""
    return gate if units is None or gate is None else gate.transpose(-1, -2)


def unit_slice(coef: Tensor, units: tuple[int, ...] | None, i: int, token_dims: int = 1) -> Tensor:
    """Weight matrix ``i``'s part of a per-channel coefficient whose unit axis precedes its
    ``token_dims`` token axes; a per-head coefficient (``units=None``) serves every matrix."""
    return coef if units is None else coef.narrow(-1 - token_dims, sum(units[:i]), units[i])


def as_rows(coef: Tensor, channel: bool) -> Tensor:
    """A per-token coefficient (``[B, H, L]``, or ``[B, H, C, L]`` per channel) as a multiplier of one
    layer's outputs ``[B, H, L, C]``."""
    return coef.transpose(-1, -2) if channel else coef[..., None]


def as_columns(coef: Tensor, channel: bool) -> Tensor:
    """A coefficient of the whole segment (``[B, H]``, or ``[B, H, C]`` per channel) as a multiplier of
    a weight matrix ``[B, H, d_in, C]``: the whole matrix per head, column by column per channel."""
    return coef[..., None, :] if channel else coef[..., None, None]


def token_sums(coef: Tensor, x: Tensor, d: Tensor, channel: bool) -> Tensor:
    """Every token's Σ_j coef[t, j] x_jᵀ d_j, ``[B, H, L, d_in, C]``, from ``coef [B, H, L, L_j]`` (per
    channel ``[B, H, C, L, L_j]``: column c of the sum uses coef[c, t, j]), ``x [B, H, L_j, d_in]`` and
    ``d [B, H, L_j, C]``. Written as two products, not one three-operand ``einsum``: per channel,
    torch's own contraction of that einsum (large elementwise products and copies) was many times
    slower (benchmarks/RESULTS.md §44)."""
    if not channel:
        return (coef[..., None] * x[:, :, None]).transpose(-1, -2) @ d[:, :, None]
    scaled = coef * d.transpose(-1, -2)[..., None, :]  # [B, H, C, L, L_j]: coef[c, t, j] d_j[c]
    return (scaled @ x[:, :, None]).permute(0, 1, 3, 4, 2)


@dataclass
class ChunkCoefficients:
    """Coefficients of one segment of L tokens, all ``[B, H, L]`` or ``[B, H, L, L]`` for per-head
    gates; per-channel gates (``units`` given) put a unit axis before the token axes:
    ``[B, H, N, L]``, ``[B, H, N, L, L]``, ``m_end [B, H, N]``.

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
    units: tuple[int, ...] | None = None  # per-channel gates: output units of each weight matrix

    def layer(self, i: int) -> ChunkCoefficients:
        """The coefficients of weight matrix ``i`` (per-channel gates: its units; per-head: all)."""
        if self.units is None:
            return self

        def cut(x: Tensor | None, token_dims: int) -> Tensor | None:
            return None if x is None else unit_slice(x, self.units, i, token_dims)

        return ChunkCoefficients(
            cut(self.beta, 1),
            cut(self.G, 2),
            cut(self.f, 1),
            cut(self.m_end, 0),
            cut(self.s_coef, 1),
            (self.units[i],),
        )  # type: ignore[arg-type]

    def rows(self, coef: Tensor) -> Tensor:
        """:func:`as_rows` for these coefficients' layout."""
        return as_rows(coef, self.units is not None)

    def last(self, coef: Tensor) -> Tensor:
        """:func:`as_columns` for these coefficients' layout (segment-end coefficients)."""
        return as_columns(coef, self.units is not None)

    def mix(self, scores: Tensor, deltas: Tensor) -> Tensor:
        """Σ_j G[t, j] scores[t, j] δ_j for ``scores [B, H, L, L_grad]`` (read rows against gradient
        inputs) and ``deltas [B, H, L_grad, C]``: per channel, column c of the sum uses G[t, j, c]."""
        if self.units is None:
            return (scores * self.G) @ deltas
        return torch.einsum("bhtj,bhctj,bhjc->bhtc", scores, self.G, deltas)

    def token_weights(self, W0: Tensor, x: Tensor, d: Tensor, S0: Tensor | None = None) -> Tensor:
        """Every token's weights β_t W_0 + f_t S_0 − Σ_j G[t, j] x_jᵀ δ_j of one layer,
        ``[B, H, L, d_in, C]`` (materialised: for the nonlinear retention maps that need them; ``S0``
        only with momentum)."""
        channel = self.units is not None
        W = self.rows(self.beta)[..., None, :] * W0[:, :, None] - token_sums(self.G, x, d, channel)
        return W if S0 is None else W + self.rows(self.f)[..., None, :] * S0[:, :, None]  # type: ignore[arg-type]


def chunk_coefficients(
    lr: Tensor, log_keep: Tensor | None, log_mom: Tensor | None, units: tuple[int, ...] | None = None
) -> ChunkCoefficients:
    """``lr``, ``log_keep``, ``log_mom``: ``[B, H, L]`` per head, or ``[B, H, L, N]`` per channel
    with ``units`` (N = sum(units)); ``log_keep=None`` means keep = 1, ``log_mom=None`` means no
    momentum."""
    lr, log_keep, log_mom = (unit_major(g, units) for g in (lr, log_keep, log_mom))  # type: ignore[assignment]
    if log_keep is None:
        log_keep = torch.zeros_like(lr)
    P = segsum(log_keep).exp()  # [B, H, L, L]: β_t / β_i
    beta = log_keep.cumsum(-1).exp()
    if log_mom is None:
        return ChunkCoefficients(
            beta=beta, G=P * lr[..., None, :], f=None, m_end=None, s_coef=None, units=units
        )
    Q = segsum(log_mom).exp()  # m_i / m_j
    m = log_mom.cumsum(-1).exp()
    G = (P @ Q) * lr[..., None, :]
    f = (P @ m[..., None])[..., 0]
    return ChunkCoefficients(beta=beta, G=G, f=f, m_end=m[..., -1], s_coef=Q[..., -1, :] * lr, units=units)
