"""Triton kernels of the deep (two-layer MLP) Titans memory == the engine's chunked PyTorch form (run in
float64): outputs, final weights/momenta/anchor and every gradient, on awkward lengths, several chunk
sizes, with and without momentum and decay, residual on and off, each activation and bias.

On CPU the kernels run in Triton's interpreter. On a GPU the same tests run the compiled kernels:

    MEMNETS_KERNEL_TEST_DEVICE=cuda TRITON_INTERPRET=0 pytest tests/test_mlp_memory.py \
        tests/test_mlp_memory_wide.py

(every tensor and module is then made on that device; the bfloat16-operand test runs only there)."""

import functools
import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from mixer_checks import (
    KERNEL_DEVICE,
    Draws,
    assert_all_close,
    check_decode_no_grad,
    forward_backward,
    with_leaf_grads,
)

import memnets
from memnets.memory import MemoryMLP, MemoryState, memory_chunked, memory_reference
from memnets.memory.chunk_read import chunk_read_memory
from memnets.memory.miras import HuberBias, LpBias
from memnets.memory.omega import OmegaState, omega_chunked
from memnets.testing import RATIO, assert_close, nan_allocations

triton_mlp = pytest.importorskip("memnets.memory.kernel_bridge")
mlp_memory = pytest.importorskip("memnets.kernels.mlp_memory")
ops = pytest.importorskip("memnets.kernels.mlp_memory.ops")

H, D = 2, 16
DEVICE = KERNEL_DEVICE
pytestmark = pytest.mark.usefixtures("kernel_device")


def _arch(
    residual: bool = False, activation: str = "gelu", layer_norm: bool = False, hidden: int = 4 * D
) -> MemoryMLP:
    torch.manual_seed(0)
    arch = MemoryMLP(
        H, D, depth=2, expansion=hidden / D, activation=activation, residual=residual, layer_norm=layer_norm
    )  # type: ignore[arg-type]
    if layer_norm:  # away from the identity affine, so its gradients are tested
        with torch.no_grad():
            arch.norm_weight.copy_(1 + 0.3 * torch.randn(H, D))
            arch.norm_bias.copy_(0.2 * torch.randn(H, D))
    return arch


def _inputs(
    T: int, dtype: torch.dtype, gates: str, bias: object = None, B: int = 1
) -> dict[str, torch.Tensor | None]:
    draw = Draws(T, DEVICE)
    rnd, unit = draw.normal, draw.uniform
    Dh = 4 * D
    q, k, v = draw.qkv(B, T, H, D)
    bp = None
    if isinstance(bias, HuberBias):
        # thresholds around the residual's size, so both branches of the switch are taken
        shape = (B, T, H) if bias.mode == "norm" else (B, T, H, D)
        bp = (4.0 if bias.mode == "norm" else 0.6) * (0.5 + unit(*shape))
    return {
        "q": q.to(dtype),
        "k": k.to(dtype),
        "v": v.to(dtype),
        # Small inner steps keep the test problems well conditioned: with larger ones the deep
        # memory's inner loop amplifies rounding (at lr <= 0.1, perturbing the inputs by 1e-7
        # moved the float64 engine's gradients by up to 6e-5, more than float32's 1e-5 tolerance; at
        # lr <= 0.03 every case here moves by <= 3e-6)
        "lr": 0.03 * unit(B, T, H),
        "mom": 0.5 + 0.4 * unit(B, T, H) if gates in ("mom", "both") else None,
        "keep": 0.97 + 0.03 * unit(B, T, H) if gates in ("keep", "both") else None,
        "bp": bp,
        "w1": rnd(B, H, D, Dh) * D**-0.5,
        "w2": rnd(B, H, Dh, D) * Dh**-0.5,
        "s1": 0.1 * rnd(B, H, D, Dh) if gates in ("mom", "both") else None,
        "s2": 0.1 * rnd(B, H, Dh, D) if gates in ("mom", "both") else None,
    }


def _draw_initial_states(inputs: dict, draw: Draws, N: int) -> None:
    """Give each of N packed sequences its own initial weights (and momenta, where ``inputs`` has them)."""
    Dh = 4 * D
    inputs["w1"], inputs["w2"] = draw.normal(N, H, D, Dh) * D**-0.5, draw.normal(N, H, Dh, D) * Dh**-0.5
    if inputs["s1"] is not None:
        inputs["s1"], inputs["s2"] = 0.1 * draw.normal(N, H, D, Dh), 0.1 * draw.normal(N, H, Dh, D)


def _each_sequence(bounds: list[int], one) -> tuple[torch.Tensor, list]:
    """``one(n, lo, hi)`` -> (y, state) run on each packed sequence alone: the reads joined, the states."""
    ys, states = [], []
    for n, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        y, state = one(n, lo, hi)
        ys.append(y)
        states.append(state)
    return torch.cat(ys, 1), states


FLOAT = ("lr", "mom", "keep", "bp", "w1", "w2", "s1", "s2")


def _run(fn, arch, inputs, chunk_size, compute_dtype, bias=None, split=None):
    """Outputs and gradients of ``fn`` with random cotangents on y and every final-state tensor.
    ``split``: feed the sequence in two calls (exercises the state's unfinished-chunk carry)."""
    leaves = {
        n: (t.to(compute_dtype) if n in FLOAT else t).clone().requires_grad_()
        for n, t in inputs.items()
        if t is not None
    }
    momentum = (leaves["s1"], leaves["s2"]) if "s1" in leaves else None
    state = MemoryState((leaves["w1"], leaves["w2"]), momentum)
    args = [leaves[n] for n in ("q", "k", "v", "lr")] + [leaves.get(n) for n in ("mom", "keep")]
    bp = leaves.get("bp")
    T = args[0].shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    for a, b in itertools.pairwise(cuts):
        y, state = fn(
            arch,
            *(None if x is None else x[:, a:b] for x in args),
            state,
            chunk_size=chunk_size,
            bias=bias,
            bias_params=None if bp is None else bp[:, a:b],
        )
        ys.append(y)
    outs = {"y": torch.cat(ys, 1)}
    outs.update({f"w{i + 1}": w for i, w in enumerate(state.weights)})
    if state.momentum is not None:
        outs.update({f"s{i + 1}": s for i, s in enumerate(state.momentum)})
    if state.anchor is not None:
        outs.update({f"anchor{i + 1}": w for i, w in enumerate(state.anchor)})
    if arch.layer_norm:
        leaves.update(ln_w=arch.norm_weight, ln_b=arch.norm_bias)
    return with_leaf_grads(outs, leaves)


