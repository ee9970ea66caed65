"""Triton kernels of the linear Titans memory == the engine's chunked PyTorch form (run in float64):
outputs, final weights/momentum/anchor and every gradient, on awkward lengths and several chunk sizes, dense
and packed (cu_seqlens: each packed sequence against the engine run on it alone)."""

import dataclasses
import functools
import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from mixer_checks import Draws, assert_all_close, check_decode_no_grad, forward_backward, with_leaf_grads

import memnets
from memnets.memory import MemoryMLP, MemoryState, memory_chunked
from memnets.testing import RATIO, assert_close, nan_allocations

# on MEMNETS_KERNEL_TEST_DEVICE (cpu: the interpreter; scripts/gpu_check.py runs them compiled on cuda)
pytestmark = pytest.mark.usefixtures("kernel_device")

triton_linear = pytest.importorskip("memnets.memory.linear_kernel")
linear_memory = pytest.importorskip("memnets.kernels.linear_memory")

H, D = 2, 16


def _arch(residual: bool) -> MemoryMLP:
    torch.manual_seed(0)
    return MemoryMLP(H, D, depth=1, residual=residual, layer_norm=False)


def _inputs(T: int, dtype: torch.dtype, gates: str, B: int = 1) -> dict[str, torch.Tensor | None]:
    draw = Draws(T)
    q, k, v = draw.qkv(B, T, H, D)
    return {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "v": v.to(dtype),
        "lr": 0.5 * draw.uniform(B, T, H),
        "mom": 0.8 + 0.2 * draw.uniform(B, T, H) if gates in ("mom", "both") else None,
        "keep": 0.9 + 0.1 * draw.uniform(B, T, H) if gates in ("keep", "both") else None,
        "w0": 0.3 * draw.normal(B, H, D, D),
        "s0": 0.3 * draw.normal(B, H, D, D) if gates in ("mom", "both") else None,
    }


def _run(fn, arch, inputs, chunk_size, compute_dtype, split=None):
    """Outputs and gradients of ``fn`` with random cotangents on y and every final-state tensor.
    ``split``: feed the sequence in two calls (exercises the state's unfinished-chunk carry)."""
    leaves = {
        n: (t.to(compute_dtype) if n in ("lr", "mom", "keep", "w0", "s0") else t).clone().requires_grad_()
        for n, t in inputs.items()
        if t is not None
    }
    state = MemoryState((leaves["w0"],), (leaves["s0"],) if "s0" in leaves else None)
    args = [leaves[n] for n in ("q", "k", "v", "lr")] + [leaves.get(n) for n in ("mom", "keep")]
    T = args[0].shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    for a, b in itertools.pairwise(cuts):
        y, state = fn(arch, *(None if x is None else x[:, a:b] for x in args), state, chunk_size=chunk_size)
        ys.append(y)
    y = torch.cat(ys, 1)
    outs = {"y": y, "weights": state.weights[0]}
    if state.momentum is not None:
        outs["momentum"] = state.momentum[0]
    if state.anchor is not None:
        outs["anchor"] = state.anchor[0]
    return with_leaf_grads(outs, leaves)


def _ratio(dtype, dot_precision):
    """Float32 operands (float32 inputs, or half ones with tf32x3 named) hold the float32 state to float32
    accuracy; ``auto`` on half inputs rounds every product's operands, the state's too, to that type."""
    return RATIO[dtype] if dtype != torch.float32 and dot_precision == "auto" else None


def _compare(T, chunk_size, gates, dtype, residual=False, split=None, dot_precision="auto"):
    arch = _arch(residual)
    ref_arch = _arch(residual).double()
    inputs = _inputs(T, dtype, gates)
    ref = _run(memory_chunked, ref_arch, inputs, chunk_size, torch.float64, split)
    fast = functools.partial(triton_linear.titans_linear_chunked, dot_precision=dot_precision)
    with nan_allocations():
        out = _run(fast, arch, inputs, chunk_size, torch.float32, split)
    assert ref.keys() == out.keys()
    for name in ref:
        # float32 results against the float64 engine, half ones against their half-rounded reference
        expected = ref[name].to(out[name].dtype)
        case = f"T={T}, chunk={chunk_size}, gates={gates}, {dtype}, {dot_precision}"
        assert_close(f"{name} ({case})", expected, out[name], _ratio(dtype, dot_precision))


