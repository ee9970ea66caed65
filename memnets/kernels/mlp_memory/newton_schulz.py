"""Newton–Schulz orthogonalisation (Muon; ATLAS arXiv 2505.23735 §5, Eq. 32–33) inside a kernel.

Each step of :func:`memnets.memory.muon.newton_schulz` multiplies X on the right by a polynomial of its
column Gram matrix: with x_0 = s X, s = (‖X‖_F² + eps²)^(−1/2),

    x_{k+1} = a x_k + b x_k x_kᵀ x_k + c x_k (x_kᵀ x_k)² = x_k M_k,   M_k = a I + b G_k + c G_k²,
    G_k = x_kᵀ x_k,

equal to the row-side iteration of ``newton_schulz`` in exact arithmetic (x xᵀ x = x (xᵀ x)). Only the
``[C, C]`` Gram matrices and polynomials are formed on chip (C the column count: the hidden width for
layer 1's ``[Dk, Dh]`` momentum, the head dim for layer 2's).

* A tile on chip (layer 2's momentum): :func:`ns_tile` iterates x itself and :func:`ns_tile_backward`
  walks the steps back, dx_k = dx_{k+1} M_k + x_k 2 sym(dG_k) with dM_k = x_kᵀ dx_{k+1} (each x_k
  recomputed), then dX = s dx_0 − s³ ⟨dx_0, X⟩ X.
* A matrix in global memory in key blocks (layer 1's momentum of a wide memory, Dk = 2,144 at ATLAS'
  head dim 64 with degree-2 features): the forward carries the right factor x_k = X F_k, F_0 = s I,
  F_{k+1} = F_k M_k on chip and reads X once per step to form G_k = (X F_k)ᵀ (X F_k) (read-only passes,
  no scratch); the backward keeps every x_k in a scratch buffer and runs the same reverse steps over
  the key blocks (:mod:`.muon_backward`). Two shortcuts were measured and rejected: carrying
  G_{k+1} = G_k M_k² from XᵀX (no passes after the first, but squaring X's condition number: 50–100×
  the iteration's float32 error on ill-conditioned momenta), and a factor-form backward
  (dX = dN Fᵀ + X Σ_k F_k dG_k F_kᵀ, whose large factors cost 10–25× the engine's float32 error in the
  gradients, against 1–3× now).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..precision import dot


@triton.jit
def eye(BC: tl.constexpr):
    r = tl.arange(0, BC)
    return (r[:, None] == r[None, :]).to(tl.float32)


@triton.jit
def ns_scale(sq, eps):
    """s = (‖X‖² + eps²)^(−1/2) from ``sq`` = ‖X‖²."""
    return 1.0 / tl.sqrt(sq + eps * eps)


@triton.jit
def ns_poly(Gk, na, nb, nc, BC: tl.constexpr, DOT: tl.constexpr):
    """M = a I + b G + c G²."""
    return na * eye(BC) + nb * Gk + nc * dot(Gk, Gk, DOT)


@triton.jit
def ns_tile(X, na, nb, nc, eps, STEPS: tl.constexpr, BC: tl.constexpr, DOT: tl.constexpr):
    """NS(X) of a tile on chip, iterated on x itself as ``newton_schulz`` does (zero padding stays
    zero)."""
    x = X * ns_scale(tl.sum(tl.sum(X * X, 1), 0), eps)
    for _ in range(STEPS):
        x = dot(x, ns_poly(dot(tl.trans(x), x, DOT), na, nb, nc, BC, DOT), DOT)
    return x


@triton.jit
def ns_tile_backward(X, dN, na, nb, nc, eps, STEPS: tl.constexpr, BC: tl.constexpr, DOT: tl.constexpr):
    """The cotangent of X from that of :func:`ns_tile` (each step's x_k recomputed): x_{k+1} = x_k M_k
    gives dx_k = dx_{k+1} M_k + x_k 2 sym(dG_k) with dM_k = x_kᵀ dx_{k+1}."""
    s = ns_scale(tl.sum(tl.sum(X * X, 1), 0), eps)
    dx = dN
    for kk in range(STEPS):
        x = X * s
        for _ in range(STEPS - 1 - kk):
            x = dot(x, ns_poly(dot(tl.trans(x), x, DOT), na, nb, nc, BC, DOT), DOT)
        Gk = dot(tl.trans(x), x, DOT)
        dM = dot(tl.trans(x), dx, DOT)
        dG = nb * dM + nc * (dot(dM, Gk, DOT) + dot(Gk, dM, DOT))
        dx = dot(dx, ns_poly(Gk, na, nb, nc, BC, DOT), DOT) + dot(x, dG + tl.trans(dG), DOT)
    # x_0 = s X, s = (‖X‖² + eps²)^(−1/2): ds = ⟨dx_0, X⟩, d‖X‖² = −s³/2 ds
    return s * dx - (s * s * s * tl.sum(tl.sum(dx * X, 1), 0)) * X