# float32 operands, named: the half-input tests hold the float32 state to float32 accuracy, where
# dot_precision="auto" would round the operands to the inputs' half type (test_reduced_precision_dots
# and test_dot_precision_auto_follows_the_inputs test that mode)
F32_DOTS = {"dot_precision": "tf32x3"}


def _compare(
    T,
    chunk_size,
    gates="both",
    dtype=torch.float32,
    residual=False,
    activation="gelu",
    bias=None,
    split=None,
    layer_norm=False,
    **kernel_options,
):
    arch = _arch(residual, activation, layer_norm)
    ref_arch = _arch(residual, activation, layer_norm).double()
    inputs = _inputs(T, dtype, gates, bias)
    ref = _run(memory_chunked, ref_arch, inputs, chunk_size, torch.float64, bias, split)
    with nan_allocations():
        fn = functools.partial(triton_mlp.titans_mlp_chunked, **{**F32_DOTS, **kernel_options})
        out = _run(fn, arch, inputs, chunk_size, torch.float32, bias, split)
    assert ref.keys() == out.keys()
    for name in ref:
        # float32 results against the float64 engine, half ones against their half-rounded reference
        expected = ref[name].to(out[name].dtype)
        case = f"T={T}, chunk={chunk_size}, gates={gates}, {dtype}, res={residual}, ln={layer_norm}, {activation}, {bias}, {kernel_options}"
        assert_close(f"{name} ({case})", expected, out[name])


@pytest.mark.parametrize("T,chunk_size", [(1, 16), (17, 8), (63, 16), (65, 32), (40, 64), (100, 16)])
def test_matches_engine_momentum_decay_float32(T, chunk_size):
    _compare(T, chunk_size)


@pytest.mark.parametrize("gates", ["none", "mom", "keep"])
def test_matches_engine_gates_float32(gates):
    _compare(33, 16, gates)


@pytest.mark.parametrize("gates", ["none", "both"])
@pytest.mark.parametrize("T,chunk_size", [(1, 16), (37, 16)])
def test_matches_engine_float16(T, chunk_size, gates):
    _compare(T, chunk_size, gates, torch.float16)


@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_activations(activation):
    _compare(21, 8, activation=activation)


def test_residual_memory():
    _compare(27, 8, residual=True)


def test_odd_chunk_size():
    """Chunk sizes below the 16-row tile and not powers of two are padded inside the kernels."""
    _compare(23, 5)


@pytest.mark.parametrize("split", [3, 20])
def test_state_carry_mid_chunk(split):
    """A sequence fed in two calls (the first ending mid-chunk) equals the engine fed the same way."""
    _compare(30, 8, split=split)


def test_state_carry_mid_chunk_with_bias_params():
    """The unfinished chunk is completed by the engine with its slice of the Huber thresholds."""
    _compare(30, 8, split=5, residual=True, layer_norm=True, bias=HuberBias(mode="coord"))


def test_long_tail_chunk():
    _compare(100, 32)


@pytest.mark.parametrize(
    "T,chunk_size,gates",
    [(100, 128, "both"), (70, 96, "mom"), (65, 256, "keep"), (1, 128, "none"), (63, 80, "both")],
)
def test_chunks_larger_than_a_tile(T, chunk_size, gates):
    """Chunks beyond the 64-row tile run as several tiles whose key path stays at the chunk-start
    weights (chunk 80 = 2 tiles of 40, 96 = 2 x 48, 128 = 2 x 64, 256 = 4 x 64)."""
    _compare(T, chunk_size, gates, residual=True, layer_norm=True)


def test_chunk_split_into_tiles_with_bias_and_carry():
    """A state that does not fit a 64-row tile splits chunk 64 into 2 tiles of 32; the sequence is
    fed in two calls, the first ending inside a tile of the second chunk."""
    assert mlp_memory.tile(64, 32 * 128) == 32
    _compare(90, 128, split=75, bias=HuberBias(mode="norm"), residual=True)


@pytest.mark.parametrize(
    "T,chunk_size,every", [(100, 16, 1), (100, 16, 3), (130, 128, 1), (40, 8, 2), (37, 16, 100)]
)
def test_checkpoint_segments(T, chunk_size, every):
    """The backward recomputes chunk-start states from checkpoints every ``every`` chunks (1: a
    checkpoint per chunk; more than the chunks: one segment) and matches the engine."""
    _compare(T, chunk_size, "both", checkpoint_every=every, residual=True)


def test_checkpoint_segments_do_not_change_results():
    """Every segment length gives the same numbers: the recompute from a checkpoint is the forward's
    own arithmetic (only the LayerNorm parameters' per-segment partial sums are added in another order)."""
    arch = _arch(layer_norm=True)
    inputs = _inputs(100, torch.float32, "both")
    runs = []
    for every in (1, 3, 100):
        fn = functools.partial(triton_mlp.titans_mlp_chunked, checkpoint_every=every)
        with nan_allocations():
            runs.append(_run(fn, arch, inputs, 16, torch.float32))
    for other in runs[1:]:
        for name, ref in runs[0].items():
            # dln: a float32 sum of per-segment partials, reordered: a few ulp apart
            rtol = 1e-5 if name.startswith("dln") else 0.0
            torch.testing.assert_close(other[name], ref, rtol=rtol, atol=0.0)


def _state_outputs(prefix: str, mem: MemoryState) -> dict[str, torch.Tensor]:
    """A memory state's tensors by name: weights, momenta, anchor."""
    outs = {f"{prefix}.w{i}": w for i, w in enumerate(mem.weights)}
    outs.update({f"{prefix}.s{i}": s for i, s in enumerate(mem.momentum or ())})
    outs.update({f"{prefix}.anchor{i}": a for i, a in enumerate(mem.anchor or ())})
    return outs


def _assert_kernel_matches_reference(run, label: str) -> None:
    """``run(True)`` (the kernel, fresh allocations NaN-filled) == ``run(False)`` (float64 reference),
    result by result."""
    ref = run(False)
    with nan_allocations():
        out = run(True)
    assert ref.keys() == out.keys()
    for name in ref:
        assert_close(f"{name} ({label})", ref[name].float(), out[name])


