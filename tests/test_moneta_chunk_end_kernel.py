"""Moneta's chunk-end ℓ_q map (``normalize_at="chunk_end"``, Miras arXiv 2504.13173 §5.3's parallel form)
in the whole-state MLP-memory kernels == ``miras_chunked(..., retention=ChunkEnd(LqNormalize))`` in
float64: outputs, final weights, momenta and anchor, every gradient (random cotangents on all of them),
on lengths around the chunk boundaries (the map applies at complete chunks only), both maps, with and
without momentum, chunks of two tiles, a second call from inside a chunk (finished in PyTorch), packed
sequences; and the mixer with ``backend: triton``.

Tolerance: float32's ratio plus twice the float32 engine's own distance to float64. With the ℓ_3 bias
and the map, these problems amplify round-off: the float32 engine misses float64 by up to 4e-5 in the
gradients at T = 63, the kernel by 0.3-1.5x that."""

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import test_mlp_memory as base  # the whole-state kernels' tests: same harness
import torch
from mixer_checks import check_against_float64, check_decode_and_split

import memnets
from memnets.memory.miras import ChunkEnd, LpBias, LqNormalize, miras_chunked
from memnets.testing import RATIO, assert_close, nan_allocations, rel_err

pytestmark = pytest.mark.usefixtures("kernel_device")

triton_mlp = pytest.importorskip("memnets.memory.kernel_bridge")


def _compare(T, chunk_size, map_="paper", gates="both", split=None, layer_norm=True):
    lq, bias = LqNormalize(4.0, map_, 0.1), LpBias(3.0)
    arch = base._arch(True, "gelu", layer_norm)
    ref_arch = base._arch(True, "gelu", layer_norm).double()
    inputs = base._inputs(T, torch.float32, gates)
    engine = functools.partial(miras_chunked, retention=ChunkEnd(lq))
    ref = base._run(engine, ref_arch, inputs, chunk_size, torch.float64, bias, split)
    eng32 = base._run(engine, arch, inputs, chunk_size, torch.float32, bias, split)
    kernel = functools.partial(triton_mlp.titans_mlp_chunked, end_map=lq, **base.F32_DOTS)
    with nan_allocations():
        out = base._run(kernel, arch, inputs, chunk_size, torch.float32, bias, split)
    assert ref.keys() == out.keys()
    for name in ref:
        case = f"T={T}, chunk={chunk_size}, {map_}, gates={gates}, split={split}, ln={layer_norm}"
        ratio = RATIO[torch.float32] + 2 * rel_err(ref[name], eng32[name])
        assert_close(f"{name} ({case})", ref[name], out[name], ratio=ratio)


@pytest.mark.parametrize("map_", ["paper", "unit"])
@pytest.mark.parametrize("T", [1, 16, 63, 65, 100])
def test_kernel_matches_engine(T, map_):
    _compare(T, 16, map_)


def test_kernel_without_momentum_or_layer_norm():
    _compare(40, 8, gates="keep", layer_norm=False)


def test_kernel_chunk_of_two_tiles_and_a_split_call():
    """Chunks of 128 run as two 64-row tiles (the map after the second); the second call starts
    inside a chunk."""
    _compare(150, 128, split=20)
    _compare(45, 16, "unit", split=21)


def test_kernel_packed_sequences():
    """Three sequences in one launch: each maps its own complete chunks."""
    lq, bias = LqNormalize(4.0, "paper", 0.1), LpBias(3.0)
    lengths = [20, 33, 16]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    arch = base._arch(True, "gelu", True)
    inputs = base._inputs(sum(lengths), torch.float32, "both")
    kernel = functools.partial(triton_mlp.titans_mlp_chunked, end_map=lq, **base.F32_DOTS)
    engine = functools.partial(miras_chunked, retention=ChunkEnd(lq))
    args = [inputs[n] for n in ("q", "k", "v", "lr", "mom", "keep")]
    with nan_allocations():
        packed, _ = kernel(arch, *args, chunk_size=16, bias=bias, cu_seqlens=cu)
    for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
        y, _ = engine(arch, *(x[:, lo:hi] for x in args), chunk_size=16, bias=bias)
        assert_close(f"sequence {lo}:{hi}", y, packed[:, lo:hi])


def test_moneta_mixer_runs_the_kernel():
    """``moneta`` with ``normalize_at: chunk_end`` and ``backend: triton`` against ``chunked`` in float64
    (output, input and parameter gradients; the module's tolerance); decoding and split calls == one
    call."""
    kw = {"normalize_at": "chunk_end", "chunk_size": 8, "memory": {"expansion": 2.0}}
    torch.manual_seed(0)
    kernel = memnets.build_mixer("moneta", d_model=32, num_heads=2, backend="triton", **kw)
    chunked = memnets.build_mixer("moneta", d_model=32, num_heads=2, backend="chunked", **kw)
    chunked.load_state_dict(kernel.state_dict())
    assert kernel.op.no_kernel("triton") is None
    x, cot = torch.randn(1, 21, 32), torch.randn(1, 21, 32)
    with nan_allocations():
        check_against_float64(chunked, kernel, x, cot, factor=2)
        check_decode_and_split("moneta (triton)", kernel, x[:, :13], 5)
