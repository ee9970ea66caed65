"""Every token's own accumulator inside a whole-state tile, for the retention maps that read it (Miras
arXiv 2504.13173 §5.3: Moneta's ℓ_q map, Eq. 24, needs its norm; Memora's softmax, Eq. 27, the whole
matrix): the dual form's weights of token t, formed from the tile-start state and the key path's rows,

    A1_t = β_t W1 [+ f_t S1] − Kᵀ (G[t, :]ᵀ ⊙ δ1),   A2_t = β_t W2 [+ f_t S2] − Aᵀ (G[t, :]ᵀ ⊙ Δ),

and the backward of that map from cotangents C1, C2 of A1_t, A2_t to everything it reads."""

from __future__ import annotations

import triton
import triton.language as tl

from ..dual_form import inner
from ..precision import dot


@triton.jit
def row_of(x, at):
    """Row ``at`` (a ``[BL]`` one-hot mask) of a ``[BL]`` vector (a scalar) or a ``[BL, BK]`` tile (a
    ``[BK]`` vector)."""
    return tl.sum(tl.where(at, x, 0.0), 0)


@triton.jit
def token_accumulators(t, li, W1, W2, S1, S2, b_k, A, d1, dd, b_beta, b_f, b_G, DOT: tl.constexpr,
                       HAS_MOM: tl.constexpr):  # fmt: skip
    """Token t's accumulators of a tile (the dual form's weights, Moneta's A_t): A1_t = β_t W1 [+ f_t S1]
    − Kᵀ (G[t, :] ⊙ δ1), A2_t likewise with A and Δ; and β_t, f_t, G[t, :]."""
    at = li == t
    beta_t = row_of(b_beta, at)
    f_t = row_of(b_f, at)
    g_t = row_of(b_G, at[:, None])
    A1 = beta_t * W1 - dot(tl.trans(b_k), g_t[:, None] * d1, DOT)
    A2 = beta_t * W2 - dot(tl.trans(A), g_t[:, None] * dd, DOT)
    if HAS_MOM:
        A1 += f_t * S1
        A2 += f_t * S2
    return A1, A2, beta_t, f_t, g_t


@triton.jit
def token_accumulators_backward(
    at, C1, C2, beta_t, f_t, g_t, W1, W2, S1, S2, b_k, A, d1, dd,
    gW1, gW2, gS1, gS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """:func:`token_accumulators` of token ``at`` (a one-hot ``[BL]`` mask; β_t, f_t, G[t, :] as it
    returned them) backward from C1, C2: adds the shares of the tile-start state (gW, gS), of the key
    path's rows (dδ1, dΔ, dK, dA) and of the coefficients (dβ_t, df_t, dG[t, :]) to the sums given."""
    gW1 += beta_t * C1
    gW2 += beta_t * C2
    kc1 = dot(b_k, C1, DOT)
    ac2 = dot(A, C2, DOT)
    d_d1 -= g_t[:, None] * kc1
    d_dd -= g_t[:, None] * ac2
    b_dk -= g_t[:, None] * dot(d1, tl.trans(C1), DOT)
    dA -= g_t[:, None] * dot(dd, tl.trans(C2), DOT)
    dg_row = -(tl.sum(kc1 * d1, 1) + tl.sum(ac2 * dd, 1))
    b_dG = tl.where(at[:, None], b_dG + dg_row[None, :], b_dG)
    b_dbeta = tl.where(at, b_dbeta + inner(C1, W1) + inner(C2, W2), b_dbeta)
    if HAS_MOM:
        gS1 += f_t * C1
        gS2 += f_t * C2
        b_df = tl.where(at, b_df + inner(C1, S1) + inner(C2, S2), b_df)
    return gW1, gW2, gS1, gS2, d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG
