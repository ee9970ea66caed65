"""Absent inputs as the kernels take them: a Triton launch passes a pointer for every argument, so an
input a configuration leaves out (no momentum, no LayerNorm, a dense batch) is passed as an empty tensor
the kernel never reads."""

from __future__ import annotations

from torch import Tensor


def or_empty(empty: Tensor, *tensors: Tensor | None) -> tuple[Tensor, ...]:
    """``tensors`` with every ``None`` replaced by ``empty``."""
    return tuple(empty if t is None else t for t in tensors)


def coefficients(
    beta: Tensor, f: Tensor | None, G: Tensor, m_end: Tensor | None, s_coef: Tensor | None
) -> tuple[Tensor, ...]:
    """The dual form's coefficients (β, f, G, m_end, s_coef) contiguous, the momentum ones (f, m_end,
    s_coef) empty without momentum."""
    empty = beta.new_zeros(0)
    return tuple(t.contiguous() for t in or_empty(empty, beta, f, G, m_end, s_coef))
