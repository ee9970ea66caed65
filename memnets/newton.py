"""Parallel-in-time solution of a nonlinear recurrence ``h_t = f(h_{t-1}, u_t)`` by Newton's method
(ParaRNN, Danieli et al., arXiv 2510.21450 v2, §2 eqs. 2.1-2.6 and App. A).

The whole trajectory ``H = (h_0 .. h_{T-1})`` is the root of ``F(H)_t = h_t - f(h_{t-1}, u_t)`` (eq. 2.2).
From the initial guess ``h_t = f(0, u_t)`` (eq. A.1) each Newton step solves the linear recurrence
``delta_t = J_t delta_{t-1} + r_t`` with ``r_t = f(h_{t-1}, u_t) - h_t`` and ``J_t = df/dh`` at
``(h_{t-1}, u_t)`` (eqs. 2.3-2.4) by one parallel scan (``memnets.kernels.scan.linear_scan``). Cells whose
exact Jacobian is diagonal (``structure = "diag"``) or 2x2 block-diagonal (``"block2"``) make that scan
O(T d) work and O(log T) depth.

Convergence (the paper runs a fixed 3 iterations and never checks): here the residual
``max_t |F(H)_t|`` is measured before every step; the loop stops once it is at most
``tol * max(1, max|H|)`` and runs at most ``max_iters`` steps (default 3, the paper's count). If the
residual is still above the tolerance (or not finite), a ``NewtonWarning`` names the residual (on a
cell's 1st, 2nd, 4th, 8th, ... fallback; ``cell.newton_fallbacks`` counts them all) and the trajectory is
recomputed by the sequential loop (``on_fail="fallback"``), or ``NewtonDivergenceError`` is
raised (``on_fail="raise"``). A state that is not finite after the fallback raises ``FloatingPointError``:
no NaN passes silently. The check costs one host sync per iteration.

Backward (eq. 2.6, implicit differentiation at the solution): only ``u``, ``h0`` and the solution are
saved. The adjoint ``mu_t = dL/dh_t + J_{t+1}^T mu_{t+1}`` is one reverse scan with the transposed
Jacobians recomputed at the solution, then one batched vector-Jacobian product of ``f(h_{t-1}, u_t)``
(with ``h_{t-1}`` held fixed) gives the gradients of ``u``, ``h0`` and the cell's parameters. The gradients
are exact for the converged trajectory.

A new cell is a subclass of ``Cell`` that defines ``f`` and ``jacobian`` (and ``zero_state`` when its state
is not shaped like ``u[..., 0, :]``); ``u`` is the cell's input projection, computed once outside.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .kernels.scan import linear_scan

#: default residual tolerance per compute dtype (relative to max(1, max|H|))
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


class NewtonWarning(RuntimeWarning):
    """Newton did not reach the tolerance within ``max_iters``; the sequential loop was used."""


class NewtonDivergenceError(RuntimeError):
    """Newton did not reach the tolerance within ``max_iters`` and ``on_fail="raise"``."""


class Cell(nn.Module):
    """A recurrent cell ``h_t = f(h_{t-1}, u_t)`` with a structured exact Jacobian.

    ``structure``: ``"diag"`` (state ``[..., D]``, Jacobian ``[..., D]``) or ``"block2"`` (state
    ``[..., 2, D]``, Jacobian ``[..., 2, 2, D]`` with ``J[..., i, j, d] = d h'[i, d] / d h[j, d]``: the
    component-major layout of ``linear_scan``). ``u`` carries the
    time dimension in the same place as the state, so every method works on one step ``[B, ...]`` and on
    a whole sequence ``[B, T, ...]`` alike."""

    structure: Literal["diag", "block2"] = "diag"

    def f(self, h_prev: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def jacobian(self, h_prev: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def f_and_jacobian(self, h_prev: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Override to share the gate computations of ``f`` and ``jacobian``."""
        return self.f(h_prev, u), self.jacobian(h_prev, u)

    def output(self, state: Tensor) -> Tensor:
        """The part of the state the layer reads out (all of it unless overridden)."""
        return state

    def zero_state(self, u: Tensor) -> Tensor:
        """Zeros shaped like the state for inputs ``u [..., G, D]`` (G projections per channel)."""
        two = (2,) if self.structure == "block2" else ()
        return u.new_zeros(*u.shape[:-2], *two, u.shape[-1])


