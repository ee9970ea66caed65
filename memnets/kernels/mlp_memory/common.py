"""``@triton.jit`` pieces shared by the MLP-memory kernels (whole-state and wide-state, forward and
backward): the activations and their derivatives, the attentional biases' derivatives ℓ'(R) and their
backward, the memory LayerNorm and its Jacobian, row and matrix offsets, packed-sequence bounds and
the matmul at a chosen operand precision. Each is inlined into the kernels that call it."""

import triton
import triton.language as tl

from ..dual_form import inner
from ..precision import dot


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def act(z, ACT: tl.constexpr):
    """σ(z): 0 gelu (erf form), 1 silu, 2 tanh."""
    if ACT == 0:
        out = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == 1:
        out = z * tl.sigmoid(z)
    else:
        out = _tanh(z)
    return out


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    """σ'(z)."""
    if ACT == 0:
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        out = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * pdf
    elif ACT == 1:
        s = tl.sigmoid(z)
        out = s * (1.0 + z * (1.0 - s))
    else:
        t = _tanh(z)
        out = 1.0 - t * t
    return out


@triton.jit
def act_grad2(z, ACT: tl.constexpr):
    """σ''(z): gelu φ(z)(2 − z²), silu s(1 − s)(2 + z(1 − 2s)), tanh −2t(1 − t²)."""
    if ACT == 0:
        out = tl.exp(-0.5 * z * z) * 0.3989422804014327 * (2.0 - z * z)
    elif ACT == 1:
        s = tl.sigmoid(z)
        out = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        t = _tanh(z)
        out = -2.0 * t * (1.0 - t * t)
    return out


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _bias_grad(r, delta, p, eps, sharp, BIAS: tl.constexpr):
    """ℓ'(R) for R ``[BL, BD]`` (0 in padded entries); ``delta``: the Huber threshold, ``[BL]`` (norm)
    or ``[BL, BD]`` (coord), unused otherwise."""
    if BIAS == 0:
        out = 2.0 * r
    elif BIAS == 1:
        out = p * r * tl.exp((0.5 * p - 1.0) * tl.log(r * r + eps))
    elif BIAS == 2:
        small = tl.sum(r * r, 1) <= delta * delta
        out = tl.where(small[:, None], 2.0 * r, 2.0 * delta[:, None] * _tanh(sharp * r))
    else:
        out = tl.where(tl.abs(r) <= delta, 2.0 * r, 2.0 * delta * _sign(r))
    return out


