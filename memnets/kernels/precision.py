"""Matmul operand precision shared by the Triton kernels: the modes, their compile-time codes, the
``"auto"`` rule that picks one from the inputs, and the ``dot`` every kernel multiplies with.

Every mode accumulates in float32 and keeps the recurrent state in float32; only the operands of each
product are rounded: ``tf32x3`` (three TF32 products, float32 accuracy), ``tf32`` (one), ``float16`` /
``bfloat16`` (the operands rounded to that half type, as fla's kernels read their float32 state against
half inputs: one tensor-core pass at up to 6x the tf32x3 rate)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# compile-time codes of the modes (the kernels' DOT constexpr)
DOT_PRECISIONS = {"tf32x3": 0, "tf32": 1, "float16": 2, "bfloat16": 3}


def resolve_dot_precision(dot_precision: str, dtype: torch.dtype) -> str:
    """``dot_precision`` with ``"auto"`` resolved for matmul inputs of ``dtype``: their half type, else
    "tf32x3"; a named mode is returned as it is (checked)."""
    if dot_precision == "auto":
        return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "tf32x3")
    if dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"dot_precision={dot_precision!r} is not one of {['auto', *DOT_PRECISIONS]}")
    return dot_precision


def operand_dtype(x: torch.Tensor) -> torch.dtype:
    """The type the products of a call on ``x`` run in: autocast's where it is on for ``x``'s device
    (the projections ran in it even if ``x`` itself was normalised in float32), else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def dot_code_for(dot_precision: str, x: torch.Tensor) -> int:
    """The kernels' ``DOT`` code for ``dot_precision`` on products of ``x`` ("auto" resolved for
    :func:`operand_dtype`)."""
    return DOT_PRECISIONS[resolve_dot_precision(dot_precision, operand_dtype(x))]


@triton.jit
def dot(a, b, DOT: tl.constexpr):
    """a @ b accumulated in float32, the operands as ``DOT_PRECISIONS`` says: 0 float32 (three TF32
    products, tf32x3), 1 one TF32 product, 2 / 3 rounded to float16 / bfloat16."""
    if DOT == 0:
        out = tl.dot(a, b, input_precision="tf32x3")
    elif DOT == 1:
        out = tl.dot(a, b, input_precision="tf32")
    elif DOT == 2:
        out = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    return out