@pytest.mark.parametrize("chunk_size", [16, 32])
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_matches_engine_momentum_decay_float32(T, chunk_size):
    _compare(T, chunk_size, "both", torch.float32)


@pytest.mark.parametrize("gates", ["none", "mom", "keep"])
@pytest.mark.parametrize("T,chunk_size", [(63, 16), (65, 32)])
def test_matches_engine_gates_float32(T, chunk_size, gates):
    _compare(T, chunk_size, gates, torch.float32)


@pytest.mark.parametrize("dot_precision", ["tf32x3", "auto"])
@pytest.mark.parametrize("gates", ["none", "both"])
@pytest.mark.parametrize("T,chunk_size", [(1, 16), (65, 16), (100, 32)])
def test_matches_engine_float16(T, chunk_size, gates, dot_precision):
    _compare(T, chunk_size, gates, torch.float16, dot_precision=dot_precision)


@pytest.mark.parametrize("dtype,named", [(torch.float32, "tf32x3"), (torch.float16, "float16")], ids=str)
def test_dot_precision_auto_is_the_inputs_type(dtype, named):
    """``auto`` runs exactly the named mode of the inputs' type, bit for bit (outputs, state, every
    gradient): a float16 run within float16's tolerance could also be tf32x3."""
    arch, inputs = _arch(False), _inputs(40, dtype, "both")
    with nan_allocations():
        auto, out = (
            _run(
                functools.partial(triton_linear.titans_linear_chunked, dot_precision=mode),
                arch,
                inputs,
                16,
                torch.float32,
            )
            for mode in ("auto", named)
        )
    for name in auto:
        torch.testing.assert_close(auto[name], out[name], rtol=0, atol=0, msg=name)


def test_residual_memory():
    _compare(65, 16, "both", torch.float32, residual=True)


@pytest.mark.parametrize("split", [5, 37])
def test_state_carry_mid_chunk(split):
    """A sequence fed in two calls (the first ending mid-chunk) equals the engine fed the same way."""
    _compare(70, 16, "both", torch.float32, split=split)


def test_chunk_size_64():
    _compare(70, 64, "both", torch.float32)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 2}, "memory depth 2"),
        ({"depth": 1, "layer_norm": True}, "LayerNorm"),
    ],
)
def test_unsupported_memory_raises(kwargs, match):
    arch = MemoryMLP(H, D, **kwargs)
    x = torch.randn(1, 4, H, D)
    with pytest.raises(ValueError, match=match):
        triton_linear.titans_linear_chunked(arch, x, x, x, torch.rand(1, 4, H))


def test_bad_chunk_size_raises():
    arch = _arch(False)
    x = torch.randn(1, 4, H, D)
    with pytest.raises(ValueError, match="chunk_size must be one of"):
        triton_linear.titans_linear_chunked(arch, x, x, x, torch.rand(1, 4, H), chunk_size=8)
    with pytest.raises(ValueError, match="titans_linear_chunked: q, k, v must share the shape"):
        triton_linear.titans_linear_chunked(arch, x, x[:, :3], x, torch.rand(1, 4, H), chunk_size=16)


def _linear_titans(backend: str, name: str = "titans", **opts):
    torch.manual_seed(0)
    if name == "titans_mac":
        opts["segment_size"] = 32
    opts = {"memory": {"depth": 1, "norm": False}, **opts}
    return memnets.build_mixer(name, d_model=32, num_heads=2, chunk_size=16, backend=backend, **opts)


@pytest.mark.parametrize("name", ["titans", "titans_mac"])
def test_mixer_triton_backend_equals_chunked(name):
    """The mixer with backend='triton' (linear memory) equals backend='chunked': output, input and
    every parameter gradient, the final state and its gradient."""
    chunked, fast = _linear_titans("chunked", name), _linear_titans("triton", name)
    fast.load_state_dict(chunked.state_dict())
    x = torch.randn(1, 21, 32)
    with nan_allocations():
        assert_all_close(forward_backward(chunked, x), forward_backward(fast, x))


