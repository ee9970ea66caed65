"""Memora's softmax retention in the whole-state MLP-memory kernels (Miras arXiv 2504.13173 Eq. 27:
``miras_chunked(..., retention=SimplexSoftmax, lag=...)``, :mod:`memnets.kernels.mlp_memory.simplex`) ==
the engine in float64: outputs, final logits, momenta and anchor, every gradient (random cotangents on
all of them), on lengths around the chunk boundaries, with and without the lag token (§5.3 Eq. 30-32),
with and without momentum and the memory's LayerNorm, chunks of two tiles, a second call from inside a
chunk (finished in PyTorch), packed sequences; and the ``memora`` mixer with ``backend: triton``.

The initial logits have a standard deviation of 2 (the harness draws 1/√d): with near-uniform softmax
rows every output unit averages its inputs alike, so the outputs differ across channels by about 1e-5
of their size and the LayerNorm divides that spread out, amplifying float32 rounding to 1e-5 in the
float32 engine itself (the reason Memora's memory has no LayerNorm by default, memnets.mixers.miras).
Tolerance: float32's ratio plus twice the float32 engine's own distance to float64, as for Moneta.
"""

import functools
import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import test_mlp_memory as base  # the whole-state kernels' tests: same harness
import torch
from mixer_checks import check_against_float64, check_decode_and_split

import memnets
from memnets.memory import MemoryState
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


def _compare(T, chunk_size, lag, gates="both", split=None, layer_norm=False, scale=1.0):
    retention = SimplexSoftmax(scale)
    arch = base._arch(True, "gelu", layer_norm)
    ref_arch = base._arch(True, "gelu", layer_norm).double()
    inputs = _inputs(T, gates)
    engine = functools.partial(miras_chunked, retention=retention, lag=lag)
    ref = base._run(engine, ref_arch, inputs, chunk_size, torch.float64, None, split)
    eng32 = base._run(engine, arch, inputs, chunk_size, torch.float32, None, split)
    kernel = functools.partial(triton_mlp.titans_mlp_chunked, retention=retention, lag=lag, **base.F32_DOTS)
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
    """The lag token only with the softmax; the softmax with gradients only where the state fits on chip
    (the wide-state kernels run it without)."""
    arch = base._arch(True, "gelu", False)
    why = triton_mlp.supports_retention(arch, None, 16, LqNormalize(), lag=True)
    assert why is not None and "lag token" in why
    wide = base._arch(True, "gelu", False, hidden=1024)
    why = triton_mlp.supports_retention(wide, None, 16, SimplexSoftmax(), lag=True)
    assert why is not None and "Memora's softmax retention with gradients" in why and "forward only" in why
    assert triton_mlp.supports_retention(wide, None, 16, SimplexSoftmax(), lag=True, training=False) is None
    with pytest.raises(ValueError, match="memora: backend=.triton. does not support .*softmax retention"):
        memnets.build_mixer("memora", d_model=256, num_heads=2, backend="triton")


def _forward(fn, arch, inputs, chunk_size, dtype, split=None) -> dict:
    """Outputs and final state (logits, momenta, anchor) of ``fn`` under ``torch.no_grad``, the sequence
    in one call or two (``split``)."""
    x = {n: None if t is None else t.to(dtype) for n, t in inputs.items()}
    momentum = None if x["s1"] is None else (x["s1"], x["s2"])
    state = MemoryState((x["w1"], x["w2"]), momentum)
    args = [x[n] for n in ("q", "k", "v", "lr", "mom", "keep")]
    T = args[0].shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    with torch.no_grad():
        for a, b in itertools.pairwise(cuts):
            y, state = fn(
                arch, *(None if t is None else t[:, a:b] for t in args), state, chunk_size=chunk_size
            )
            ys.append(y)
    out = {"y": torch.cat(ys, 1), "w1": state.weights[0], "w2": state.weights[1]}
    if state.momentum is not None:
        out |= {"s1": state.momentum[0], "s2": state.momentum[1]}
    if state.anchor is not None:
        out |= {"anchor1": state.anchor[0], "anchor2": state.anchor[1]}
    return out


