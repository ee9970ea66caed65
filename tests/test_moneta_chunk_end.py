"""Moneta's chunk-end normalisation (``normalize_at="chunk_end"``, Miras §5.3): chunked == token-by-token
reference (outputs, final state, every gradient) at lengths around the chunk boundaries, chunk size 1 ==
projected online descent written out here, one chunk == the linear accumulation then the map, and the
mixer's options (its decoding and backends are checked in tests/test_miras.py)."""

import pytest
import torch
from test_miras import F64, inputs, run_with_grads, tiny

from memnets.memory import MemoryMLP, MemoryState
from memnets.memory.miras import ChunkEnd, LpBias, LqNormalize, miras_chunked, miras_reference
from memnets.testing import assert_close


@pytest.mark.parametrize("map_", ["paper", "unit"])
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_chunked_equals_reference(map_, T):
    B, H, D, chunk_size = 2, 2, 3, 16
    torch.manual_seed(1)
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    q, k, v, lr, keep = inputs(B, T, H, D)
    # half test_miras' step sizes: over 100 tokens the random-data inner dynamics amplify round-off
    lr = 0.5 * lr
    state0 = tuple(0.5 * torch.randn(B, *w.shape, dtype=F64) for w in arch.init_weights)
    kw = dict(chunk_size=chunk_size, bias=LpBias(3.0), retention=ChunkEnd(LqNormalize(4.0, map_, 0.1)))
    cot_y = torch.randn(B, T, H, D, dtype=F64)
    cot_w = tuple(torch.randn_like(w) for w in state0)
    tensors = (q, k, v, lr, keep, None)
    ref = run_with_grads(miras_reference, arch, tensors, state0, cot_y, cot_w, **kw)
    out = run_with_grads(miras_chunked, arch, tensors, state0, cot_y, cot_w, **kw)
    assert_close(f"T={T} y", ref[0], out[0])
    for i, (a, b) in enumerate(zip(ref[1].weights, out[1].weights)):
        assert_close(f"T={T} final W{i}", a, b)
    assert ref[1].offset == out[1].offset == T % chunk_size
    assert len(ref[2]) == len(out[2]) > 6  # inputs, initial state and the memory's own parameters
    for i, (a, b) in enumerate(zip(ref[2], out[2])):
        assert_close(f"T={T} grad #{i}", a, b)


def test_one_chunk_is_the_linear_accumulation_then_the_map():
    """Inside a chunk nothing is normalised (the reads equal identity retention's); the state after the
    chunk's last token is the map of the accumulation; a partial chunk leaves the accumulation as is."""
    B, H, D, C = 2, 2, 4, 8
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    q, k, v, lr, keep = inputs(B, C, H, D, seed=7)
    lq = LqNormalize(4.0, "paper")
    common = dict(chunk_size=C, bias=LpBias(3.0))
    y_lin, st_lin = miras_chunked(arch, q, k, v, lr, None, keep, **common)
    y, st = miras_chunked(arch, q, k, v, lr, None, keep, retention=ChunkEnd(lq), **common)
    assert_close("reads", y_lin, y)
    for a, b in zip(st_lin.weights, st.weights):
        assert_close("state", lq(a), b)
    _, part = miras_chunked(
        arch, q[:, :5], k[:, :5], v[:, :5], lr[:, :5], None, keep[:, :5], retention=ChunkEnd(lq), **common
    )
    _, part_lin = miras_chunked(arch, q[:, :5], k[:, :5], v[:, :5], lr[:, :5], None, keep[:, :5], **common)
    for a, b in zip(part_lin.weights, part.weights):
        assert_close("partial chunk", a, b)
    # the per-token map gives a different model on the same inputs
    y_token, _ = miras_chunked(arch, q, k, v, lr, None, keep, retention=lq, **common)
    assert (y_token - y).abs().max() > 1e-3


def test_chunk_size_one_is_projected_online_descent():
    """Linear memory (row form M(k) = k W): W_t = φ(α_t W_{t−1} − η_t ∇ℓ_3(W_{t−1})), token t reading
    the un-normalised α_t W_{t−1} − η_t ∇ℓ_3(W_{t−1}), φ(W) = W/‖W‖_4^2 (Miras Eq. 24-25)."""
    B, T, H, D = 2, 17, 2, 4
    arch = MemoryMLP(H, D, depth=1, residual=False, layer_norm=False).double()
    q, k, v, lr, keep = inputs(B, T, H, D, seed=3)
    W = torch.randn(B, H, D, D, dtype=F64)
    y, st = miras_chunked(
        arch,
        q,
        k,
        v,
        lr,
        None,
        keep,
        MemoryState((W,)),
        chunk_size=1,
        bias=LpBias(3.0, eps=1e-14),
        retention=ChunkEnd(LqNormalize(4.0, "paper")),
    )
    ys = []
    for t in range(T):
        kt, vt, qt = k[:, t, :, None, :], v[:, t, :, None, :], q[:, t, :, None, :]
        r = kt @ W - vt
        acc = keep[:, t, :, None, None] * W - lr[:, t, :, None, None] * kt.transpose(-1, -2) @ (
            3 * torch.sign(r) * r.abs().pow(2)
        )
        ys.append(qt @ acc)
        W = acc / acc.pow(4).sum((-2, -1), keepdim=True).pow(0.5)
    assert_close("y", torch.cat(ys, 2).transpose(1, 2), y, ratio=1e-8)
    assert_close("W", W, st.weights[0], ratio=1e-8)


def test_mixer_options():
    """The mixer-level checks (decoding == forward, reference == chunked with every gradient) run with
    ``normalize_at="chunk_end"`` in tests/test_miras.py."""
    assert isinstance(tiny("moneta", normalize_at="chunk_end").retention, ChunkEnd)
    assert isinstance(tiny("moneta").retention, LqNormalize)
    with pytest.raises(ValueError, match="normalize_at='sometimes' is not allowed"):
        tiny("moneta", normalize_at="sometimes")
    with pytest.raises(ValueError, match="normalize_at='chunk_end' needs normalize='paper' or 'unit'"):
        tiny("moneta", normalize_at="chunk_end", normalize="none")
    # the whole-state MLP kernels apply the map (tests/test_moneta_kernel.py)
    assert tiny("moneta", normalize_at="chunk_end", backend="triton").op.no_kernel("triton") is None