@triton.jit
def ln_rows(z, cmask, D: tl.constexpr, ln_eps):
    """(x̂, 1/σ) of a row-wise LayerNorm without affine over the first D columns (0 beyond)."""
    mu = tl.sum(z, 1) / D
    zc = tl.where(cmask[None, :], z - mu[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(zc * zc, 1) / D + ln_eps)
    return zc * rstd[:, None], rstd


@triton.jit
def ln_backward(xhat, rstd, g, cmask, D: tl.constexpr):
    """J g for the LayerNorm Jacobian J = ∂x̂/∂z (symmetric): rstd (g − mean(g) − x̂ mean(g x̂))."""
    out = rstd[:, None] * (g - (tl.sum(g, 1) / D)[:, None] - xhat * (tl.sum(g * xhat, 1) / D)[:, None])
    return tl.where(cmask[None, :], out, 0.0)


@triton.jit
def key_delta(
    Z2,
    b_k,
    b_v,
    delta,
    gamma,
    shift,
    mask,
    cmask,
    p,
    eps,
    sharp,
    ln_eps,
    D: tl.constexpr,
    BIAS: tl.constexpr,
    LN: tl.constexpr,
    RES: tl.constexpr,
):
    """(Δ, ℓ'(R), R, x̂, 1/σ) of the key path from Z2 (x̂ = Z2 and 1/σ unused without LayerNorm)."""
    xk = Z2
    rk = tl.sum(Z2, 1)
    out = Z2
    if LN:
        xk, rk = ln_rows(Z2, cmask, D, ln_eps)
        out = xk * gamma[None, :] + shift[None, :]
    r = _residual(out, b_k, RES) - b_v
    dout = _bias_grad(r, delta, p, eps, sharp, BIAS)
    dd = dout
    if LN:
        dd = ln_backward(xk, rk, dout * gamma[None, :], cmask, D)
    dd = tl.where(mask, dd, 0.0)
    return dd, dout, r, xk, rk


@triton.jit
def delta_backward(
    d_dd, dd, dout, r, delta, xk, rk, gamma, d_gamma_sum, d_shift_sum, dbp, offs, mask, rows, valid, cmask,
    p, eps, sharp, D: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr,
):  # fmt: skip
    """The cotangent ``d_dd`` of Δ = [LN backward of] ℓ'(R) (``dout`` = ℓ'(R), ``xk``, ``rk`` the key
    path's LayerNorm at Z2) back to R and Z2, second order (ℓ'' of the bias, the LayerNorm's Jacobian
    at Z2), over ``mask``'s rows (at ``offs``; ``rows`` and ``valid`` per row). Stores the Huber
    threshold's cotangent into ``dbp`` (per row "norm", per entry "coord"). Returns (dZ2, dR, and the
    LayerNorm's scale and shift cotangents ``d_gamma_sum``, ``d_shift_sum`` with the rows' sums added)."""
    d_dd = tl.where(mask, d_dd, 0.0)
    d_gamma = tl.sum(d_dd * 0.0, 0)
    if LN:
        # Δ = J(Z2) (γ ⊙ ℓ'(R)) with J the LayerNorm Jacobian (symmetric), R = x̂ γ + b − V:
        # the cotangent w of Δ reaches ℓ'(R) as γ ⊙ J w, and Z2 directly (second order) as
        # −(rstd/D) x̂ (w·Δ) − rstd (mean(g x̂) J w + mean(w x̂) Δ), g = γ ⊙ ℓ'(R)
        Jw = ln_backward(xk, rk, d_dd, cmask, D)
        g_k = dout * gamma[None, :]
        dZ2 = -(rk / D)[:, None] * xk * tl.sum(d_dd * dd, 1)[:, None]
        dZ2 -= rk[:, None] * (
            (tl.sum(g_k * xk, 1) / D)[:, None] * Jw + (tl.sum(d_dd * xk, 1) / D)[:, None] * dd
        )
        d_gamma += tl.sum(dout * Jw, 0)
        d_out = gamma[None, :] * Jw
    else:
        d_out = d_dd
    d_delta = delta * 0.0
    if BIAS == 0:
        dr = 2.0 * d_out
    elif BIAS == 1:
        dr = p * tl.exp((0.5 * p - 2.0) * tl.log(r * r + eps)) * ((p - 1.0) * r * r + eps) * d_out
    elif BIAS == 2:
        small = tl.sum(r * r, 1) <= delta * delta
        th = _tanh(sharp * r)
        dr = tl.where(small[:, None], 2.0 * d_out, 2.0 * delta[:, None] * sharp * (1.0 - th * th) * d_out)
        d_delta = tl.where(small, 0.0, tl.sum(2.0 * th * d_out, 1))
    else:
        small = tl.abs(r) <= delta
        dr = tl.where(small, 2.0 * d_out, 0.0)
        d_delta = tl.where(small, 0.0, 2.0 * _sign(r) * d_out)
    dr = tl.where(mask, dr, 0.0)
    d_shift = tl.sum(dr, 0)
    if LN:
        d_gamma += tl.sum(dr * xk, 0)
        dZ2 += ln_backward(xk, rk, dr * gamma[None, :], cmask, D)
        d_gamma_sum += d_gamma
        d_shift_sum += d_shift
    else:
        dZ2 = dr
    if BIAS == 2:
        tl.store(dbp + rows, d_delta.to(dbp.dtype.element_ty), mask=valid)
    if BIAS == 3:
        tl.store(dbp + offs, d_delta.to(dbp.dtype.element_ty), mask=mask)
    return dZ2, dr, d_gamma_sum, d_shift_sum


@triton.jit
def key_path_backward(
    d_d1, d_dd, dA, b_dk, gK1, gK2, Z1, E, sg, A, dd, dout, r, xk, rk, delta, b_k, K1, K2, gamma,
    d_gamma, d_shift, dbp, offs, mask, rows, valid, cmask, p, eps, sharp,
    D: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr,
):  # fmt: skip
    """The key path (second order: δ1 = (Δ K2ᵀ) ⊙ σ'(Z1), Δ = ℓ'(σ(K K1) K2 − V)) backward from the
    cotangents of its rows' δ1, Δ and A = σ(Z1) over ``mask``'s rows (:func:`delta_backward`'s
    arguments): the weights' cotangents ``gK1``, ``gK2`` and the keys' ``b_dk`` with the rows' shares
    added, dR, and the LayerNorm's sums."""
    dE = d_d1 * sg
    dZ1 = d_d1 * E * act_grad2(Z1, ACT)
    d_dd += dot(dE, K2, DOT)
    gK2 += dot(tl.trans(dE), dd, DOT)
    dZ2, dr, d_gamma, d_shift = delta_backward(
        d_dd, dd, dout, r, delta, xk, rk, gamma, d_gamma, d_shift, dbp, offs, mask, rows, valid, cmask,
        p, eps, sharp, D, BIAS, LN,
    )  # fmt: skip
    dA += dot(dZ2, tl.trans(K2), DOT)
    gK2 += dot(tl.trans(A), dZ2, DOT)
    dZ1 += dA * sg
    b_dk += dot(dZ1, tl.trans(K1), DOT)
    gK1 += dot(tl.trans(b_k), dZ1, DOT)
    return gK1, gK2, b_dk, dr, d_gamma, d_shift


@triton.jit
def read_ln_backward(z, dy, gamma, cmask, D: tl.constexpr, ln_eps):
    """Cotangents of a read's output Y = γ ⊙ LN(z) + b: (dz, dγ, db), dγ and db summed over rows."""
    xq, rq = ln_rows(z, cmask, D, ln_eps)
    return ln_backward(xq, rq, dy * gamma[None, :], cmask, D), tl.sum(dy * xq, 0), tl.sum(dy, 0)


@triton.jit
def read_layer2_backward(
    b_dy, a1w2, a1s2, aa, b_G, dd, b_beta, b_f, gamma, d_gamma, d_shift, cmask, ln_eps,
    D: tl.constexpr, DOT: tl.constexpr, LN: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """The reads' layer 2 on whole rows, Ẑ2 = β ⊙ (Â W2) [+ f ⊙ (Â S2)] − (Â Aᵀ ⊙ G) Δ and Y = [γ ⊙
    LN(Ẑ2) + b] (``a1w2`` = Â W2, ``a1s2`` = Â S2 and ``b_f`` read only with momentum, ``aa`` = Â Aᵀ),
    backward from dY: (dẐ2, dγ and db with the rows' shares added, dβ, df (zeros without momentum),
    dG, dP = d(Â Aᵀ) ⊙ G, dΔ)."""
    if LN:
        # Y = LN(Ẑ2) γ + b: recompute Ẑ2 and take the cotangent through the LayerNorm
        z2 = b_beta[:, None] * a1w2 - dot(aa * b_G, dd, DOT)
        if HAS_MOM:
            z2 += b_f[:, None] * a1s2
        b_dy, dg, db = read_ln_backward(z2, b_dy, gamma, cmask, D, ln_eps)
        d_gamma += dg
        d_shift += db
    b_dbeta = tl.sum(b_dy * a1w2, 1)
    b_df = b_dbeta * 0.0
    if HAS_MOM:
        b_df = tl.sum(b_dy * a1s2, 1)
    dP = -dot(b_dy, tl.trans(dd), DOT)
    b_dG = dP * aa
    dP = dP * b_G
    d_dd = -dot(tl.trans(aa * b_G), b_dy, DOT)
    return b_dy, d_gamma, d_shift, b_dbeta, b_df, b_dG, dP, d_dd


@triton.jit
def read_hidden_backward(
    b_dy, dP, A, a1, z1, W2, S2, b_beta, b_f, ACT: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr
):
    """The reads' hidden layer Â = σ(Ẑ1) backward from dY through Ẑ2 = β ⊙ (Â W2) [+ f ⊙ (Â S2)] −
    (Â Aᵀ ⊙ G) Δ (``dP`` = d(Â Aᵀ) ⊙ G; S2 and ``b_f`` read only with momentum): (dẐ1, dA, and W2's
    cotangent from the β term)."""
    da1 = b_beta[:, None] * dot(b_dy, tl.trans(W2), DOT) + dot(dP, A, DOT)
    dA = dot(tl.trans(dP), a1, DOT)
    gW2 = dot(tl.trans(a1), b_beta[:, None] * b_dy, DOT)
    if HAS_MOM:
        da1 += b_f[:, None] * dot(b_dy, tl.trans(S2), DOT)
    return da1 * act_grad(z1, ACT), dA, gW2


@triton.jit
def read_input_backward(dz1, b_q, qs1, S1, b_beta, b_f, b_df, b_dq, DOT: tl.constexpr, HAS_MOM: tl.constexpr):
    """The reads' first layer's terms β ⊙ (Q W1) [+ f ⊙ (Q S1)] (``qs1`` = Q S1) backward from dẐ1:
    W1's cotangent, and with momentum df and dQ with their shares added (dQ's β term is the caller's)."""
    gW1 = dot(tl.trans(b_q), b_beta[:, None] * dz1, DOT)
    if HAS_MOM:
        b_df += tl.sum(dz1 * qs1, 1)
        b_dq += b_f[:, None] * dot(dz1, tl.trans(S1), DOT)
    return gW1, b_df, b_dq


@triton.jit
def layers_update_backward(d_d1, d_dd, b_dk, dA, b_k, A, d1, dd, coef, C1, C2, X1, X2, DOT: tl.constexpr):
    """The chunk-end update X' = c X − Kᵀ (coef ⊙ δ1) | − Aᵀ (coef ⊙ Δ) of both layers (X1 ``[D, Dh]``,
    X2 ``[Dh, D]``: W or S) backward from the cotangents C1, C2 of X1', X2' (as
    :func:`~memnets.kernels.dual_form.update_backward` per layer, in the order that keeps the
    kernels' sm_90 spills lowest): (dδ1, dΔ, dK, dA, the two layers' shares of coef's negated
    cotangent, and c's cotangent Σ C ⊙ X)."""
    kc = dot(b_k, C1, DOT)
    ac = dot(A, C2, DOT)
    d_d1 -= coef[:, None] * kc
    d_dd -= coef[:, None] * ac
    s1 = tl.sum(d1 * kc, 1)
    s2 = tl.sum(dd * ac, 1)
    b_dk -= dot(coef[:, None] * d1, tl.trans(C1), DOT)
    dA -= dot(coef[:, None] * dd, tl.trans(C2), DOT)
    return d_d1, d_dd, b_dk, dA, s1, s2, inner(C1, X1) + inner(C2, X2)


@triton.jit
def tile_end_state(
    beta, f, G, m_end, s_coef, cc, last, lk, lkmask, b_k, A, d1, dd, W1, W2, S1, S2,
    L: tl.constexpr, P: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """The state after tile ``cc`` (its last token ``last``; ``lk``: its P + L key rows):
    W' = β_L W [+ f_L S] − Xᵀ (G[L, :]ᵀ ⊙ δ) per layer, S' = m_end S − Xᵀ (s_coef ⊙ δ) with momentum."""
    g_last = tl.load(G + cc * L * (P + L) + last * (P + L) + lk, mask=lkmask, other=0.0)
    beta_last = tl.load(beta + cc * L + last)
    W1_new = beta_last * W1 - dot(tl.trans(b_k), g_last[:, None] * d1, DOT)
    W2_new = beta_last * W2 - dot(tl.trans(A), g_last[:, None] * dd, DOT)
    if HAS_MOM:
        f_last = tl.load(f + cc * L + last)
        W1_new += f_last * S1
        W2_new += f_last * S2
        b_s = tl.load(s_coef + cc * (P + L) + lk, mask=lkmask, other=0.0)
        b_m = tl.load(m_end + cc)
        S1 = b_m * S1 - dot(tl.trans(b_k), b_s[:, None] * d1, DOT)
        S2 = b_m * S2 - dot(tl.trans(A), b_s[:, None] * dd, DOT)
    return W1_new, W2_new, S1, S2


@triton.jit
def tile_end_backward(
    f, m_end, s_coef, df, dm_end, ds_coef, cc, li, lmask, lk, lkmask, is_last, last, g_last, beta_last,
    b_k, A, d1, dd, W1, W2, S1, S2, cW1, cW2, cS1, cS2, gW1, gW2, gS1, gS2,
    d_d1, d_dd, b_dk, dA, b_dbeta, b_df, b_dG,
    L: tl.constexpr, P: tl.constexpr, DOT: tl.constexpr, HAS_MOM: tl.constexpr,
):  # fmt: skip
    """:func:`tile_end_state` backward from the cotangents cW, cS of the state after the tile: the
    rows' and coefficients' shares added (with momentum df, dm_end and ds_coef stored), the tile-start
    weights' cotangent gW (the reads' shares given) and the tile-start momenta's, cS (with momentum)."""
    d_d1, d_dd, b_dk, dA, s1, s2, dbeta_last = layers_update_backward(
        d_d1, d_dd, b_dk, dA, b_k, A, d1, dd, g_last, cW1, cW2, W1, W2, DOT
    )
    dg_last = -s1 - s2
    gW1 += beta_last * cW1
    gW2 += beta_last * cW2
    b_dbeta = tl.where(is_last, b_dbeta + dbeta_last, b_dbeta)
    b_dG = tl.where(is_last[:, None], b_dG + dg_last[None, :], b_dG)
    if HAS_MOM:
        f_last = tl.load(f + cc * L + last)
        b_m = tl.load(m_end + cc)
        b_s = tl.load(s_coef + cc * (P + L) + lk, mask=lkmask, other=0.0)
        b_df = tl.where(is_last, b_df + inner(cW1, S1) + inner(cW2, S2), b_df)
        d_d1, d_dd, b_dk, dA, s1, s2, dm = layers_update_backward(
            d_d1, d_dd, b_dk, dA, b_k, A, d1, dd, b_s, cS1, cS2, S1, S2, DOT
        )
        tl.store(dm_end + cc, dm)
        tl.store(df + cc * L + li, b_df, mask=lmask)
        tl.store(ds_coef + cc * (P + L) + lk, -s1 - s2, mask=lkmask)
        cS1 = f_last * cW1 + b_m * cS1 + gS1
        cS2 = f_last * cW2 + b_m * cS2 + gS2
    return d_d1, d_dd, b_dk, dA, gW1, gW2, b_dbeta, b_df, b_dG, cS1, cS2


@triton.jit
def _residual(out, x, RES: tl.constexpr):
    """M(x) = x + out with the residual (the bias sees M(k) − v exactly as the engine forms it)."""
    if RES:
        out = out + x
    return out


@triton.jit
def row_block(
    b, t0, h, T, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr
):
    """Offsets and mask of rows t0 .. t0+L of head h in a ``[B, T, H, D]`` tensor (rows outside
    0 .. T−1 masked: t0 < 0 for a window reaching before the first token)."""
    li = tl.arange(0, BL)
    rows = t0 + li
    cols = tl.arange(0, BD)
    valid = (li < L) & (rows >= 0) & (rows < T)
    mask = valid[:, None] & (cols < D)[None, :]
    offs = ((b * T + rows.to(tl.int64))[:, None] * H + h) * D + cols[None, :]
    return offs, mask, valid, ((b * T + rows.to(tl.int64)) * H + h)


@triton.jit
def key_base(i_bh, bos, P0, H: tl.constexpr, VARLEN: tl.constexpr):
    """The sequence's first row in k and v: packed, every sequence's P0 carried window rows lead its
    own rows (sequence n starts at cu[n] + n·P0); else row 0 of its batch entry."""
    kb = bos
    if VARLEN:
        kb += (i_bh // H).to(tl.int64) * P0
    return kb


@triton.jit
def sequence_bounds(i_bh, cu, toff, T, NCT, H: tl.constexpr, VARLEN: tl.constexpr):
    """Program (sequence, head)'s batch index, first row, length, first tile and tile count, and its
    row in the coefficients: with ``VARLEN`` sequence n of the packed batch spans rows cu[n] .. cu[n+1]
    and coefficient tiles toff[n] .. toff[n+1]; else batch entry b spans all T rows and NCT tiles."""
    if VARLEN:
        i_n = i_bh // H
        bos = tl.load(cu + i_n).to(tl.int64)
        Tn = (tl.load(cu + i_n + 1).to(tl.int64) - bos).to(tl.int32)
        t_first = tl.load(toff + i_n)
        n_tiles = tl.load(toff + i_n + 1) - t_first
        b = bos * 0
        crow = (i_bh % H).to(tl.int64)
    else:
        b = (i_bh // H).to(tl.int64)
        bos = b * 0
        Tn = T
        t_first = 0
        n_tiles = NCT
        crow = i_bh.to(tl.int64)
    return b, bos, Tn, t_first, n_tiles, crow


@triton.jit
def load_f32(ptrs, mask):
    """A masked block as float32 (0 where masked): the wide-state kernels read their state through it,
    as the backward's chunk-start states may be kept at the products' half precision
    (:func:`~.config.chunk_state_dtype`)."""
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def mat_block(R: tl.constexpr, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """Offsets and mask of an ``[R, C]`` matrix in a ``[BR, BC]`` tile."""
    r = tl.arange(0, BR)
    c = tl.arange(0, BC)
    return r[:, None] * C + c[None, :], (r < R)[:, None] & (c < C)[None, :]


@triton.jit
def ln_params(ln_w, ln_b, h, cols, cmask, D: tl.constexpr, BD: tl.constexpr, LN: tl.constexpr):
    """Head h's memory LayerNorm scale γ and shift b ``[BD]`` (zeros without the LayerNorm)."""
    gamma = tl.zeros([BD], dtype=tl.float32)
    shift = tl.zeros([BD], dtype=tl.float32)
    if LN:
        gamma = tl.load(ln_w + h * D + cols, mask=cmask, other=0.0)
        shift = tl.load(ln_b + h * D + cols, mask=cmask, other=0.0)
    return gamma, shift


@triton.jit
def store_ln_grads(dln_w, dln_b, bh, cols, cmask, d_gamma, d_shift, D: tl.constexpr, LN: tl.constexpr):
    """Store program ``bh``'s sums of the LayerNorm's scale and shift cotangents (with the LayerNorm)."""
    if LN:
        tl.store(dln_w + bh * D + cols, d_gamma, mask=cmask)
        tl.store(dln_b + bh * D + cols, d_shift, mask=cmask)


@triton.jit
def value_rows(v, bp, offs, mask, rows, valid, BK: tl.constexpr, BIAS: tl.constexpr):
    """A tile's values (float32) at ``offs`` and its Huber thresholds δ: ``[BK]`` per token ("norm", at
    ``rows``), ``[BK, BD]`` per channel ("coord", at ``offs``), zeros for the other biases."""
    b_v = tl.load(v + offs, mask=mask, other=0.0).to(tl.float32)
    delta = tl.zeros([BK], dtype=tl.float32)
    if BIAS == 2:
        delta = tl.load(bp + rows, mask=valid, other=0.0).to(tl.float32)
    if BIAS == 3:
        delta = tl.load(bp + offs, mask=mask, other=0.0).to(tl.float32)
    return b_v, delta


@triton.jit
def col_block(rows, valid, c0, W: tl.constexpr, n: tl.constexpr, BC: tl.constexpr):
    """Offsets and mask of columns c0 .. c0 + BC (those below ``n``) of the rows ``rows`` (row indices,
    ``valid`` per row) of a tensor whose rows are ``W`` wide."""
    cols = c0 + tl.arange(0, BC)
    return rows[:, None] * W + cols[None, :], valid[:, None] & (cols < n)[None, :]


@triton.jit
def key_cols_t(x, rows, valid, i, DI: tl.constexpr, KB: tl.constexpr):
    """Key block i of the rows ``rows`` of x ``[.., DI]`` (q or k): columns i·KB .. i·KB + KB, float32,
    transposed (``[KB, rows]``: the key width as the hidden-major products' K dimension)."""
    offs, mask = col_block(rows, valid, i * KB, DI, DI, KB)
    return tl.trans(tl.load(x + offs, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def load_matrices(p1, p2, base, o1, m1, o2, m2, BD: tl.constexpr, BH: tl.constexpr, PRESENT: tl.constexpr):
    """A ``[D, Dh]`` and a ``[Dh, D]`` matrix (W1, W2 or S1, S2, or their cotangents) at ``base`` of
    ``p1`` and ``p2`` (zeros unless ``PRESENT``)."""
    X1 = tl.zeros([BD, BH], dtype=tl.float32)
    X2 = tl.zeros([BH, BD], dtype=tl.float32)
    if PRESENT:
        X1 = tl.load(p1 + base + o1, mask=m1, other=0.0)
        X2 = tl.load(p2 + base + o2, mask=m2, other=0.0)
    return X1, X2


@triton.jit
def store_matrices(p1, p2, base, X1, X2, o1, m1, o2, m2, PRESENT: tl.constexpr):
    """Store a ``[D, Dh]`` and a ``[Dh, D]`` matrix at ``base`` of ``p1`` and ``p2`` if ``PRESENT``."""
    if PRESENT:
        tl.store(p1 + base + o1, X1, mask=m1)
        tl.store(p2 + base + o2, X2, mask=m2)


@triton.jit
def tile_rows(
    k, v, bp, b, bos, kb, g, h, Tn, P0, H: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
    BL: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, BIAS: tl.constexpr,
):  # fmt: skip
    """Tile g's rows: its tokens' offsets and mask, and its key rows, the tile's tokens after the P
    before them (the Omega window's reach) in k and v, where the state's carried window (P0 rows) leads
    the sequence's rows (from row kb): their offsets, masks, rows, and the keys, values and Huber
    thresholds there."""
    offs, mask, _, _ = row_block(b, bos + g * L, h, bos + Tn, H, D, L, BL, BD)
    koffs, kmask, kvalid, krow = row_block(b, P0 + g * L - P, h, P0 + Tn, H, D, P + L, BK, BD)
    koffs += kb * H * D
    krow += kb * H
    b_k = tl.load(k + koffs, mask=kmask, other=0.0).to(tl.float32)
    b_v, delta = value_rows(v, bp, koffs, kmask, krow, kvalid, BK, BIAS)
    return offs, mask, koffs, kmask, kvalid, krow, b_k, b_v, delta


@triton.jit
def key_path(
    b_k, b_v, delta, K1, K2, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps,
    D: tl.constexpr, ACT: tl.constexpr, DOT: tl.constexpr, BIAS: tl.constexpr, LN: tl.constexpr, RES: tl.constexpr,
):  # fmt: skip
    """The key path at the chunk-start weights K1, K2: Z1 = K K1, A = σ(Z1), Δ = δ2 (the last layer's
    output gradient, with ℓ'(R) before the LayerNorm backward, R, and the LayerNorm's x̂ and 1/σ at
    Z2 = A K2), E = Δ K2ᵀ, σ'(Z1) and δ1 = E ⊙ σ'(Z1)."""
    Z1 = dot(b_k, K1, DOT)
    A = act(Z1, ACT)
    Z2 = dot(A, K2, DOT)
    dd, dout, r, xk, rk = key_delta(
        Z2, b_k, b_v, delta, gamma, shift, kmask, cmask, p, eps, sharp, ln_eps, D, BIAS, LN, RES
    )
    E = dot(dd, tl.trans(K2), DOT)
    sg = act_grad(Z1, ACT)
    return Z1, A, dd, dout, r, xk, rk, E, sg, E * sg