@pytest.mark.parametrize(
    "T,chunk_size,lag,gates,split",
    [(64, 16, True, "both", None), (65, 16, True, "keep", None), (63, 16, False, "both", None),
     (29, 8, True, "none", None), (45, 16, True, "both", 17), (1, 16, True, "both", None)],
)  # fmt: skip
def test_wide_kernel_forward(T, chunk_size, lag, gates, split):
    """The wide-state forward (hidden width 64 in four blocks of 16: layer 2's softmax across the blocks,
    online) == the float64 engine: outputs, final logits, momenta and anchor, with and without the lag
    token (T = 65: the last chunk is its lag token alone, whose anchor is the chunk start's weights),
    without momentum, a tail chunk, a second call right after a lag token. Under ``torch.no_grad``: the
    wide-state softmax has no backward yet."""
    retention = SimplexSoftmax()
    inputs = _inputs(T, gates)
    arch = base._arch(True, "gelu", False)
    engine = functools.partial(miras_chunked, retention=retention, lag=lag)
    ref = _forward(engine, base._arch(True, "gelu", False).double(), inputs, chunk_size, torch.float64, split)
    eng32 = _forward(engine, arch, inputs, chunk_size, torch.float32, split)
    kernel = functools.partial(
        triton_mlp.titans_mlp_chunked, retention=retention, lag=lag, hidden_block=16, **base.F32_DOTS
    )
    with nan_allocations():
        out = _forward(kernel, arch, inputs, chunk_size, torch.float32, split)
    assert ref.keys() == out.keys()
    for name in ref:
        ratio = RATIO[torch.float32] + 2 * rel_err(ref[name], eng32[name])
        assert_close(f"{name} (T={T}, chunk={chunk_size}, lag={lag}, gates={gates}, split={split})", ref[name],
                     out[name], ratio=ratio)  # fmt: skip


def test_wide_kernel_forward_with_layer_norm_and_a_scale():
    """The memory LayerNorm on the read and the key path, a softmax scale of 3."""
    retention = SimplexSoftmax(3.0)
    inputs = _inputs(40, "both")
    arch = base._arch(True, "gelu", True)
    engine = functools.partial(miras_chunked, retention=retention, lag=True)
    ref = _forward(engine, base._arch(True, "gelu", True).double(), inputs, 8, torch.float64)
    eng32 = _forward(engine, arch, inputs, 8, torch.float32)
    kernel = functools.partial(
        triton_mlp.titans_mlp_chunked, retention=retention, lag=True, hidden_block=32, **base.F32_DOTS
    )
    with nan_allocations():
        out = _forward(kernel, arch, inputs, 8, torch.float32)
    for name in ref:
        assert_close(
            name, ref[name], out[name], ratio=RATIO[torch.float32] + 2 * rel_err(ref[name], eng32[name])
        )


def test_wide_kernel_refuses_gradients():
    """With gradients the wide-state softmax is refused by name (no backward yet)."""
    arch = base._arch(True, "gelu", False)
    inputs = _inputs(16, "both")
    args = [inputs[n] for n in ("q", "k", "v", "lr", "mom", "keep")]
    with pytest.raises(ValueError, match="Memora's softmax retention"):
        triton_mlp.titans_mlp_chunked(arch, *args, chunk_size=16, retention=SimplexSoftmax(), hidden_block=16)


def test_memora_mixer_wide_state_without_gradients(monkeypatch):
    """``memora`` at head dim 64 (its default hidden width 256: beyond the whole-state kernels) with
    ``backend: auto`` where the wide-state kernels may run (on CUDA once ``WIDE_IN_AUTO`` is on; both
    patched here): a call without gradients runs the wide-state forward and equals ``chunked`` in
    float64 (output and final weights, within float32's ratio plus twice the float32 engine's
    distance); a call with gradients runs the engine."""
    import test_mlp_memory_wide as wide

    import memnets.dispatch

    calls = wide._spy_hidden_blocks(monkeypatch)
    monkeypatch.setattr(memnets.dispatch, "triton_available", lambda device: True)
    monkeypatch.setattr(triton_mlp, "WIDE_IN_AUTO", True)
    torch.manual_seed(0)
    auto = memnets.build_mixer("memora", d_model=64, num_heads=1, backend="auto", chunk_size=16)
    chunked = memnets.build_mixer("memora", d_model=64, num_heads=1, backend="chunked", chunk_size=16)
    chunked.load_state_dict(auto.state_dict())
    x = torch.randn(1, 35, 64)
    with torch.no_grad():
        ref, own = chunked.double()(x.double()), chunked.float()(x)
        with nan_allocations():
            out = auto(x)
    assert calls and all(b > 0 for b in calls)
    pairs = [("y", ref[0], own[0], out[0])]
    pairs += [(f"w{i + 1}", *(st.memory.weights[i] for st in (ref[1], own[1], out[1]))) for i in range(2)]
    for name, r, o, k in pairs:
        assert_close(name, r, k, ratio=RATIO[torch.float32] + 2 * rel_err(r, o))
    calls.clear()
    auto(x)[0].sum().backward()
    assert not calls