@pytest.mark.parametrize(
    "chunk_size,every,layer_norm,bias",
    [
        (16, None, True, None),
        (8, 1, False, None),
        (96, None, False, None),
        (40, 2, True, None),
        (16, None, False, HuberBias(mode="norm")),
        (8, 2, True, HuberBias(mode="coord")),
    ],
)
def test_packed_sequences_match_engine_per_sequence(chunk_size, every, layer_norm, bias):
    """cu_seqlens: all sequences in one launch (each from its own state, chunks restarting at its first
    token) == the float64 engine run on every sequence alone: outputs, every sequence's final weights,
    momenta and anchor, and every gradient (the stacked initial states' and the packed Huber
    thresholds' included). Lengths 0 and 1, ones shorter and longer than a chunk; chunk 96 runs as 2
    tiles of 48, chunk 40 as 1 tile of 40."""
    lengths = [5, 0, 37, 16, 1, 50]
    N, T = len(lengths), sum(lengths)
    arch = _arch(residual=True, layer_norm=layer_norm)
    ref_arch = _arch(residual=True, layer_norm=layer_norm).double()
    inputs = _inputs(T, torch.float32, "both", bias)
    _draw_initial_states(inputs, Draws(3, DEVICE), N)
    bounds = [0, *itertools.accumulate(lengths)]

    def run(fast: bool) -> dict[str, torch.Tensor]:
        dtype = torch.float32 if fast else torch.float64
        a = arch if fast else ref_arch
        leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in inputs.items() if t is not None}
        gates = [leaves[n] for n in ("q", "k", "v", "lr", "mom", "keep")]
        bp = leaves.get("bp")
        if fast:
            state = MemoryState((leaves["w1"], leaves["w2"]), (leaves["s1"], leaves["s2"]))
            y, states = triton_mlp.titans_mlp_chunked(
                a, *gates, state, chunk_size=chunk_size, checkpoint_every=every, bias=bias, bias_params=bp,
                cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
            )  # fmt: skip
        else:

            def one(n: int, lo: int, hi: int) -> tuple[torch.Tensor, MemoryState]:
                st = MemoryState(
                    tuple(leaves[w][n : n + 1] for w in ("w1", "w2")),
                    tuple(leaves[w][n : n + 1] for w in ("s1", "s2")),
                )
                return memory_chunked(
                    a, *(x[:, lo:hi] for x in gates), st, chunk_size=chunk_size, bias=bias,
                    bias_params=None if bp is None else bp[:, lo:hi],
                )  # fmt: skip

            y, states = _each_sequence(bounds, one)
        outs = {"y": y}
        for n, st in enumerate(states):
            outs.update(_state_outputs(f"seq{n}", st))
        if layer_norm:
            leaves.update(ln_w=a.norm_weight, ln_b=a.norm_bias)
        return with_leaf_grads(outs, leaves)

    _assert_kernel_matches_reference(run, f"packed, chunk={chunk_size}, every={every}")


@pytest.mark.parametrize(
    "window,chunk_size,carried,gates",
    [(3, 16, 2, "both"), (5, 8, 0, "none"), (2, 96, 1, "keep"), (4, 16, 1, "mom")],
)
def test_packed_omega_matches_engine_per_sequence(window, chunk_size, carried, gates):
    """The Omega window with cu_seqlens: all sequences in one launch == the float64 ``omega_chunked``
    on every sequence alone (outputs, each sequence's final weights, momenta, anchor and window rows,
    every gradient: the stacked initial states' and carried rows' included). A sequence's window never
    reaches into the one before it; its carried rows (``carried`` of them, from its own state) lead
    it. Lengths 0 and 1, shorter and longer than a chunk; chunk 96 runs as 2 tiles of 48."""
    lengths = [5, 0, 37, 16, 1, 30]
    N, T = len(lengths), sum(lengths)
    arch, ref_arch = _arch(residual=True, layer_norm=True), _arch(residual=True, layer_norm=True).double()
    inputs = _inputs(T, torch.float32, gates)
    draw = Draws(5, DEVICE)
    _draw_initial_states(inputs, draw, N)
    inputs["gam"] = 0.5 + 0.5 * draw.uniform(1, T, H, window)
    for name in ("wk", "wv"):
        inputs[name] = 0.3 * draw.normal(N, carried, H, D)
    bounds = [0, *itertools.accumulate(lengths)]

    def run(fast: bool) -> dict[str, torch.Tensor]:
        dtype = torch.float32 if fast else torch.float64
        a = arch if fast else ref_arch
        leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in inputs.items() if t is not None}
        args = [leaves.get(n) for n in ("q", "k", "v", "lr", "mom", "keep", "gam")]
        momentum = (leaves["s1"], leaves["s2"]) if "s1" in leaves else None
        state = OmegaState(MemoryState((leaves["w1"], leaves["w2"]), momentum), leaves["wk"], leaves["wv"])
        if fast:
            y, states = triton_mlp.omega_mlp_chunked(
                a, *args, state, window=window, chunk_size=chunk_size,
                cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
            )  # fmt: skip
        else:

            def one(n: int, lo: int, hi: int) -> tuple[torch.Tensor, OmegaState]:
                sl = slice(n, n + 1)
                mem = MemoryState(
                    tuple(w[sl] for w in state.memory.weights),
                    None if momentum is None else tuple(s[sl] for s in momentum),
                )
                return omega_chunked(
                    a, *(None if x is None else x[:, lo:hi] for x in args),
                    OmegaState(mem, state.window_k[sl], state.window_v[sl]),
                    window=window, chunk_size=chunk_size,
                )  # fmt: skip

            y, states = _each_sequence(bounds, one)
        outs = {"y": y}
        for n, st in enumerate(states):
            outs.update(_state_outputs(f"seq{n}", st.memory))
            outs.update({f"seq{n}.window_k": st.window_k, f"seq{n}.window_v": st.window_v})
            assert st.memory.offset == lengths[n] % chunk_size
        leaves.update(ln_w=a.norm_weight, ln_b=a.norm_bias)
        return with_leaf_grads(outs, leaves)

    _assert_kernel_matches_reference(run, f"packed omega, window={window}, chunk={chunk_size}")


def test_packed_sequences_errors():
    arch = _arch()
    x = torch.randn(1, 10, H, D)
    with pytest.raises(ValueError, match="cu_seqlens must be 1-D integer offsets from 0 to T"):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 10, H), cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match=r"one entry per packed sequence \(2\)"):
        state = MemoryState(tuple(w[None].expand(3, *w.shape) for w in arch.init_weights), None)
        triton_mlp.titans_mlp_chunked(
            arch, x, x, x, torch.rand(1, 10, H), state=state, cu_seqlens=torch.tensor([0, 4, 10])
        )
    # the Omega variant: the same checks, and a state in the middle of a chunk
    rows = torch.zeros(3, 1, H, D)
    omega_state = OmegaState(state, rows, rows)
    with pytest.raises(
        ValueError, match=r"omega_mlp_chunked: the state must hold one entry per packed sequence \(2\)"
    ):
        triton_mlp.omega_mlp_chunked(
            arch,
            x,
            x,
            x,
            torch.rand(1, 10, H),
            state=omega_state,
            window=2,
            cu_seqlens=torch.tensor([0, 4, 10]),
        )
    with pytest.raises(
        ValueError, match="omega_mlp_chunked: with cu_seqlens the state must be at a chunk boundary"
    ):
        mid = OmegaState(MemoryState(state.weights, None, state.weights, 3), rows, rows)
        triton_mlp.omega_mlp_chunked(
            arch, x, x, x, torch.rand(1, 10, H), state=mid, window=2, cu_seqlens=torch.tensor([0, 4, 10])
        )


