"""The chunked associative scan equals the token-by-token loop: outputs and gradients of a, b and h0,
diagonal and 2x2 blocks, forward and reverse, on awkward lengths and several chunk sizes."""

import pytest
import torch

from memnets.kernels.scan import linear_scan
from memnets.testing import assert_close


def _inputs(T: int, block: bool, dtype: torch.dtype, with_h0: bool, B: int = 2, n: int = 3):
    state = (B, T, 2, n) if block else (B, T, n)
    # transitions of norm around 1 so long scans neither vanish nor blow up
    if block:
        a = torch.rand(B, T, 2, 2, n) * 0.7 + 0.3 * torch.eye(2)[:, :, None]
    else:
        a = torch.rand(*state) * 1.05
    b = torch.randn(*state)
    h0 = torch.randn(B, *state[2:]) if with_h0 else None
    return [t.to(dtype).requires_grad_() for t in (a, b) + ((h0,) if with_h0 else ())]


def _run(leaves, backend, reverse, chunk_size=64):
    a, b = leaves[0], leaves[1]
    h0 = leaves[2] if len(leaves) > 2 else None
    return linear_scan(a, b, h0, reverse=reverse, backend=backend, chunk_size=chunk_size)


@pytest.mark.parametrize("block", [False, True], ids=["diag", "block2"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("T", "chunk_size"), [(1, 4), (33, 2), (63, 4), (65, 16), (100, 8), (1000, 64)])
def test_chunked_equals_loop(block, reverse, dtype, T, chunk_size):
    for with_h0 in (False, True):
        leaves = _inputs(T, block, dtype, with_h0)
        ref = _run(leaves, "reference", reverse)
        cot = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, leaves, cot)
        out = _run(leaves, "chunked", reverse, chunk_size)
        grads = torch.autograd.grad(out, leaves, cot)
        assert_close("h", ref, out)
        for name, r, g in zip(("a", "b", "h0"), ref_grads, grads):
            assert_close(f"grad {name}", r, g)


def test_block_layout_is_matrix_vector():
    """2x2 layout: h_t[:, i, s] = sum_j a_t[:, i, j, s] h_{t-1}[:, j, s] + b_t[:, i, s]."""
    a = torch.randn(2, 7, 2, 2, 3, dtype=torch.float64) * 0.5
    b = torch.randn(2, 7, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64)
    h, outs = h0, []
    for t in range(7):
        h = torch.einsum("bijs,bjs->bis", a[:, t], h) + b[:, t]
        outs.append(h)
    assert_close("h", torch.stack(outs, 1), linear_scan(a, b, h0, backend="chunked", chunk_size=2))
    # reverse: h_t = A_t h_{t+1} + b_t with h_T = h0
    h, outs = h0, []
    for t in reversed(range(7)):
        h = torch.einsum("bijs,bjs->bis", a[:, t], h) + b[:, t]
        outs.append(h)
    assert_close("h rev", torch.stack(outs[::-1], 1), linear_scan(a, b, h0, reverse=True, chunk_size=2))


def test_half_inputs_scan_in_float32():
    a = torch.rand(1, 300, 4) * 0.99
    b = torch.randn(1, 300, 4)
    ref = linear_scan(a, b, backend="reference")
    out = linear_scan(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_close("h", ref, out.float(), ratio=2e-2)


def test_bad_inputs_raise():
    a, b = torch.rand(1, 5, 3), torch.rand(1, 5, 3)
    with pytest.raises(ValueError, match="backend='fast'"):
        linear_scan(a, b, backend="fast")
    with pytest.raises(ValueError, match="does not fit"):
        linear_scan(torch.rand(1, 5, 4), b)
    with pytest.raises(ValueError, match="h0 has shape"):
        linear_scan(a, b, torch.rand(1, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        linear_scan(a, b, chunk_size=1)


@pytest.mark.parametrize("block", [False, True], ids=["diag", "block2"])
def test_long_sequence(block):
    leaves = _inputs(4096, block, torch.float64, with_h0=True, B=1, n=2)
    ref = _run(leaves, "reference", False)
    cot = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, leaves, cot)
    out = _run(leaves, "chunked", False)
    assert_close("h", ref, out)
    for name, r, g in zip(("a", "b", "h0"), ref_grads, torch.autograd.grad(out, leaves, cot)):
        assert_close(f"grad {name}", r, g)
