"""First-use self-check of a Triton kernel that ``backend="auto"`` picked.

No kernel of this package has passed its tests on a GPU yet, so ``auto`` runs one only after it
agreed with the chunked PyTorch form on this device: the first call per (op, shape class, dtype,
device) in a process runs both on a small slice of the real inputs (the first sequence, at most
:data:`CHECK_TOKENS` tokens, from a fresh state) forward and backward, and compares the outputs and
the gradients of every input and of the memory network's parameters. A kernel that fails, or does not
compile, is not used again in the process for that shape class: the call runs the chunked form
(compiled on CUDA, as where no kernel covers the configuration), and a warning says why. A call that continues a recurrent state (decoding) runs the kernel only once a call
from a fresh state has checked it. ``MEMNETS_KERNEL_SELF_CHECK=0`` turns the check off (the kernel then runs unchecked);
``backend="triton"`` is never checked (asking for the kernel by name means wanting it).

The tolerance catches a wrong or miscompiled kernel, not rounding: relative RMS error
:data:`TOLERANCE` for float32 operands, :data:`HALF_TOLERANCE` for half operands or half/TF32 matmuls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("memnets")

CHECK_TOKENS = 64
TOLERANCE = 1e-3
HALF_TOLERANCE = 5e-2
_verdicts: dict[tuple, str | None] = {}  # (op, shape class, dtype, device) -> None (agreed) or why not


def enabled() -> bool:
    return os.environ.get("MEMNETS_KERNEL_SELF_CHECK", "1") != "0"


def _shape_class(name: str, head: tuple, inputs: tuple, options: dict[str, Any]) -> tuple:
    """What a kernel is compiled for: per-token widths (not batch or length), dtypes, options."""
    tensors = [t for t in (*inputs, *options.values()) if isinstance(t, Tensor)]
    arch = tuple(tuple(p.shape) for m in head for p in m.parameters())
    widths = tuple((tuple(t.shape[2:]), t.dtype) for t in tensors)
    static = tuple(sorted((k, repr(v)) for k, v in options.items() if not isinstance(v, Tensor)))
    return (name, arch, widths, static, tensors[0].device)


def _slice(t: Any, n: int) -> Any:
    """The first sequence's first ``n`` tokens of a per-token tensor, as a fresh leaf."""
    if not isinstance(t, Tensor) or t.dim() < 2:
        return t
    piece = t[:1, :n].detach().clone()
    return piece.requires_grad_(piece.is_floating_point())


def _rel_err(ref: Tensor, out: Tensor) -> float:
    ref, out = ref.double(), out.double()
    return ((ref - out).norm() / ref.norm().clamp_min(1e-30)).item()


def _disagreement(
    kernel: Callable, chunked: Callable, head: tuple, inputs: tuple, kernel_kw: dict, chunked_kw: dict
) -> str | None:
    """Why the kernel's forward and backward differ from the chunked form's (``None``: they agree)."""
    n = CHECK_TOKENS
    with torch.inference_mode(False), torch.enable_grad():
        xs = [_slice(t, n) for t in inputs]
        kw_k = {k: _slice(v, n) for k, v in kernel_kw.items()}
        kw_c = {k: kw_k.get(k, _slice(v, n)) for k, v in chunked_kw.items()}
        leaves = [t for t in (*xs, *kw_k.values()) if isinstance(t, Tensor) and t.requires_grad]
        leaves += [p for m in head for p in m.parameters() if p.requires_grad]
        y_ref, _ = chunked(*head, *xs, **kw_c)
        y_out, _ = kernel(*head, *xs, **kw_k)
        cot = torch.randn_like(y_ref)
        g_ref = torch.autograd.grad(y_ref, leaves, cot, allow_unused=True)
        g_out = torch.autograd.grad(y_out, leaves, cot, allow_unused=True)
    half = any(t.dtype in (torch.float16, torch.bfloat16) for t in leaves) or any(
        v in ("tf32", "float16", "bfloat16") for v in kernel_kw.values() if isinstance(v, str)
    )
    tol = HALF_TOLERANCE if half else TOLERANCE
    pairs = [("output", y_ref, y_out)] + [
        (f"gradient {i}", a, b)
        for i, (a, b) in enumerate(zip(g_ref, g_out))
        if a is not None and b is not None
    ]
    for name, a, b in pairs:
        if not torch.isfinite(b).all():
            return f"non-finite {name}"
        if (err := _rel_err(a, b)) > tol:
            return f"{name} differs from the chunked form by {err:.2e} (relative RMS, tolerance {tol:.0e})"
    return None


def kernel_agrees(
    name: str,
    kernel: Callable,
    chunked: Callable,
    head: tuple,
    inputs: tuple,
    kernel_kw: dict[str, Any],
    chunked_kw: dict[str, Any],
) -> bool:
    """Whether ``kernel`` may run this call: checked once per shape class (cached for the process)."""
    if not enabled():
        return True
    key = _shape_class(name, head, inputs, kernel_kw)
    if any(dataclasses.is_dataclass(t) for t in inputs):
        # a call continuing a recurrent state cannot be checked on its own: it runs the kernel only
        # once a call from a fresh state has checked it
        return key in _verdicts and _verdicts[key] is None
    if key not in _verdicts:
        try:
            _verdicts[key] = _disagreement(kernel, chunked, head, inputs, kernel_kw, chunked_kw)
        except Exception as e:  # a kernel that does not compile or launch here falls back too
            _verdicts[key] = (
                f"it failed to run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
        if _verdicts[key] is not None:
            log.warning(
                "%s: the Triton kernel failed its first-use self-check on %s (%s); running the chunked "
                "form (compiled on CUDA) for this shape instead (MEMNETS_KERNEL_SELF_CHECK=0 skips the "
                "check)",
                name,
                key[-1],
                _verdicts[key],
            )
    return _verdicts[key] is None
