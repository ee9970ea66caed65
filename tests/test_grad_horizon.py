"""``grad_horizon``: the memory mixers' truncated backpropagation through the memory's recurrence
(:class:`memnets.mixers.memory_block.MemoryBlock`). The forward and the final state must not change;
the gradient must stop exactly at the horizon's piece boundaries and be untouched inside a piece."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import memnets
from memnets.testing import assert_close

F64 = torch.float64
CONV = 4  # the mixers' short-conv width: q, k, v at token t read x[t − 3 .. t]
FAMILIES = {
    "titans": {},
    "yaad": {},
    "moneta": {"normalize_at": "chunk_end"},
    "omeganet": {"window": 2, "feature_degree": 2, "memory": {"expansion": 1.0}},
}


def _mixer(name: str, **opts: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return memnets.build_mixer(
        name, d_model=16, num_heads=2, chunk_size=4, backend="chunked", **opts
    ).double()


def _final_weights(state: object) -> tuple[torch.Tensor, ...]:
    memory = state.memory  # the block's memory op state: a MemoryState, or an OmegaState around one
    return getattr(memory, "memory", memory).weights


def _assert_cut(full: torch.nn.Module, cut: torch.nn.Module, weights_of: Callable[[Any], tuple]) -> None:
    """T = 37, ``cut`` with a horizon of 12 tokens (pieces 0-11, 12-23, 24-35, 36): outputs and final
    weights equal ``full``'s; the last token's gradient w.r.t. the input is ``full``'s inside the last
    piece and exactly 0 more than the conv's reach before it, where ``full``'s is not (float64)."""
    x = torch.randn(2, 37, 16, dtype=F64, requires_grad=True)
    grads, outs = [], []
    for mixer in (full, cut):
        y, state = mixer(x)
        (gx,) = torch.autograd.grad(y[:, -1].pow(2).sum(), x)
        grads.append(gx)
        outs.append((y.detach(), weights_of(state)))
    assert_close("y", outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        assert_close("final weights", a, b)
    last = 36  # the last piece's first token
    assert_close("gradient inside the last piece", grads[0][:, last:], grads[1][:, last:])
    assert grads[0][:, : last - CONV + 1].abs().max() > 0
    assert torch.all(grads[1][:, : last - CONV + 1] == 0)


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_and_state_unchanged_gradient_cut_at_the_horizon(name):
    opts = FAMILIES[name]
    _assert_cut(_mixer(name, **opts), _mixer(name, grad_horizon=12, **opts), _final_weights)


def test_mac_cuts_at_segment_ends():
    """Titans-MAC (its own segment loop), segments of 4: the cut of :func:`_assert_cut` at token 36
    detaches the memory, its segment-start copy and the write conv's window of attention outputs."""

    def mac(**opts: object) -> torch.nn.Module:
        torch.manual_seed(0)
        return memnets.build_mixer(
            "titans_mac", d_model=16, num_heads=2, chunk_size=4, segment_size=4, backend="chunked", **opts
        ).double()

    _assert_cut(mac(), mac(grad_horizon=12), lambda state: state.memory.weights)
    with pytest.raises(
        ValueError, match="grad_horizon=6 must be None or a positive multiple of segment_size=4"
    ):
        mac(grad_horizon=6)


def test_grad_horizon_is_checked_and_not_for_packed_sequences():
    with pytest.raises(
        ValueError, match="grad_horizon=6 must be None or a positive multiple of chunk_size=4"
    ):
        _mixer("titans", grad_horizon=6)
    mixer = _mixer("titans", grad_horizon=4)
    x = torch.randn(1, 10, 16, dtype=F64)
    with pytest.raises(ValueError, match="does not apply to packed sequences"):
        mixer(x, cu_seqlens=torch.tensor([0, 5, 10]))
    with torch.no_grad():  # no autograd: one call, nothing to truncate
        assert torch.isfinite(mixer(x)[0]).all()
    # the MAG/MAL hybrids pass it to their memory mixer
    assert (
        memnets.build_mixer(
            "titans_mag", d_model=16, num_heads=2, chunk_size=4, grad_horizon=8
        ).memory.grad_horizon
        == 8
    )