@dataclass
class NewtonStats:
    """What the last solve did: Newton steps taken, residual ``max|F(H)|`` of the returned trajectory
    (before any fallback) and whether the sequential fallback ran."""

    iters: int = 0
    residual: float = float("nan")
    converged: bool = False
    fallback: bool = False


def _keep_mask(reset: Tensor | None, like: Tensor) -> Tensor | None:
    """``reset [B, T]`` (True where a sequence starts, so the previous state is zero) broadcast to
    ``like [B, T, ...]`` as a 0/1 multiplier."""
    if reset is None:
        return None
    keep = (~reset).to(like.dtype)
    return keep.reshape(*keep.shape, *([1] * (like.dim() - 2)))


def _previous(H: Tensor, h0: Tensor, keep: Tensor | None) -> Tensor:
    prev = torch.cat([h0.unsqueeze(1), H[:, :-1]], 1)
    return prev if keep is None else prev * keep


def _transpose(J: Tensor, structure: str) -> Tensor:
    return J.transpose(-3, -2) if structure == "block2" else J


def sequential_solve(cell: Cell, u: Tensor, h0: Tensor | None = None, reset: Tensor | None = None) -> Tensor:
    """The token-by-token loop: the reference the parallel solver must match (differentiable)."""
    h = cell.zero_state(u[:, 0]) if h0 is None else h0
    keep = _keep_mask(reset, h.unsqueeze(1))
    out = []
    # unbind once: indexing u[:, t] in the loop would make the backward O(T^2)
    keeps = keep.unbind(1) if keep is not None else [None] * u.shape[1]
    for u_t, keep_t in zip(u.unbind(1), keeps):
        h = cell.f(h if keep_t is None else h * keep_t, u_t)
        out.append(h)
    return torch.stack(out, 1)


@dataclass(frozen=True)
class NewtonOptions:
    """``max_iters``: Newton steps at most (the paper's 3); ``tol``: residual tolerance relative to
    ``max(1, max|H|)`` (``None`` = ``TOL`` for the compute dtype); ``on_fail``: ``"fallback"`` (warn, then
    the sequential loop) or ``"raise"``; ``scan_backend`` / ``chunk_size``: passed to ``linear_scan``."""

    max_iters: int = 3
    tol: float | None = None
    on_fail: Literal["fallback", "raise"] = "fallback"
    scan_backend: str = "chunked"
    chunk_size: int = 8


def newton_solve(
    cell: Cell,
    u: Tensor,
    h0: Tensor | None = None,
    reset: Tensor | None = None,
    options: NewtonOptions | None = None,
    stats: NewtonStats | None = None,
) -> Tensor:
    """Solve ``h_t = f(h_{t-1}, u_t)`` for ``t = 0..T-1`` (``u [B, T, ...]``, ``h_{-1} = h0`` or zeros) in
    parallel; returns the states ``[B, T, ...]``. ``reset [B, T]`` (bool) zeroes the previous state where
    it is True (packed sequences). ``stats``, when given, is filled in. Differentiable w.r.t. ``u``,
    ``h0`` and the cell's parameters (implicit differentiation, see the module docstring)."""
    options = options or NewtonOptions()
    if options.max_iters < 0:
        raise ValueError(f"newton_solve: max_iters must be >= 0, got {options.max_iters}")
    if options.on_fail not in ("fallback", "raise"):
        raise ValueError(f"newton_solve: on_fail={options.on_fail!r} is not one of ['fallback', 'raise']")
    if cell.structure not in ("diag", "block2"):
        raise ValueError(f"newton_solve: cell.structure={cell.structure!r} is not one of ['diag', 'block2']")
    if u.dim() < 3 or u.shape[1] == 0:
        raise ValueError(f"newton_solve: u must be [B, T >= 1, ...], got shape {tuple(u.shape)}")
    out_dtype = u.dtype
    if u.dtype in (torch.float16, torch.bfloat16):
        u = u.float()
    zero = cell.zero_state(u[:, 0])
    if h0 is not None and h0.shape != zero.shape:
        raise ValueError(f"newton_solve: h0 has shape {tuple(h0.shape)}, expected {tuple(zero.shape)}")
    h0_in = h0.to(u.dtype) if h0 is not None else None
    params = tuple(p for p in cell.parameters() if p.requires_grad)
    H = _NewtonSolve.apply(cell, options, stats or NewtonStats(), reset, u, h0_in, *params)
    return H.to(out_dtype)