def test_mixer_triton_decode_equals_forward():
    check_decode_no_grad(_linear_titans("triton"), torch.randn(1, 18, 32))


def test_mixer_triton_unsupported_config_raises():
    with pytest.raises(ValueError, match="backend='triton' does not support a memory LayerNorm"):
        memnets.build_mixer("titans", d_model=32, num_heads=2, memory={"depth": 1}, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' does not support chunk_size 4"):
        memnets.build_mixer(
            "titans",
            d_model=32,
            num_heads=2,
            memory={"depth": 1, "norm": False},
            chunk_size=4,
            backend="triton",
        )
    # auto falls back to the engine where the kernel does not apply (depth 2 here)
    y, _ = memnets.build_mixer("titans", d_model=32, num_heads=2, backend="auto")(torch.randn(1, 5, 32))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("momentum", [True, False])
def test_custom_op_opcheck(momentum):
    """Schema, fake (meta) implementation and autograd registration of the custom ops (two packed
    sequences of 20 and 5 tokens: 3 chunks of 16)."""
    T, L, N, NC = 25, 16, 2, 3
    cu, chunk_offsets = (
        torch.tensor([0, 20, 25], dtype=torch.int32),
        torch.tensor([0, 2, 3], dtype=torch.int32),
    )
    q, k, v = (torch.randn(T, H, D) for _ in range(3))
    beta, G = torch.rand(H, NC, L), torch.rand(H, NC, L, L)
    w0 = torch.randn(N, H, D, D, requires_grad=True)
    if momentum:
        f, m_end, s_coef = torch.rand(H, NC, L), torch.rand(H, NC), torch.rand(H, NC, L)
        s0 = torch.randn(N, H, D, D, requires_grad=True)
    else:
        f = m_end = s_coef = torch.zeros(0)
        s0 = None
    args = (
        q.requires_grad_(),
        k,
        v,
        beta.requires_grad_(),
        f,
        G,
        m_end,
        s_coef,
        w0,
        s0,
        cu,
        chunk_offsets,
        L,
        0,  # dot_code: tf32x3
    )
    torch.library.opcheck(
        linear_memory.linear_memory_fwd,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    square = torch.randn(N, H, D, D)
    cotangents = (torch.randn(T, H, D), square, square if momentum else torch.zeros(0), square)
    bwd_args = (*(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-2]), *cotangents, L, 0)
    torch.library.opcheck(
        linear_memory.linear_memory_bwd, bwd_args, test_utils=("test_schema", "test_faketensor")
    )


def test_shared_memory_limit_raises():
    """D=128 with chunk 64 needs more shared memory than an H100 has (measured on the sm_90 compile)."""
    arch = MemoryMLP(1, 128, depth=1, layer_norm=False)
    assert triton_linear.supports_linear(arch, chunk_size=32) is None
    x = torch.randn(1, 4, 1, 128)
    with pytest.raises(ValueError, match="head dim 128 with chunk_size 64"):
        triton_linear.titans_linear_chunked(arch, x, x, x, torch.rand(1, 4, 1), chunk_size=64)


# -------------------------------------------------------------------------------------------------
# packed sequences (cu_seqlens): the kernels on N sequences at once == the engine on each sequence alone


def _varlen_outputs(y: torch.Tensor, states: list[MemoryState]) -> dict[str, torch.Tensor]:
    outs = {"y": y}
    for n, st in enumerate(states):
        outs[f"weights[{n}]"] = st.weights[0]
        if st.momentum is not None:
            outs[f"momentum[{n}]"] = st.momentum[0]
        if st.anchor is not None:
            outs[f"anchor[{n}]"] = st.anchor[0]
        outs[f"offset[{n}]"] = torch.tensor(float(st.offset))
    return outs


def _run_varlen(packed: bool, arch, inputs, lengths, chunk_size, compute_dtype, dot_precision="auto"):
    """Outputs and every gradient with random cotangents on y and on each sequence's final state;
    ``packed``: one call with cu_seqlens, else the engine sequence by sequence."""
    leaves = {
        n: (t.to(compute_dtype) if n in ("lr", "mom", "keep", "w0", "s0") else t).clone().requires_grad_()
        for n, t in inputs.items()
        if t is not None
    }
    args = [leaves[n] for n in ("q", "k", "v", "lr")] + [leaves.get(n) for n in ("mom", "keep")]
    w0, s0 = leaves["w0"], leaves.get("s0")
    if packed:
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        state = MemoryState((w0,), None if s0 is None else (s0,))
        y, states = triton_linear.titans_linear_chunked(
            arch, *args, state, chunk_size=chunk_size, cu_seqlens=cu, dot_precision=dot_precision
        )
    else:
        ys, states, start = [], [], 0
        for n, length in enumerate(lengths):
            sl = slice(start, start + length)
            state = MemoryState((w0[n : n + 1],), None if s0 is None else (s0[n : n + 1],))
            y, st = memory_chunked(
                arch, *(None if x is None else x[:, sl] for x in args), state, chunk_size=chunk_size
            )
            ys.append(y)
            states.append(st)
            start += length
        y = torch.cat(ys, 1)
    return with_leaf_grads(_varlen_outputs(y, states), leaves)  # the offsets: constants, no gradient


def _compare_varlen(lengths, chunk_size, gates, dtype, residual=False, dot_precision="auto"):
    N, T = len(lengths), sum(lengths)
    inputs = _inputs(T, dtype, gates)
    g = torch.Generator(device=torch.get_default_device()).manual_seed(2)
    inputs["w0"] = 0.3 * torch.randn(N, H, D, D, generator=g, dtype=torch.float64)
    if inputs["s0"] is not None:
        inputs["s0"] = 0.3 * torch.randn(N, H, D, D, generator=g, dtype=torch.float64)
    ref = _run_varlen(False, _arch(residual).double(), inputs, lengths, chunk_size, torch.float64)
    with nan_allocations():
        out = _run_varlen(True, _arch(residual), inputs, lengths, chunk_size, torch.float32, dot_precision)
    assert ref.keys() == out.keys()
    for name in ref:
        expected = ref[name].to(out[name].dtype)
        case = f"lengths={lengths}, chunk={chunk_size}, gates={gates}, {dtype}, {dot_precision}"
        assert_close(f"{name} ({case})", expected, out[name], _ratio(dtype, dot_precision))


@pytest.mark.parametrize("chunk_size", [16, 32, 64])
def test_varlen_matches_engine_per_sequence(chunk_size):
    _compare_varlen([1, 63, 65, 17], chunk_size, "both", torch.float32)


@pytest.mark.parametrize("gates", ["none", "mom", "keep"])
def test_varlen_gates_float32(gates):
    _compare_varlen([17, 1, 40], 16, gates, torch.float32)


@pytest.mark.parametrize("dot_precision", ["tf32x3", "auto"])
@pytest.mark.parametrize("gates", ["none", "both"])
def test_varlen_float16(gates, dot_precision):
    _compare_varlen([1, 63, 65, 17], 16, gates, torch.float16, dot_precision=dot_precision)


def test_varlen_empty_sequences_and_residual():
    """Empty sequences keep their initial state (weights, momentum and its gradient)."""
    _compare_varlen([0, 33, 0, 16], 16, "both", torch.float32, residual=True)


def test_dense_batch_matches_engine():
    """B > 1 without cu_seqlens: each batch row is its own sequence."""
    arch, ref_arch = _arch(False), _arch(False).double()
    inputs = _inputs(37, torch.float32, "both", B=3)
    ref = _run(memory_chunked, ref_arch, inputs, 16, torch.float64)
    with nan_allocations():
        out = _run(triton_linear.titans_linear_chunked, arch, inputs, 16, torch.float32)
    for name in ref:
        assert_close(f"{name} (B=3)", ref[name].to(out[name].dtype), out[name])


def test_varlen_bad_input_raises():
    arch = _arch(False)
    x = torch.randn(1, 10, H, D)
    lr = torch.rand(1, 10, H)
    with pytest.raises(ValueError, match="cu_seqlens must be 1-D integer offsets from 0 to T"):
        triton_linear.titans_linear_chunked(arch, x, x, x, lr, cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="non-decreasing"):
        triton_linear.titans_linear_chunked(arch, x, x, x, lr, cu_seqlens=torch.tensor([0, 6, 4, 10]))
    with pytest.raises(ValueError, match=r"state's weights must have shape \[2, 2, 16, 16\]"):
        state = MemoryState((torch.zeros(1, H, D, D),))
        triton_linear.titans_linear_chunked(
            arch, x, x, x, lr, None, None, state, cu_seqlens=torch.tensor([0, 4, 10])
        )
    state = MemoryState((torch.zeros(2, H, D, D),), None, (torch.zeros(2, H, D, D),), 3)
    with pytest.raises(ValueError, match="at a chunk boundary"):
        triton_linear.titans_linear_chunked(
            arch, x, x, x, lr, None, None, state, cu_seqlens=torch.tensor([0, 4, 10])
        )


def _flatten(state, prefix: str = "state") -> dict[str, object]:
    """Every tensor and int of a (nested) mixer state, by path."""
    if isinstance(state, torch.Tensor | int):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, tuple | list):
        items = enumerate(state)
    elif dataclasses.is_dataclass(state):
        items = ((f.name, getattr(state, f.name)) for f in dataclasses.fields(state))
    else:
        return {prefix: state}
    out = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}.{key}"))
    return out