GPU_ONLY = pytest.mark.skipif(
    DEVICE.type != "cuda", reason="the interpreter computes tf32 in float32 and mishandles bfloat16 dots"
)


@pytest.mark.parametrize(
    "precision,tolerance",
    [
        ("float16", torch.float16),
        pytest.param("tf32", torch.float16, marks=GPU_ONLY),  # 10 mantissa bits, as float16
        pytest.param("bfloat16", torch.bfloat16, marks=GPU_ONLY),
    ],
)
@pytest.mark.parametrize("kernel", ["on chip", "wide"])
def test_reduced_precision_dots(kernel, precision, tolerance):
    """dot_precision below float32 (the matmul operands rounded, accumulated in float32, as on a GPU's
    tensor cores) stays within that precision's tolerance of the float64 engine, on chip and in the
    wide-state kernels."""
    fast = functools.partial(
        triton_mlp.titans_mlp_chunked,
        dot_precision=precision,
        hidden_block=16 if kernel == "wide" else None,
    )
    arch, ref_arch = _arch(residual=True, layer_norm=True), _arch(residual=True, layer_norm=True).double()
    inputs = _inputs(37, torch.float16, "both")
    ref = _run(memory_chunked, ref_arch, inputs, 16, torch.float64)
    with nan_allocations():
        out = _run(fast, arch, inputs, 16, torch.float32)
    for name in ref:
        assert_close(f"{name} ({precision} dots, {kernel})", ref[name], out[name], ratio=RATIO[tolerance])
    with pytest.raises(ValueError, match="dot_precision='fp8' is not one of"):
        triton_mlp.titans_mlp_chunked(
            arch, *(inputs[n].float() for n in ("q", "k", "v", "lr")), dot_precision="fp8"
        )


