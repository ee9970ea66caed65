"""``@triton.jit`` pieces of the dual form's chunk-end update shared by the linear and the MLP memory
kernels (inlined into the kernels that call them)."""

import triton
import triton.language as tl

from .precision import dot


@triton.jit
def update_backward(d_delta, d_x, x, delta, coef, C, DOT: tl.constexpr):
    """The update's term −Xᵀ (coef ⊙ δ) (X ``[rows, n]`` the keys or a layer's inputs, δ ``[rows, m]``
    its inner gradient, coef ``[rows]`` G's last row or s_coef) backward from C, the cotangent of the
    updated ``[n, m]`` matrix: the cotangents ``d_delta`` of δ and ``d_x`` of X with its share added,
    and Σ_m δ ⊙ (X C), the cotangent of coef negated."""
    xc = dot(x, C, DOT)
    d_delta -= coef[:, None] * xc
    d_coef = tl.sum(delta * xc, 1)
    d_x -= dot(coef[:, None] * delta, tl.trans(C), DOT)
    return d_delta, d_x, d_coef


@triton.jit
def update_backward_t(d_deltaT, d_xT, xT, deltaT, coef, C, DOT: tl.constexpr):
    """:func:`update_backward` on transposed tiles (``xT`` ``[n, rows]``, ``deltaT`` ``[m, rows]``, and
    the cotangents likewise), its products hidden-major: the width n or m is each product's M, the
    rows its N (Hopper's wgmma needs M >= 64)."""
    xcT = dot(tl.trans(C), xT, DOT)
    d_deltaT -= coef[None, :] * xcT
    d_coef = tl.sum(deltaT * xcT, 0)
    d_xT -= dot(C, deltaT * coef[None, :], DOT)
    return d_deltaT, d_xT, d_coef


@triton.jit
def inner(a, b):
    """Σ a ⊙ b over a ``[n, m]`` tile: the cotangent of a scalar that scales b, from a."""
    return tl.sum(tl.sum(a * b, 1), 0)