@pytest.mark.parametrize(
    "name,lengths,depth",
    [
        ("titans", [1, 20, 17, 2], 1),
        ("titans", [16, 21], 1),
        ("titans_mag", [5, 20, 2], 1),
        ("titans_mal", [5, 20, 3], 1),
        ("titans", [1, 20, 17, 2], 2),
        ("titans_mag", [5, 20, 2], 2),
    ],
)
def test_mixer_triton_packed_equals_chunked(name, lengths, depth):
    """titans (and MAG, MAL) with backend='triton' run packed sequences in one kernel call (the linear
    memory's kernel at depth 1, the MLP memory's at depth 2, its default with residual + LayerNorm);
    backend='chunked' runs them one by one: same output, input and parameter gradients, and the same
    (last sequence's) state: memory, conv and, for the hybrids, a sliding window's KV cache."""
    opts = {"window": 4, "num_persistent": 2} if name != "titans" else {}
    if depth == 2:  # small inner steps: a well-conditioned comparison (tests/test_mlp_memory.py)
        opts.update(memory={"depth": 2, "norm": True}, lr_max=0.02)
    chunked, fast = _linear_titans("chunked", name, **opts), _linear_titans("triton", name, **opts)
    fast.load_state_dict(chunked.state_dict())
    T = sum(lengths)
    cu = torch.tensor([0, *itertools.accumulate(lengths)])
    x, cot = torch.randn(1, T, 32), torch.randn(1, T, 32)
    results = []
    for m in (chunked, fast):
        xi = x.clone().requires_grad_()
        with nan_allocations():
            y, state = m(xi, cu_seqlens=cu)
            (y * cot).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}, _flatten(state)))
    (y0, dx0, grads0, st0), (y1, dx1, grads1, st1) = results
    assert_close("y", y0, y1)
    assert_close("dx", dx0, dx1)
    for n, g in grads0.items():
        assert_close(f"d{n}", g, grads1[n])
    assert st0.keys() == st1.keys()
    assert any(k.endswith("offset") and v == lengths[-1] % 16 for k, v in st1.items())
    for key, ref in st0.items():
        if isinstance(ref, torch.Tensor):
            assert_close(key, ref.detach(), st1[key].detach())
        else:
            assert ref == st1[key], key


def test_mixer_packed_with_state_raises():
    mixer = _linear_titans("triton")
    x = torch.randn(1, 8, 32)
    _, state = mixer(x)
    with pytest.raises(ValueError, match="cu_seqlens cannot be combined with a recurrent state"):
        mixer(x, state, cu_seqlens=torch.tensor([0, 3, 8]))
