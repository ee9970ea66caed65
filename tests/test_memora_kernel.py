"""Memora's softmax retention in the whole-state MLP-memory kernels (Miras arXiv 2504.13173 Eq. 27:
``miras_chunked(..., retention=SimplexSoftmax, lag=...)``, :mod:`memnets.kernels.mlp_memory.simplex`) ==
the engine in float64: outputs, final logits, momenta and anchor, every gradient (random cotangents on
all of them), on lengths around the chunk boundaries, with and without the lag token (§5.3 Eq. 30-32),
with and without momentum and the memory's LayerNorm, chunks of two tiles, a second call from inside a
chunk (finished in PyTorch), packed sequences; the wide-state kernels (:mod:`.wide_simplex`,
:mod:`.wide_simplex_backward`: hidden widths in blocks, layer 2's softmax across them); and the ``memora``
mixer with ``backend: triton`` in both.

The initial logits have a standard deviation of 2 (the harness draws 1/√d): with near-uniform softmax
rows every output unit averages its inputs alike, so the outputs differ across channels by about 1e-5
of their size and the LayerNorm divides that spread out, amplifying float32 rounding to 1e-5 in the
float32 engine itself (the reason Memora's memory has no LayerNorm by default, memnets.mixers.miras).
Tolerance: float32's ratio plus twice the float32 engine's own distance to float64, as for Moneta.
"""

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import test_mlp_memory as base  # the whole-state kernels' tests: same harness
import torch
from mixer_checks import check_against_float64, check_decode_and_split

import memnets
from memnets.memory.miras import LqNormalize, SimplexSoftmax, miras_chunked
from memnets.testing import RATIO, assert_close, nan_allocations, rel_err

pytestmark = pytest.mark.usefixtures("kernel_device")

triton_mlp = pytest.importorskip("memnets.memory.kernel_bridge")

LOGIT_STD = 2.0


def _inputs(T: int, gates: str) -> dict:
    inputs = base._inputs(T, torch.float32, gates)
    for name, width in (("w1", base.D), ("w2", 4 * base.D)):
        inputs[name] = inputs[name] * LOGIT_STD * width**0.5
    return inputs


def _compare(T, chunk_size, lag, gates="both", split=None, layer_norm=False, scale=1.0, **wide):
    retention = SimplexSoftmax(scale)
    arch = base._arch(True, "gelu", layer_norm)
    ref_arch = base._arch(True, "gelu", layer_norm).double()
    inputs = _inputs(T, gates)
    engine = functools.partial(miras_chunked, retention=retention, lag=lag)
    ref = base._run(engine, ref_arch, inputs, chunk_size, torch.float64, None, split)
    eng32 = base._run(engine, arch, inputs, chunk_size, torch.float32, None, split)
    kernel = functools.partial(
        triton_mlp.titans_mlp_chunked, retention=retention, lag=lag, **wide, **base.F32_DOTS
    )
    with nan_allocations():
        out = base._run(kernel, arch, inputs, chunk_size, torch.float32, None, split)
    assert ref.keys() == out.keys()
    for name in ref:
        case = f"T={T}, chunk={chunk_size}, lag={lag}, gates={gates}, split={split}, ln={layer_norm}"
        ratio = RATIO[torch.float32] + 2 * rel_err(ref[name], eng32[name])
        assert_close(f"{name} ({case})", ref[name], out[name], ratio=ratio)


@pytest.mark.parametrize("lag", [True, False])
@pytest.mark.parametrize("T", [1, 16, 63, 65, 100])
def test_kernel_matches_engine(T, lag):
    _compare(T, 16, lag)


@pytest.mark.parametrize("lag", [True, False])
def test_kernel_without_momentum_with_layer_norm_and_a_scale(lag):
    _compare(40, 8, lag, gates="keep", layer_norm=True)
    _compare(33, 16, lag, gates="none", scale=3.0)


@pytest.mark.parametrize("lag", [True, False])
def test_kernel_chunk_of_two_tiles_and_a_split_call(lag):
    """Chunks of 128 run as two 64-row tiles (the second tile's key path at the weights after the
    chunk's lag token, recomputed in the backward from the first tile's rows); the second call starts
    inside a chunk, right after a lag token (split 17) and later (split 21)."""
    _compare(150, 128, lag)
    _compare(45, 16, lag, split=17)
    _compare(45, 16, lag, gates="keep", split=21)