def _newton_forward(
    cell: Cell, u: Tensor, h0: Tensor, reset: Tensor | None, options: NewtonOptions, stats: NewtonStats
) -> Tensor:
    keep = _keep_mask(reset, h0.unsqueeze(1))
    tol = options.tol if options.tol is not None else TOL.get(u.dtype, TOL[torch.float32])
    H = cell.f(_previous(cell.zero_state(u), h0, keep), u)  # initial guess f(0, u_t) (h0 at t = 0)
    stats.iters, stats.converged, stats.fallback = 0, False, False
    for k in range(options.max_iters + 1):
        prev = _previous(H, h0, keep)
        if k < options.max_iters:
            fH, J = cell.f_and_jacobian(prev, u)
        else:
            fH, J = cell.f(prev, u), None
        residual = fH - H
        res = residual.abs().max().item()
        stats.residual = res
        if res <= tol * max(1.0, H.abs().max().item()):  # False for NaN
            stats.converged = True
            return H
        if J is None:
            break
        if keep is not None:
            J = J * (keep if cell.structure == "diag" else keep.unsqueeze(-1))
        H = H + linear_scan(J, residual, backend=options.scan_backend, chunk_size=options.chunk_size)
        stats.iters = k + 1
    msg = (
        f"ParaRNN Newton: residual max|h_t - f(h_(t-1), u_t)| = {stats.residual:.3e} after "
        f"{stats.iters} iterations (tolerance {tol:.1e}, T={u.shape[1]}, {type(cell).__name__})"
    )
    if options.on_fail == "raise":
        raise NewtonDivergenceError(msg + "; raise max_iters or clip the recurrent weights")
    # count per cell and warn on the 1st, 2nd, 4th, 8th, ... fallback: visible without flooding a log
    cell.newton_fallbacks = getattr(cell, "newton_fallbacks", 0) + 1
    n = cell.newton_fallbacks
    if n & (n - 1) == 0:
        warnings.warn(
            f"{msg}; recomputing with the sequential loop (fallback #{n} of this cell; more iterations "
            "(newton_iters) or a smaller clip avoid it)",
            NewtonWarning,
            stacklevel=2,
        )
    stats.fallback = True
    H = sequential_solve(cell, u, h0, reset)
    if not torch.isfinite(H).all():
        raise FloatingPointError(
            f"ParaRNN: the sequential loop of {type(cell).__name__} produced non-finite states "
            f"(inputs finite: {bool(torch.isfinite(u).all())}, h0 finite: {bool(torch.isfinite(h0).all())})"
        )
    return H


class _NewtonSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, options, stats, reset, u, h0, *params):
        zero = cell.zero_state(u[:, 0])
        h0_ = h0 if h0 is not None else zero
        H = _newton_forward(cell, u, h0_, reset, options, stats)
        ctx.cell, ctx.options, ctx.has_h0 = cell, options, h0 is not None
        ctx.keep = _keep_mask(reset, h0_.unsqueeze(1))
        ctx.save_for_backward(u, h0_, H, *params)
        return H

    @staticmethod
    def backward(ctx, grad_H):
        u, h0, H, *params = ctx.saved_tensors
        cell, options, keep = ctx.cell, ctx.options, ctx.keep
        structure = cell.structure
        prev = _previous(H, h0, keep)
        with torch.no_grad():
            J = cell.jacobian(prev, u)
            if keep is not None:
                J = J * (keep if structure == "diag" else keep.unsqueeze(-1))
            # mu_t = grad_t + J_{t+1}^T mu_{t+1}: reverse scan with the transitions shifted by one
            a = torch.cat([_transpose(J[:, 1:], structure), torch.zeros_like(J[:, :1])], 1)
            mu = linear_scan(
                a,
                grad_H.to(u.dtype),
                reverse=True,
                backend=options.scan_backend,
                chunk_size=options.chunk_size,
            )
        with torch.enable_grad():
            u_ = u.detach().requires_grad_()
            h0_ = h0.detach().requires_grad_()
            prev = torch.cat([h0_.unsqueeze(1), H[:, :-1].detach()], 1)
            if keep is not None:
                prev = prev * keep
            out = cell.f(prev, u_)
            inputs = (u_, h0_, *params)
            grads = torch.autograd.grad(out, inputs, mu, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs)]
        grad_u, grad_h0, *grad_params = grads
        return (None, None, None, None, grad_u, grad_h0 if ctx.has_h0 else None, *grad_params)
