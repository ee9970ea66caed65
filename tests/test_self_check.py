"""The first-use self-check of kernels that ``backend="auto"`` picks (memnets.self_check): a correct
kernel runs, a wrong one is caught, warned about and replaced by the chunked form, and the verdict is
kept per shape class. The kernels run in Triton's interpreter on CPU; ``auto`` is told the device
could run them."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import memnets
from memnets import dispatch, self_check
from memnets.testing import assert_close

pytest.importorskip("memnets.memory.kernel_bridge")

OPTIONS = {"d_model": 32, "num_heads": 2, "chunk_size": 8, "memory": {"expansion": 2.0}}


@pytest.fixture
def auto_picks_kernels(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda device: True)
    monkeypatch.setattr(dispatch, "_announced", set())
    monkeypatch.setattr(self_check, "_verdicts", {})


def _twins(**options):
    torch.manual_seed(0)
    chunked = memnets.build_mixer("titans", backend="chunked", **OPTIONS, **options)
    auto = memnets.build_mixer("titans", backend="auto", **OPTIONS, **options)
    auto.load_state_dict(chunked.state_dict())
    return chunked, auto


def _spy(mixer, scale: float = 1.0) -> list[int]:
    """Count the kernel's calls; ``scale`` != 1 makes its output wrong."""
    calls, kernel = [], mixer.op.op.triton

    def spied(*args, **kwargs):
        calls.append(1)
        y, state = kernel(*args, **kwargs)
        return y * scale, state

    mixer.op.op = dataclasses.replace(mixer.op.op, triton=spied)
    return calls


def test_a_correct_kernel_passes_and_runs(auto_picks_kernels):
    chunked, auto = _twins()
    calls = _spy(auto)
    x = torch.randn(2, 20, 32)
    assert_close("y", chunked(x)[0], auto(x)[0])
    assert len(calls) == 2  # the check, then the call itself
    auto(torch.randn(2, 12, 32))  # same shape class: no second check
    assert len(calls) == 3
    assert list(self_check._verdicts.values()) == [None]


def test_a_wrong_kernel_is_caught_and_the_run_continues_on_the_chunked_form(auto_picks_kernels, caplog):
    chunked, auto = _twins()
    calls = _spy(auto, scale=1.1)
    x = torch.randn(2, 20, 32)
    with caplog.at_level("WARNING", logger=dispatch.log.name):
        y, state = auto(x)
    assert "failed its first-use self-check" in caplog.text and "output differs" in caplog.text
    y_ref, state_ref = chunked(x)
    assert_close("y", y_ref, y)
    assert_close("state", state_ref.memory.weights[0], state.memory.weights[0])
    auto(x)
    assert len(calls) == 1  # only the check ran the kernel


def test_decoding_waits_for_a_checked_kernel(auto_picks_kernels):
    """A call that continues a state is not checkable alone: it runs the chunked form until a call
    from a fresh state has checked the kernel."""
    _, auto = _twins()
    calls = _spy(auto)
    _, state = memnets.build_mixer("titans", backend="chunked", **OPTIONS)(torch.randn(1, 5, 32))
    auto(torch.randn(1, 1, 32), state)
    assert calls == []
    auto(torch.randn(1, 9, 32))  # checks (and runs) the kernel
    auto(torch.randn(1, 1, 32), state)
    assert len(calls) == 3


def test_the_check_can_be_turned_off(auto_picks_kernels, monkeypatch):
    monkeypatch.setenv("MEMNETS_KERNEL_SELF_CHECK", "0")
    _, auto = _twins()
    calls = _spy(auto, scale=1.1)
    auto(torch.randn(1, 9, 32))
    assert len(calls) == 1 and not self_check._verdicts


def test_an_explicit_triton_backend_is_not_checked(auto_picks_kernels):
    mixer = memnets.build_mixer("titans", backend="triton", **OPTIONS)
    calls = _spy(mixer, scale=1.1)
    mixer(torch.randn(1, 9, 32))
    assert len(calls) == 1 and not self_check._verdicts
