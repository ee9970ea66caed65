"""Triton linear scan (TRITON_INTERPRET=1 on CPU) == the token-by-token reference: states and the
gradients of a, b and h0, diagonal and 2x2 blocks, forward and reverse, awkward lengths."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # run the Triton kernel on CPU; must precede the import

import pytest
import torch

from memnets.kernels.scan import linear_scan
from memnets.testing import assert_close, nan_allocations

# on MEMNETS_KERNEL_TEST_DEVICE (cpu: the interpreter; scripts/gpu_check.py runs them compiled on cuda)
pytestmark = pytest.mark.usefixtures("kernel_device")


def make_inputs(B, T, block, dtype, with_h0, n=5):
    state = (B, T, 2, n) if block else (B, T, n)
    # transitions of norm around 1 so the states neither vanish nor blow up
    if block:
        a = (
            torch.rand(B, T, 2, 2, n, dtype=torch.float64) * 0.7
            + 0.3 * torch.eye(2, dtype=torch.float64)[:, :, None]
        )
    else:
        a = torch.rand(*state, dtype=torch.float64) * 1.05
    b = torch.randn(*state, dtype=torch.float64)
    h0 = torch.randn(B, *state[2:], dtype=torch.float64) if with_h0 else None
    return [t.to(dtype).requires_grad_() for t in (a, b, h0) if t is not None]


def run(leaves, backend, reverse, cot):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    h = linear_scan(*leaves, reverse=reverse, backend=backend)
    grads = torch.autograd.grad(h, leaves, cot.to(h.dtype))
    return h.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("block", [False, True], ids=["diag", "block2"])
@pytest.mark.parametrize("T", [1, 63, 100])
def test_triton_scan_matches_reference(T, block, reverse, dtype):
    for with_h0 in (False, True):
        leaves = make_inputs(2, T, block, dtype, with_h0)
        cot = torch.randn(leaves[1].shape, dtype=torch.float64)
        ref, ref_grads = run(leaves, "reference", reverse, cot)
        with nan_allocations():
            out, grads = run(leaves, "triton", reverse, cot)
        assert_close("h", ref, out)
        for name, r, g in zip(("a", "b", "h0"), ref_grads, grads):
            assert_close(f"grad {name}", r, g)


def test_triton_scan_many_channel_blocks():
    """300 channels span three channel blocks of 128; T = 130 spans three time tiles of 64."""
    leaves = make_inputs(1, 130, False, torch.float64, True, n=300)
    cot = torch.randn(leaves[1].shape, dtype=torch.float64)
    ref, ref_grads = run(leaves, "reference", False, cot)
    out, grads = run(leaves, "triton", False, cot)
    assert_close("h", ref, out)
    for name, r, g in zip(("a", "b", "h0"), ref_grads, grads):
        assert_close(f"grad {name}", r, g)


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_pararnn_mixers_with_the_triton_scan_equal_chunked(name):
    from memnets.registry import build_mixer

    torch.manual_seed(0)
    mixer = build_mixer(name, d_model=16, num_heads=2, backend="chunked")
    x = torch.randn(2, 37, 16, requires_grad=True)
    y_ref, s_ref = mixer(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *mixer.parameters()])
    mixer.backend = "triton"
    with nan_allocations():
        y, s = mixer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *mixer.parameters()])
    assert_close("y", y_ref, y)
    assert_close("h", s_ref.h, s.h)
    for i, (a, b) in enumerate(zip(grads_ref, grads)):
        assert_close(f"grad[{i}]", a, b)