def test_dot_precision_auto_follows_the_inputs():
    """``dot_precision="auto"`` (the default) runs half operands for half inputs and tf32x3 for float32
    ones: outputs, final state and every gradient equal, bit for bit, those of naming the mode; under
    autocast the autocast type decides, even for a float32 ``q`` (normalised outside autocast)."""
    arch = _arch(residual=True, layer_norm=True)
    for dtype, mode in ((torch.float16, "float16"), (torch.float32, "tf32x3")):
        inputs = _inputs(37, dtype, "both")
        with nan_allocations():
            auto = _run(triton_mlp.titans_mlp_chunked, arch, inputs, 16, torch.float32)
            named = _run(
                functools.partial(triton_mlp.titans_mlp_chunked, dot_precision=mode),
                arch, inputs, 16, torch.float32,
            )  # fmt: skip
        for name in named:
            torch.testing.assert_close(auto[name], named[name], rtol=0, atol=0, msg=f"{name} ({mode})")
    resolve = triton_mlp.resolve_dot_precision
    assert [resolve("auto", t) for t in (torch.bfloat16, torch.float16, torch.float32, torch.float64)] == [
        "bfloat16",
        "float16",
        "tf32x3",
        "tf32x3",
    ]
    assert resolve("tf32", torch.bfloat16) == "tf32"  # a named mode is kept
    q = torch.zeros(1, 2, 1, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert triton_mlp._dot_precision("f", "auto", q) == "bfloat16"
    assert triton_mlp._dot_precision("f", "auto", q) == "tf32x3"


def _as_memory_call(read_fn, **options):
    """A chunk-start-read function with the engine's signature (no momentum or decay gates)."""

    def run(arch, q, k, v, lr, mom, keep, state, *, chunk_size, bias=None, bias_params=None):
        assert mom is None and keep is None and bias_params is None
        return read_fn(arch, q, k, v, lr, state, chunk_size=chunk_size, bias=bias, **options)

    return run


@pytest.mark.parametrize(
    "T,chunk_size,split,every",
    [
        (1, 16, None, None),
        (100, 32, None, None),
        (130, 128, None, 1),
        (90, 32, 40, None),
        (200, 128, 100, None),
    ],
)
def test_chunk_start_reads_match_engine(T, chunk_size, split, every):
    """TNT's global memory (every token reads its chunk's start weights, plain gradient descent):
    ``chunk_read_mlp`` == ``chunk_read_memory`` in float64, with big chunks of several tiles, a
    sequence fed in two calls (the second call's first chunk is finished in PyTorch) and checkpoints."""
    arch = _arch(residual=True, layer_norm=True)
    ref_arch = _arch(residual=True, layer_norm=True).double()
    inputs = _inputs(T, torch.float32, "none")
    ref = _run(_as_memory_call(chunk_read_memory), ref_arch, inputs, chunk_size, torch.float64, None, split)
    fast = _as_memory_call(triton_mlp.chunk_read_mlp, checkpoint_every=every)
    with nan_allocations():
        out = _run(fast, arch, inputs, chunk_size, torch.float32, None, split)
    assert ref.keys() == out.keys()
    for name in ref:
        assert_close(f"{name} (T={T}, chunk={chunk_size}, split={split})", ref[name].float(), out[name])


def test_chunk_start_reads_lp_bias_float16():
    arch, ref_arch = _arch(), _arch().double()
    inputs = _inputs(40, torch.float16, "none")
    bias = LpBias(p=3.0)
    ref = _run(_as_memory_call(chunk_read_memory), ref_arch, inputs, 16, torch.float64, bias)
    with nan_allocations():
        read = _as_memory_call(triton_mlp.chunk_read_mlp, **F32_DOTS)
        out = _run(read, arch, inputs, 16, torch.float32, bias)
    for name in ref:
        assert_close(f"{name} (lp, float16)", ref[name].to(out[name].dtype), out[name])


def _run_omega(fn, arch, inputs, window, chunk_size, compute_dtype, split=None, bias=None):
    """Outputs, final state (weights, momenta, anchor, carried window) and every gradient of an Omega-rule
    function (``omega_chunked`` signature, no Muon), random cotangents on all of them."""
    leaves = {
        n: (t.to(compute_dtype) if n in (*FLOAT, "gam") else t).clone().requires_grad_()
        for n, t in inputs.items()
        if t is not None
    }
    momentum = (leaves["s1"], leaves["s2"]) if "s1" in leaves else None
    q, v = leaves["q"], leaves["v"]
    empty_k, empty_v = (x.new_zeros(x.shape[0], 0, *x.shape[2:]).to(compute_dtype) for x in (q, v))
    state = OmegaState(MemoryState((leaves["w1"], leaves["w2"]), momentum), empty_k, empty_v)
    args = [leaves[n] for n in ("q", "k", "v", "lr")] + [leaves.get(n) for n in ("mom", "keep", "gam")]
    T = q.shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    for a, b in itertools.pairwise(cuts):
        y, state = fn(
            arch, *(None if x is None else x[:, a:b] for x in args), state,
            window=window, chunk_size=chunk_size, bias=bias,
        )  # fmt: skip
        ys.append(y)
    mem = state.memory
    outs = {"y": torch.cat(ys, 1), "w1": mem.weights[0], "w2": mem.weights[1]}
    if mem.momentum is not None:
        outs.update(s1=mem.momentum[0], s2=mem.momentum[1])
    if mem.anchor is not None:
        outs.update(anchor1=mem.anchor[0], anchor2=mem.anchor[1])
    outs.update(window_k=state.window_k, window_v=state.window_v)
    if arch.layer_norm:
        leaves.update(ln_w=arch.norm_weight, ln_b=arch.norm_bias)
    return with_leaf_grads(outs, leaves)


@pytest.mark.parametrize(
    "T,window,chunk_size,gates,split",
    [
        (1, 4, 16, "both", None),
        (40, 4, 16, "both", None),
        (65, 8, 8, "mom", None),
        (63, 3, 32, "keep", 20),
        (100, 8, 128, "none", 37),
        (30, 2, 5, "both", 12),
    ],
)
def test_omega_window_matches_engine(T, window, chunk_size, gates, split):
    """OmegaNet's rule (ATLAS Eq. 9-10: each token's loss sums the last ``window`` tokens' losses with
    its window gates) in the kernel == ``omega_chunked`` in float64: outputs, weights, momenta, anchor,
    the carried window rows and every gradient (window gates included); windows reaching into the
    previous tile and chunk, and across a split call (the carried rows)."""
    arch = _arch(residual=True, layer_norm=True)
    ref_arch = _arch(residual=True, layer_norm=True).double()
    inputs = _inputs(T, torch.float32, gates)
    g = torch.Generator(device=DEVICE).manual_seed(2)
    inputs["gam"] = 0.3 + 0.7 * torch.rand(1, T, H, window, generator=g, dtype=torch.float64)
    ref = _run_omega(omega_chunked, ref_arch, inputs, window, chunk_size, torch.float64, split)
    with nan_allocations():
        out = _run_omega(triton_mlp.omega_mlp_chunked, arch, inputs, window, chunk_size, torch.float32, split)
    assert ref.keys() == out.keys()
    for name in ref:
        case = f"T={T}, window={window}, chunk={chunk_size}, gates={gates}, split={split}"
        assert_close(f"{name} ({case})", ref[name].float(), out[name])


@pytest.mark.parametrize("gates,window,bias", [("both", 5, None), ("none", 2, LpBias(p=3.0))])
def test_omega_window_float16(gates, window, bias):
    """Half inputs; ℓ_p only with a short window and no momentum: its gradient grows with the residual's
    square, and with momentum or a 5-token window the inner loop on these inputs diverges in the
    float64 engine itself."""
    arch, ref_arch = _arch(), _arch().double()
    inputs = _inputs(37, torch.float16, gates)
    inputs["gam"] = None
    ref = _run_omega(omega_chunked, ref_arch, inputs, window, 16, torch.float64, bias=bias)
    with nan_allocations():
        omega = functools.partial(triton_mlp.omega_mlp_chunked, **F32_DOTS)
        out = _run_omega(omega, arch, inputs, window, 16, torch.float32, bias=bias)
    for name in ref:
        assert_close(f"{name} (omega, {bias}, float16)", ref[name].to(out[name].dtype), out[name])


@pytest.mark.parametrize("p,T,chunk_size", [(3.0, 29, 8), (2.5, 33, 16)])
def test_lp_bias(p, T, chunk_size):
    """Moneta's ℓ_p bias (p a runtime float), forward and the second-order backward."""
    _compare(T, chunk_size, bias=LpBias(p=p))


def test_lp_bias_float16():
    _compare(25, 16, dtype=torch.float16, bias=LpBias(p=3.0))


@pytest.mark.parametrize("mode", ["norm", "coord"])
@pytest.mark.parametrize("gates", ["none", "both"])
def test_huber_bias(mode, gates):
    """Yaad's Huber bias with a data-dependent threshold (its gradient is checked too)."""
    _compare(29, 8, gates, bias=HuberBias(mode=mode))


def test_huber_float16():
    _compare(21, 16, dtype=torch.float16, bias=HuberBias(mode="norm"))


@pytest.mark.parametrize("mode", ["norm", "coord"])
def test_huber_takes_both_branches(mode):
    """The test thresholds put tokens on both sides of the Huber switch (else the test is vacuous)."""
    inputs = _inputs(29, torch.float32, "both", HuberBias(mode=mode))
    r = _arch().double().read((inputs["w1"], inputs["w2"]), inputs["k"].double().transpose(1, 2))
    r = r - inputs["v"].double().transpose(1, 2)
    delta = inputs["bp"].transpose(1, 2)
    small = r.pow(2).sum(-1) <= delta.pow(2) if mode == "norm" else r.abs() <= delta
    assert 0.2 < small.double().mean() < 0.8


@pytest.mark.parametrize(
    "kwargs,bias,match",
    [
        ({"depth": 1}, None, "memory depth 1"),
        ({"depth": 3}, None, "memory depth 3"),
        ({}, object(), "attentional bias"),
    ],
)
def test_unsupported_raises(kwargs, bias, match):
    arch = MemoryMLP(H, D, **{"depth": 2, "layer_norm": False, **kwargs})
    x = torch.randn(1, 4, H, D)
    with pytest.raises(ValueError, match=match):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, H), bias=bias)