def test_kernel_packed_sequences():
    """Three sequences in one launch: each from its own state, with its own lag tokens."""
    retention = SimplexSoftmax()
    lengths = [20, 33, 16]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    arch = base._arch(True, "gelu", False)
    inputs = _inputs(sum(lengths), "both")
    kernel = functools.partial(triton_mlp.titans_mlp_chunked, retention=retention, lag=True, **base.F32_DOTS)
    engine = functools.partial(miras_chunked, retention=retention, lag=True)
    args = [inputs[n] for n in ("q", "k", "v", "lr", "mom", "keep")]
    with nan_allocations():
        packed, _ = kernel(arch, *args, chunk_size=16, cu_seqlens=cu)
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        y, _ = engine(arch, *(x[:, lo:hi] for x in args), chunk_size=16)
        assert_close(f"sequence {lo}:{hi}", y, packed[:, lo:hi])


def test_memora_mixer_runs_the_kernel():
    """``memora`` with ``backend: triton`` (its default options but the chunk size and expansion, and
    momentum) against ``chunked`` in float64 (output, input and parameter gradients; the module's
    tolerance); decoding and split calls == one call."""
    kw = {"chunk_size": 8, "memory": {"expansion": 2.0}, "momentum": True}
    torch.manual_seed(0)
    kernel = memnets.build_mixer("memora", d_model=32, num_heads=2, backend="triton", **kw)
    chunked = memnets.build_mixer("memora", d_model=32, num_heads=2, backend="chunked", **kw)
    chunked.load_state_dict(kernel.state_dict())
    assert kernel.op.no_kernel("triton") is None
    x, cot = torch.randn(1, 21, 32), torch.randn(1, 21, 32)
    with nan_allocations():
        check_against_float64(chunked, kernel, x, cot, factor=2)
        check_decode_and_split("memora (triton)", kernel, x[:, :13], 5)


def test_refusals_name_the_reason():
    """The lag token only with the softmax; the softmax within the wide-state kernels' limits (no packed
    sequences where the state does not fit on chip)."""
    arch = base._arch(True, "gelu", False)
    why = triton_mlp.supports_retention(arch, None, 16, LqNormalize(), lag=True)
    assert why is not None and "lag token" in why
    wide = base._arch(True, "gelu", False, hidden=1024)
    assert triton_mlp.supports_retention(wide, None, 16, SimplexSoftmax(), lag=True) is None
    why = triton_mlp.supports_retention(wide, None, 16, SimplexSoftmax(), "packed sequences", lag=True)
    assert why is not None and "packed sequences" in why


@pytest.mark.parametrize(
    "T,chunk_size,lag,gates,split",
    [(48, 16, True, "both", None), (47, 16, False, "both", None), (33, 16, True, "keep", None),
     (36, 16, True, "both", 17), (29, 8, True, "none", None)],
)  # fmt: skip
def test_wide_kernel_matches_engine(T, chunk_size, lag, gates, split):
    """The wide-state kernels (hidden width 64 in four blocks of 16: layer 2's softmax across the blocks)
    == the float64 engine, forward and backward, in checkpoint segments of two chunks: with and without
    the lag token; T = 33 ends on a lag token (the anchor is the chunk start's weights; T = 47: the
    weights after the lag token, or the chunk start's without it); a second call right after a lag
    token; no momentum and a tail chunk. (Lengths of about three chunks: each wide-state case costs
    about 15 s of interpreter time per chunk.)"""
    _compare(T, chunk_size, lag, gates=gates, split=split, hidden_block=16, checkpoint_every=2)


def test_wide_kernel_with_layer_norm_and_a_scale():
    """The memory LayerNorm (the read's and the key paths'), a softmax scale of 3, blocks of 32."""
    _compare(40, 8, True, layer_norm=True, scale=3.0, hidden_block=32)


def test_memora_mixer_wide_state(monkeypatch):
    """``memora`` at head dim 64 (its default hidden width 256: beyond the whole-state kernels) with
    ``backend: triton`` runs the wide-state kernels and equals ``chunked`` in float64 (output, input and
    parameter gradients) within float32's ratio plus twice the float32 engine's own distance; decoding and
    split calls == one call."""
    import test_mlp_memory_wide as wide

    calls = wide._spy_hidden_blocks(monkeypatch)
    chunked, kernel = base.twin_mixers("memora", d_model=64, num_heads=1, chunk_size=16)
    assert kernel.op.no_kernel("triton") is None
    x, cot = torch.randn(1, 27, 64), torch.randn(1, 27, 64)
    with nan_allocations():
        check_against_float64(chunked, kernel, x, cot, factor=2)
        check_decode_and_split("memora (triton, wide-state)", kernel, x[:, :19], 5)
    assert calls and all(b > 0 for b in calls)
