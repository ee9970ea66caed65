"""The memory-op dispatcher (memnets.dispatch) with a toy op: backend choice, errors, log lines and
packed sequences. Every real op is covered through the mixers' own tests."""

from __future__ import annotations

import pytest
import torch

from memnets import dispatch
from memnets.testing import assert_close


def _cumsum(x: torch.Tensor, state: torch.Tensor | None = None, **options):
    """A recurrence: y_t = state + x_1 + ... + x_t, state = y_T (a sum per sequence)."""
    start = x.new_zeros(x.shape[0], x.shape[2]) if state is None else state
    y = x.cumsum(1) + start[:, None]
    return y, (y[:, -1] if x.shape[1] else start)


def _packed_kernel(x, state=None, *, scale=1.0, cu_seqlens=None, **options):
    """The same recurrence over packed sequences in one call, one state per sequence."""
    ys, states = [], []
    for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        y, st = _cumsum(x[:, s:e])
        ys.append(y * scale)
        states.append(st)
    return torch.cat(ys, 1), states


def _op(**fields):
    return dispatch.MemoryOp("the toy op", _cumsum, _cumsum, **fields)


@pytest.fixture
def on_gpu(monkeypatch):
    """Pretend the device could run Triton kernels, with a fresh log."""
    monkeypatch.setattr(dispatch, "triton_available", lambda device: True)
    monkeypatch.setattr(dispatch, "_announced", set())


def test_auto_runs_the_kernel_only_where_it_covers_the_configuration(on_gpu, caplog):
    covered = dispatch.MemoryDispatch("toy", _op(triton=_packed_kernel), scale=2.0)
    refused = dispatch.MemoryDispatch("toy2", _op(triton=_packed_kernel, supports=lambda **c: "scale 3"))
    cpu = torch.device("cpu")
    with caplog.at_level("INFO", logger=dispatch.log.name):
        assert covered.backend("auto", cpu) == "triton"
        assert refused.backend("auto", cpu) == "chunked"
        assert covered.backend("reference", cpu) == "reference"
    assert "toy: running the triton backend (asked for auto on cpu)" in caplog.text
    assert (
        "toy2: running the chunked backend (asked for auto on cpu; the Triton kernels do not cover scale 3)"
        in (caplog.text)
    )


def test_auto_is_chunked_where_no_kernel_can_run():
    d = dispatch.MemoryDispatch("toy", _op(triton=_packed_kernel))
    assert d.backend("auto", torch.device("cpu")) == "chunked"  # CPU without TRITON_INTERPRET requests


def test_explicit_backends_are_checked():
    with pytest.raises(ValueError, match=r"toy: backend='cuda' is not one of \['auto', 'reference'"):
        dispatch.MemoryDispatch("toy", _op()).check("cuda")
    with pytest.raises(ValueError, match="toy: backend='triton' is not implemented"):
        dispatch.MemoryDispatch("toy", _op()).check("triton")
    refused = _op(triton=_packed_kernel, supports=lambda **c: f"scale {c['scale']}")
    with pytest.raises(ValueError, match="toy: backend='triton' does not support part 1: scale 3"):
        dispatch.MemoryDispatch("toy", refused, part="part 1", scale=3).check("triton")


def test_optional_kernel_falls_back_with_a_log_line(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_announced", set())
    op = _op(triton=_packed_kernel, supports=lambda **c: "this case")
    d = dispatch.MemoryDispatch("toy", op, part="global memory", optional_kernel=True)
    d.check("triton")  # no error: the kernel is optional for this part
    with caplog.at_level("INFO", logger=dispatch.log.name):
        assert d.backend("triton", torch.device("cpu")) == "chunked"
    assert (
        "toy (global memory): running the chunked backend (asked for triton on cpu; the Triton" in caplog.text
    )


@pytest.mark.parametrize("lengths", [[5, 0, 7], [1], [3, 4, 0]])
def test_packed_sequences_run_one_by_one_or_in_one_call(lengths):
    """Without a packing kernel each sequence runs alone from a fresh state (the per-token inputs
    sliced, other options passed as they are); with one, one call; both return the last
    sequence's state."""
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = torch.randn(1, int(cu[-1]), 3)
    alone = [_cumsum(x[:, s:e]) for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())]
    expected_y = torch.cat([y for y, _ in alone], 1)
    for backend in ("chunked", "triton"):
        d = dispatch.MemoryDispatch("toy", _op(triton=_packed_kernel))
        y, state = d(backend, x, None, cu_seqlens=cu)
        assert_close(f"{backend} y", expected_y, y)
        assert_close(f"{backend} state", alone[-1][1], state)


def test_kernel_options_reach_the_kernel_only():
    """Options listed in kernel_options (e.g. dot_precision) go to the kernel, not to PyTorch paths."""
    seen = {}

    def chunked(x, state=None, **options):
        seen["chunked"] = options
        return _cumsum(x, state)

    def kernel(x, state=None, **options):
        seen["triton"] = options
        return _cumsum(x, state)

    op = dispatch.MemoryOp("the toy op", chunked, chunked, kernel, kernel_options=("precision",))
    d = dispatch.MemoryDispatch("toy", op, precision="bf16", size=4)
    x = torch.randn(2, 5, 3)
    d("chunked", x)
    d("triton", x)
    assert seen == {"chunked": {"size": 4}, "triton": {"precision": "bf16", "size": 4}}


def test_the_log_says_how_the_pytorch_forms_multiply_on_cuda(caplog, monkeypatch):
    """On CUDA the chunked form's float32 matmuls run as TF32 unless train.tf32 is false."""
    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    with caplog.at_level("INFO", logger=dispatch.log.name):
        dispatch.MemoryDispatch("toy", _op()).backend("chunked", torch.device("cuda"))
    assert (
        "toy: running the chunked backend (asked for chunked on cuda; float32 matmuls as TF32)" in caplog.text
    )