def test_bad_chunk_size_and_missing_bias_params_raise():
    arch = _arch()
    x = torch.randn(1, 4, H, D)
    with pytest.raises(ValueError, match="chunk_size 67"):  # prime, > 64: no tile divides it
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, H), chunk_size=67)
    # 32 x 128 fits the GPU's shared memory with tiles up to 32 rows, 16 x 64 with 64: chunk 64 runs
    # as 2 tiles of 32; chunk 37 (prime) has no tile of 8..32 rows and runs the wide-state kernels
    wide = MemoryMLP(H, 32, depth=2, layer_norm=False)
    assert triton_mlp.supports_mlp(wide, chunk_size=64) is None
    assert (
        triton_mlp.on_chip_state_too_large(32, 128, 37)
        and triton_mlp.supports_mlp(wide, chunk_size=37) is None
    )
    with pytest.raises(ValueError, match="chunk_size 37 with head dim 32 and hidden width 128"):
        triton_mlp.chunk_read_mlp(wide, *(torch.randn(1, 4, H, 32),) * 3, torch.rand(1, 4, H), chunk_size=37)
    with pytest.raises(ValueError, match="checkpoint_every must be >= 1"):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, H), checkpoint_every=0)
    with pytest.raises(ValueError, match="needs bias_params of shape"):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, H), bias=HuberBias())


@pytest.mark.parametrize("fn", ["titans_mlp_chunked", "chunk_read_mlp", "omega_mlp_chunked"])
def test_wrappers_check_inputs_as_the_engine(fn):
    """The kernel wrappers make the engine's input checks (memnets.memory.check_inputs), named."""
    run = getattr(triton_mlp, fn)
    arch, x, lr = _arch(), torch.randn(1, 4, H, D), torch.rand(1, 4, H)
    with pytest.raises(ValueError, match=rf"{fn}: q, k, v must share the shape .* \(1, 5, {H}, {D}\)"):
        run(arch, x, torch.randn(1, 5, H, D), x, lr, chunk_size=16)
    with pytest.raises(
        ValueError, match=rf"{fn}: lr must have shape \[B, T, H\] = \[1, 4, {H}\], got \(1, 3, {H}\)"
    ):
        run(arch, x, x, x, torch.rand(1, 3, H), chunk_size=16)
    with pytest.raises(ValueError, match=rf"{fn}: q has H={H}, D={D} but the memory has H={H}, D=8"):
        run(MemoryMLP(H, 8, depth=2), x, x, x, lr, chunk_size=16)


def op_tensors(momentum: bool, prefix: int = 0, carried: int = 0) -> tuple:
    """Inputs (q .. s2) of the MLP kernels' forward ops: two tiles of 16 tokens, 20 of them real, at
    ``D`` by ``4 D``; ``prefix`` Omega key rows per tile, ``carried`` window rows leading k and v."""
    B, T, L, Dh, NC = 1, 20, 16, 4 * D, 2
    q = 0.3 * torch.randn(B, T, H, D)
    k, v = (0.3 * torch.randn(B, carried + T, H, D) for _ in range(2))
    beta, G = torch.rand(B, H, NC, L), 0.1 * torch.rand(B, H, NC, L, prefix + L)
    w1 = (0.2 * torch.randn(B, H, D, Dh)).requires_grad_()
    w2 = (0.2 * torch.randn(B, H, Dh, D)).requires_grad_()
    if momentum:
        f, m_end, s_coef = (
            torch.rand(B, H, NC, L),
            torch.rand(B, H, NC),
            0.1 * torch.rand(B, H, NC, prefix + L),
        )
        s1, s2 = (torch.zeros_like(w).requires_grad_() for w in (w1, w2))
    else:
        f = m_end = s_coef = torch.zeros(0)
        s1 = s2 = None
    ln_w, ln_b = torch.randn(H, D, requires_grad=True), torch.randn(H, D)
    return (
        q.requires_grad_(),
        k,
        v,
        None,
        ln_w,
        ln_b,
        beta.requires_grad_(),
        f,
        G,
        m_end,
        s_coef,
        w1,
        w2,
        s1,
        s2,
    )


def op_config(**changes) -> tuple:
    """The custom ops' scalars for :func:`op_tensors`' problem: tiles of 16, GELU, L2 bias, the
    residual, one tile per chunk, two tiles in all, float32 operands (``changes`` override fields)."""
    config = mlp_memory.LaunchConfig(
        tile=16, activation=0, bias_kind=0, p=2.0, eps=0.0, sharpness=0.0, ln_eps=1e-5, residual=True,
        tiles_per_chunk=1, read_start=False, checkpoint_every=2, prefix=0, max_tiles=2, dot_precision=0,
        hidden_block=0, recompute_every=2,
    )  # fmt: skip
    return tuple(config._replace(**changes))


def opcheck_ops(fwd, bwd, tensors: tuple, config: tuple, saved: slice | None = None) -> None:
    """``torch.library.opcheck`` of a forward op (schema, fake implementation, autograd registration)
    and of its backward op on random cotangents of (y, W1, W2, S1, S2 final, W1, W2 anchor); the
    forward's outputs at ``saved`` (the checkpoints) go to the backward after the inputs."""
    torch.library.opcheck(
        fwd, (*tensors, *config), test_utils=("test_schema", "test_faketensor", "test_autograd_registration")
    )
    detached = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in tensors)
    extra = fwd(*detached, *config)[saved] if saved is not None else ()
    q, w1, w2, s1 = tensors[0], tensors[11], tensors[12], tensors[13]
    cot = (
        torch.randn(q.shape),
        torch.randn_like(w1),
        torch.randn_like(w2),
        torch.randn_like(w1) if s1 is not None else torch.zeros(0),
        torch.randn_like(w2) if s1 is not None else torch.zeros(0),
        torch.randn_like(w1),
        torch.randn_like(w2),
    )
    torch.library.opcheck(
        bwd, (*detached, *extra, *cot, *config), test_utils=("test_schema", "test_faketensor")
    )


@pytest.mark.parametrize("momentum", [True, False])
def test_custom_op_opcheck(momentum):
    """Schema, fake (meta) implementation and autograd registration of the custom ops (with momentum:
    an Omega window of 3, k and v leading with 2 carried rows)."""
    P = 2 if momentum else 0
    tensors = (*op_tensors(momentum, prefix=P, carried=P), None, None)  # not packed
    config = op_config(checkpoint_every=1, prefix=P)  # 1 tile per checkpoint segment: both are segments
    opcheck_ops(ops.mlp_memory_fwd, ops.mlp_memory_bwd, tensors, config, slice(7, None))


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("T,chunk_size", [(1, 8), (37, 16)])
def test_layer_norm(T, chunk_size, residual):
    """The memory LayerNorm (Titans' default memory: residual + LayerNorm), including the outer
    scale and shift gradients and the LayerNorm's second-order backward."""
    _compare(T, chunk_size, residual=residual, layer_norm=True)


