"""Helpers for comparing a fast path with its reference in tests (used by ``tests/`` and by users who
add a mixer).

``assert_close`` uses fla's relative-RMS criterion: ``rms(ref - out) / rms(ref) <= ratio`` with the
ratio taken from a per-dtype table, plus an absolute floor for tensors that are (near) zero."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

#: relative-RMS tolerance per dtype of the computation under test
RATIO = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def rel_err(ref: Tensor, out: Tensor) -> float:
    ref, out = ref.double(), out.double()
    denom = ref.pow(2).mean().sqrt().item()
    num = (ref - out).pow(2).mean().sqrt().item()
    return num / denom if denom > 0 else num


def assert_close(
    name: str, ref: Tensor, out: Tensor, ratio: float | None = None, atol: float = 1e-10
) -> None:
    """Fail with the tensor's name, relative RMS error and max abs error when ``out`` is not ``ref``."""
    if ref is None or out is None:
        raise AssertionError(f"{name}: one side is None (ref={ref is None}, out={out is None})")
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values in output"
    assert torch.isfinite(ref).all(), f"{name}: non-finite values in reference"
    if ratio is None:
        ratio = RATIO[out.dtype] if out.dtype in RATIO else RATIO[torch.float32]
    max_abs = (ref.double() - out.double()).abs().max().item() if ref.numel() else 0.0
    if max_abs <= atol:
        return
    err = rel_err(ref, out)
    assert err <= ratio, f"{name}: relative RMS error {err:.3e} > {ratio:.1e} (max abs {max_abs:.3e})"


@contextlib.contextmanager
def nan_allocations() -> Iterator[None]:
    """Make ``torch.empty``/``empty_like``/``Tensor.new_empty`` return NaN-filled floating tensors, so a
    kernel that leaves part of a fresh output unwritten fails loudly."""
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)

    def fill(t: Tensor) -> Tensor:
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    torch.empty = lambda *a, **k: fill(originals[0](*a, **k))  # type: ignore[assignment]
    torch.empty_like = lambda *a, **k: fill(originals[1](*a, **k))  # type: ignore[assignment]
    torch.Tensor.new_empty = lambda self, *a, **k: fill(originals[2](self, *a, **k))  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals  # type: ignore[method-assign]