def test_layer_norm_no_gates_float16():
    _compare(21, 8, "none", torch.float16, residual=True, layer_norm=True)


# sharpness 3 for the smooth sign: at 10, tanh(10 R) on LayerNorm outputs (many entries near 0) makes
# the problem too ill-conditioned for float32 (1e-7 input perturbations move the float64 result 1e-4)
@pytest.mark.parametrize(
    "bias", [LpBias(p=3.0), HuberBias(mode="norm", sharpness=3.0), HuberBias(mode="coord")]
)
def test_layer_norm_with_bias(bias):
    _compare(19, 8, bias=bias, residual=True, layer_norm=True)


def _mlp_titans(backend: str, name: str = "titans", **options):
    torch.manual_seed(0)
    opts = {"segment_size": 32} if name == "titans_mac" else {}
    # the default memory (depth 2, expansion 4, GELU, residual + LayerNorm); small inner steps for a
    # well-conditioned comparison (see _inputs: at lr_max 0.1 MAC's float32 engine is itself 1e-5
    # off its float64 run)
    return memnets.build_mixer(
        name, d_model=32, num_heads=2, chunk_size=16, backend=backend, lr_max=0.02, **opts, **options
    )


def twin_mixers(name: str, **options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The mixer on backend='chunked' and on backend='triton', with the same parameters."""
    torch.manual_seed(0)
    chunked = memnets.build_mixer(name, backend="chunked", **options)
    fast = memnets.build_mixer(name, backend="triton", **options)
    fast.load_state_dict(chunked.state_dict())
    return chunked, fast


@pytest.mark.parametrize("name", ["titans", "titans_mac"])
def test_mixer_triton_backend_equals_chunked(name):
    """The mixer with backend='triton' (default deep memory) equals backend='chunked': output, input
    and every parameter gradient, the final state and its gradient."""
    chunked, fast = _mlp_titans("chunked", name), _mlp_titans("triton", name)
    fast.load_state_dict(chunked.state_dict())
    x = torch.randn(1, 21, 32)
    with nan_allocations():
        assert_all_close(forward_backward(chunked, x), forward_backward(fast, x))


OMEGA_OPTIONS = {"momentum": True, "window": 3, "chunk_size": 8}


@pytest.mark.parametrize(
    "options", [{}, OMEGA_OPTIONS, {"feature_degree": 2}, {"feature_degree": 2, **OMEGA_OPTIONS}]
)
def test_omeganet_triton_backend_equals_chunked(options):
    """OmegaNet on backend='triton' (the Omega variant of the kernel; with its default degree-2
    features, 152-wide keys at head dim 16, the wide-state kernels) equals backend='chunked': output,
    final state (the carried window rows included) and every gradient (window gates included), and
    decoding token by token equals the forward."""
    kw = {"d_model": 32, "num_heads": 2, "feature_degree": 1, "lr_max": 0.05, **options}
    chunked, fast = twin_mixers("omeganet", **kw)
    x = torch.randn(1, 21, 32)
    with nan_allocations():
        out = forward_backward(fast, x)
    assert_all_close(forward_backward(chunked, x), out)
    with torch.no_grad():
        state, ys = None, []
        for t in range(x.shape[1]):
            yt, state = fast.step(x[:, t], state)
            ys.append(yt)
    assert_close("decode", out["y"], torch.stack(ys, 1))


def _spy_kernels(monkeypatch, *names: str) -> list[tuple[str, dict]]:
    """Record (name, keyword arguments) of every call of these kernel wrappers, which still run."""
    calls: list[tuple[str, dict]] = []
    for name in names:
        original = getattr(triton_mlp, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(triton_mlp, name, spy)
    return calls


@pytest.mark.parametrize(
    "options,lengths",
    [({"window": 3}, [5, 1, 23, 11]), ({"momentum": True, "window": 4, "chunk_size": 8}, [9, 0, 30])],
)
def test_omeganet_triton_packed_equals_chunked(monkeypatch, options, lengths):
    """omeganet on backend='triton' runs packed sequences in one kernel call (backend='chunked' runs
    them one by one): same output, last sequence's state (memory, window rows, conv) and every
    gradient."""
    calls = _spy_kernels(monkeypatch, "omega_mlp_chunked")
    kw = {"d_model": 32, "num_heads": 2, "feature_degree": 1, "lr_max": 0.05, **options}
    chunked, fast = twin_mixers("omeganet", **kw)
    cu = torch.tensor([0, *itertools.accumulate(lengths)])
    x = torch.randn(1, sum(lengths), 32)
    with nan_allocations():
        out = forward_backward(fast, x, cu_seqlens=cu)
    assert len(calls) == 1 and torch.equal(calls[0][1]["cu_seqlens"], cu)
    # Both runs are float32, and RATIO[float32] bounds each one's error against the exact (float64)
    # result, so by the triangle inequality the two may differ by up to twice that. The gate bias
    # gradient is the worst case: a sum over all 39 tokens of terms of both signs, each carried back
    # through the whole Omega-window recurrence. Against a float64 engine run (float32 cotangents) the
    # engine is 8.2e-6 off here and the kernel 5.8e-6, in opposite directions: 1.4e-5 apart.
    ref = forward_backward(chunked, x, cu_seqlens=cu)
    assert ref.keys() == out.keys()
    for name in ref:
        assert_close(name, ref[name], out[name], ratio=2 * RATIO[torch.float32])
    with pytest.raises(ValueError, match="omeganet: cu_seqlens cannot be combined with a recurrent state"):
        fast(x, fast(x[:, :4])[1], cu_seqlens=cu)


@pytest.mark.parametrize(
    "name,options",
    [("yaad", {"sign_sharpness": 1.0}), ("yaad", {"huber": "coord"}), ("moneta", {"normalize": "none"})],
)
def test_miras_triton_packed_equals_chunked(monkeypatch, name, options):
    """Yaad and Moneta (identity retention) on backend='triton' run packed sequences in one kernel
    call (backend='chunked' runs them one by one): same output, last sequence's state and every
    gradient, the per-token Huber thresholds' gate included."""
    calls = _spy_kernels(monkeypatch, "titans_mlp_chunked")
    chunked, fast = twin_mixers(name, d_model=32, num_heads=2, chunk_size=8, lr_max=0.02, **options)
    lengths = [7, 0, 19, 1, 10]
    cu = torch.tensor([0, *itertools.accumulate(lengths)])
    x = torch.randn(1, sum(lengths), 32)
    with nan_allocations():
        out = forward_backward(fast, x, cu_seqlens=cu)
    assert len(calls) == 1 and torch.equal(calls[0][1]["cu_seqlens"], cu)
    assert_all_close(forward_backward(chunked, x, cu_seqlens=cu), out)


def test_mixer_triton_decode_equals_forward():
    check_decode_no_grad(_mlp_titans("triton"), torch.randn(1, 18, 32))


def test_supports_checks_the_padded_state():
    """The kernels pad D and hidden to powers of two >= 16: D = 8, hidden 128 occupies a 16 x 128 state,
    whose backward with a 64-row tile needs 232 KB of shared memory (check_kernels_compile.py): chunk 64
    runs as 2 tiles of 32 on chip, chunk 61 (prime, a single 64-row tile) in the wide-state kernels."""
    arch = MemoryMLP(1, 8, depth=2, expansion=16.0)
    assert mlp_memory.tile(64, 16 * 128) == 32
    assert not triton_mlp.on_chip_state_too_large(8, 128, 64)
    assert triton_mlp.on_chip_state_too_large(8, 128, 61)
    assert (
        triton_mlp.supports_mlp(arch, chunk_size=64) is None
        and triton_mlp.supports_mlp(arch, chunk_size=61) is None
    )
    assert "chunk_size 61" in triton_mlp.supports_mlp(arch, chunk_size=61, no_wide="packed sequences")


def test_mixer_triton_unsupported_config_raises():
    with pytest.raises(ValueError, match="backend='triton' does not support memory depth 3"):
        memnets.build_mixer("titans", d_model=32, num_heads=2, memory={"depth": 3}, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' does not support head dim 256"):
        memnets.build_mixer("titans", d_model=512, num_heads=2, backend="triton")
    # auto: the engine on CPU (outside the interpreter the kernels need CUDA) or where no kernel applies
    y, _ = memnets.build_mixer("titans", d_model=32, num_heads=2, memory={"depth": 3}, backend="auto")(
        torch.randn(1, 5, 32)
    )
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    "name,options",
    # sign_sharpness 1: tanh(10 R) on the memory's LayerNorm outputs leaves the float32 engine itself
    # 3e-5 off its float64 run (see test_layer_norm_with_bias)
    [
        ("yaad", {"sign_sharpness": 1.0}),
        ("yaad", {"huber": "coord"}),
        ("moneta", {"normalize": "none"}),
        ("yaad", {"huber": "coord", "momentum": True}),
    ],
)
def test_miras_mixer_triton_backend_equals_chunked(name, options):
    """Yaad and Moneta with identity retention run in the kernel (with momentum too: the Titans rule):
    equal to backend='chunked' (output, final state, input and every parameter gradient, the Huber
    threshold's and the momentum's gates included)."""
    chunked, fast = twin_mixers(name, d_model=32, num_heads=2, chunk_size=8, lr_max=0.02, **options)
    x = torch.randn(1, 19, 32)
    with nan_allocations():
        out = forward_backward(fast, x)
    assert_all_close(forward_backward(chunked, x), out)


def test_chunk_size_one_matches_token_reference():
    """At chunk size 1 the kernel is exact online gradient descent: equal to the engine's token loop
    (autograd inner gradients, float64), outputs, final state and every gradient."""
    bias = HuberBias(mode="coord")
    arch, ref_arch = _arch(True, layer_norm=True), _arch(True, layer_norm=True).double()
    inputs = _inputs(9, torch.float32, "both", bias)
    ref = _run(memory_reference, ref_arch, inputs, 1, torch.float64, bias)
    with nan_allocations():
        out = _run(triton_mlp.titans_mlp_chunked, arch, inputs, 1, torch.float32, bias)
    assert ref.keys() == out.keys()
    for name in ref:
        assert_close(f"{name} (chunk 1 vs token loop)", ref[name].to(out[name].dtype), out[name])


@pytest.mark.parametrize(
    "name,options",
    [
        ("titans", {}),
        ("titans_mag", {"window": 8}),
        ("titans_mal", {"window": 8}),
        ("titans_mac", {"segment_size": 16}),
        ("yaad", {}),
        ("moneta", {"normalize": "none"}),
        ("omeganet", {"feature_degree": 1}),
        ("tnt", {"chunk_size": 8, "shard_size": 16, "global_chunk_size": 16}),
    ],
)
def test_mixer_dot_precision_reaches_the_kernels(monkeypatch, name, options):
    """The mixers' ``dot_precision`` option is what every MLP kernel call they make receives (TNT: both
    memories), and the output stays within float16's tolerance of the float32 kernels'."""
    seen = _spy_kernels(monkeypatch, "titans_mlp_chunked", "chunk_read_mlp", "omega_mlp_chunked")
    outs = []
    for precision in ("tf32x3", "float16"):
        torch.manual_seed(0)
        mixer = memnets.build_mixer(
            name, d_model=32, num_heads=2, backend="triton", dot_precision=precision, **options
        )
        torch.manual_seed(1)
        with torch.no_grad():
            outs.append(mixer(torch.randn(1, 19, 32))[0])
        calls = {fn for fn, kw in seen if kw.get("dot_precision") == precision}
        assert calls and all(kw.get("dot_precision") == precision for _, kw in seen), seen
        assert name != "tnt" or calls == {"titans_mlp_chunked", "chunk_read_mlp"}
        seen.clear()
    assert_close("y (float16 operands)", outs[0].to(torch.float16), outs[1].to(torch.float16))


def test_mixer_dot_precision_is_checked():
    from memnets.mixers import memory_block

    assert tuple(triton_mlp.DOT_PRECISIONS) == memory_block.DOT_PRECISIONS
    with pytest.raises(ValueError, match=r"yaad: dot_precision='bf16' is not one of \['auto', 'tf32x3'"):
        memnets.build_mixer("yaad", d_model=32, num_heads=2, dot_precision="bf16")
    with pytest.raises(ValueError, match="titans: dot_precision='bfloat16' needs memory.depth 1 or 2"):
        memnets.build_mixer("titans", d_model=32, num_heads=2, dot_precision="bfloat16", memory={"depth": 3})
    linear = {"depth": 1, "norm": False}  # the linear memory kernel reads it too
    memnets.build_mixer("titans", d_model=32, num_heads=2, dot_precision="bfloat16", memory=linear)
    # Memora takes it too since its softmax retention runs a kernel (tests/test_memora_kernel.py)
    memnets.build_mixer("memora", d_model=32, num_heads=2, dot_precision="float16")
    with pytest.raises(ValueError, match=r"memora: dot_precision='bf16' is not one of"):
        memnets.build_mixer("memora", d_model=32, num_heads=2, dot_precision="bf16")
