"""The wide-state (hidden-tiled) Triton kernels of the deep Titans memory == the engine's chunked PyTorch
form (run in float64): outputs, final weights/momenta/anchor and every gradient (random cotangents on y
and every final-state tensor, so the initial state's gradients are tested), with the hidden width
split into 2 to 4 blocks, on awkward lengths and several chunk sizes."""

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import test_mlp_memory as base  # the whole-state kernels' tests: same problems and harness
import torch
from mixer_checks import Draws, assert_all_close, forward_backward

import memnets
from memnets.memory import MemoryMLP, memory_chunked
from memnets.memory.miras import HuberBias, LpBias
from memnets.testing import RATIO, assert_close, nan_allocations

pytestmark = pytest.mark.usefixtures("kernel_device")  # tensors on base.DEVICE

triton_mlp = pytest.importorskip("memnets.memory.kernel_bridge")
mlp_memory = pytest.importorskip("memnets.kernels.mlp_memory")
ops = pytest.importorskip("memnets.kernels.mlp_memory.ops")

H, D = base.H, base.D  # hidden width 4 D = 64


def _spy_hidden_blocks(monkeypatch) -> list[int]:
    """Record the hidden block of every wide-state call of the forward op, which still runs."""
    calls = []
    op = ops.mlp_memory_fwd
    n_scalars = len(mlp_memory.LaunchConfig._fields)

    def spy(*args):
        if block := mlp_memory.LaunchConfig(*args[-n_scalars:]).hidden_block:
            calls.append(block)
        return op(*args)

    monkeypatch.setattr(ops, "mlp_memory_fwd", spy)
    return calls


def _compare(
    T,
    chunk_size,
    hidden_block=16,
    gates="both",
    dtype=torch.float32,
    residual=False,
    activation="gelu",
    bias=None,
    layer_norm=False,
    split=None,
    hidden=None,
    checkpoint_every=None,
    dots=base.F32_DOTS,
    ratio=None,
):
    D = base.D  # the harness's head dim at call time (a test may set another)
    arch = base._arch(residual, activation, layer_norm, hidden or 4 * D)
    ref_arch = base._arch(residual, activation, layer_norm, hidden or 4 * D).double()
    inputs = base._inputs(T, dtype, gates, bias)
    if hidden is not None:  # another hidden width than base's 4 D
        rnd = Draws(hidden, base.DEVICE).normal
        inputs["w1"], inputs["w2"] = rnd(1, H, D, hidden) * D**-0.5, rnd(1, H, hidden, D) * hidden**-0.5
        if inputs["s1"] is not None:
            inputs["s1"], inputs["s2"] = 0.1 * rnd(1, H, D, hidden), 0.1 * rnd(1, H, hidden, D)
    ref = base._run(memory_chunked, ref_arch, inputs, chunk_size, torch.float64, bias, split)
    fn = functools.partial(
        triton_mlp.titans_mlp_chunked,
        hidden_block=hidden_block,
        checkpoint_every=checkpoint_every,
        **dots,
    )
    with nan_allocations():
        out = base._run(fn, arch, inputs, chunk_size, torch.float32, bias, split)
    assert ref.keys() == out.keys()
    case = (
        f"T={T}, chunk={chunk_size}, block={hidden_block}, gates={gates}, {dtype}, res={residual}, "
        f"ln={layer_norm}, {activation}, {bias}"
    )
    for name in ref:
        # float32 results against the float64 engine, half ones against their half-rounded reference
        if ratio is None:
            assert_close(f"{name} ({case})", ref[name].to(out[name].dtype), out[name])
        else:  # half operands: within that precision's tolerance of the float64 engine
            assert_close(f"{name} ({case}, {dots})", ref[name], out[name], ratio=ratio)


@pytest.mark.parametrize(
    "T,chunk_size,hidden_block",
    [(1, 16, 16), (17, 8, 32), (40, 32, 16), (63, 16, 32), (65, 32, 16), (100, 64, 32)],
)
def test_matches_engine_momentum_decay(T, chunk_size, hidden_block):
    _compare(T, chunk_size, hidden_block)


@pytest.mark.parametrize("T, chunk_size, every", [(100, 16, 2), (65, 8, 3), (63, 16, 1)])
def test_checkpoint_segments(T, chunk_size, every):
    """The backward walks checkpoint segments of ``every`` chunks in reverse (each recomputed from its
    start state), with the last segment shorter and the sequence ending mid-chunk."""
    _compare(T, chunk_size, checkpoint_every=every)


def _force_plan(monkeypatch, every: int, inner: int) -> None:
    """Make the launcher checkpoint every ``every`` chunks and recompute in pieces of ``inner``: the
    default picks three levels only at lengths too slow for the interpreter."""
    monkeypatch.setattr(mlp_memory.launch, "checkpoint_chunks", lambda *_: (every, inner))


def test_three_level_checkpoints(monkeypatch):
    """Segments recomputed in inner segments against the engine: 13 chunks (the last one started) in
    segments 5, 5, 3 → inner 2 + 2 + 1, 2 + 2 + 1, 2 + 1 (a shorter last inner segment in every segment,
    a shorter last segment)."""
    _force_plan(monkeypatch, 5, 2)
    _compare(100, 8, checkpoint_every=5)


def test_three_levels_equal_two(monkeypatch):
    """The inner segments' start states come from the same STORE passes the two-level recompute runs,
    so everything is the same bit for bit but the LayerNorm's parameter gradients, summed over more
    launches (5 chunks: segments 3, 2 → inner 2 + 1, 2)."""
    arch = base._arch(True, "gelu", True, 4 * D)
    inputs = base._inputs(40, torch.float32, "both", None)
    fn = functools.partial(triton_mlp.titans_mlp_chunked, hidden_block=16, **base.F32_DOTS)
    runs = []
    for inner in (3, 2):
        _force_plan(monkeypatch, 3, inner)
        with nan_allocations():
            runs.append(base._run(fn, arch, inputs, 8, torch.float32))
    two, three = runs
    assert two.keys() == three.keys()
    for name in two:
        if name in ("dln_w", "dln_b"):
            assert_close(name, two[name], three[name])
        else:
            torch.testing.assert_close(three[name], two[name], rtol=0, atol=0, msg=name)


def test_checkpoint_plan():
    """Three levels only for the wide-state kernels and only where they keep a quarter fewer states."""
    chunks, plan = mlp_memory.launch.checkpoint_chunks, mlp_memory.forward.backward_plan
    assert chunks(256, None, wide=False) == (16, 16)
    assert plan(256, 16, 16) == (32, 256)  # 16 checkpoints + 16 chunk states; every chunk recomputed once
    assert chunks(256, None, wide=True) == (49, 7)
    assert plan(256, 49, 7) == (19, 473)  # 6 checkpoints + 6 inner + 7 chunk states; 217 chunks twice
    assert chunks(24, None, wide=True) == (5, 5)  # three levels would keep 8 states against 10
    assert chunks(100, 9, wide=True) == (9, 9)  # inner 3 keeps 17 against 21
    assert chunks(100, 16, wide=True) == (16, 4)  # 14 against 23


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("T, chunk_size", [(1, 16), (63, 16), (100, 32)])
def test_programs_per_head(monkeypatch, split, T, chunk_size):
    """The forward, the backward's recompute and its recurrence with the 4 hidden blocks over 1 program
    per (sequence, head) or 2; the other tests here run the default, one block per program
    (:func:`~memnets.kernels.mlp_memory.config.wide_split`, checked below)."""
    monkeypatch.setattr(mlp_memory.config, "WIDE_SPLIT", split)
    _compare(T, chunk_size, residual=True, layer_norm=True, checkpoint_every=3)


@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("bias", [None, HuberBias(mode="coord")])
def test_head_dim_not_a_power_of_two(monkeypatch, split, bias):
    """Head dim 12 (padded to 16 columns, as titans-760m's 96 to 128 and titans-mac-170m's 48 to 64)
    with the residual and LayerNorm (hidden width 48), whose dγ, db come back per padded column and are cut to the head
    dim (that cut once took the wrong axis: every LayerNorm backward at such head dims failed), over
    1 and 3 programs per (sequence, head) of the 3 hidden blocks."""
    monkeypatch.setattr(base, "D", 12)  # the harness's problem size (read at call time)
    monkeypatch.setattr(mlp_memory.config, "WIDE_SPLIT", split)
    _compare(37, 8, 16, bias=bias, residual=True, layer_norm=True, checkpoint_every=2)


def test_split_default(monkeypatch):
    """Programs per (sequence, head): the divisor of the hidden blocks with the fewest block-steps on
    the busiest SM (waves x blocks per program), fewer programs on a tie; here (2 heads, 4 blocks, no
    GPU: counted against 132 SMs) one block per program, in every launch, the backward's recompute's
    too, and the backward's recurrence."""
    rule = mlp_memory.config.wide_split
    cases = [(64, 6), (64, 4), (48, 3), (200, 6), (2, 4), (132, 6), (66, 6)]
    assert [rule(*c) for c in cases] == [2, 2, 3, 3, 4, 1, 2]
    split_module = mlp_memory.wide_split
    seen = []
    launch = split_module.launch_wide_split_forward
    monkeypatch.setattr(
        split_module,
        "launch_wide_split_forward",
        lambda *a, store=False: seen.append((a[-1], store)) or launch(*a, store=store),
    )
    backward_module = mlp_memory.wide_backward
    recurrence = backward_module.launch_wide_split_backward
    monkeypatch.setattr(
        backward_module,
        "launch_wide_split_backward",
        lambda *a: seen.append((a[-1], "backward")) or recurrence(*a),
    )
    _compare(40, 8, checkpoint_every=2)
    # 5 chunks in checkpoint segments of 2, 2, 1: the forward's three launches, then per segment (the
    # last first) the backward's recompute (STORE) and its recurrence, split alike
    assert seen == [(4, False)] * 3 + [(4, True), (4, "backward")] * 3
    monkeypatch.setattr(mlp_memory.config, "WIDE_SPLIT", 3)
    with pytest.raises(ValueError, match="WIDE_SPLIT=3 must divide the 4 hidden blocks"):
        _compare(40, 8)


@pytest.mark.parametrize("gates", ["none", "mom", "keep"])
def test_matches_engine_gates(gates):
    _compare(33, 16, 32, gates)


@pytest.mark.parametrize("gates", ["none", "both"])
def test_matches_engine_float16(gates):
    _compare(37, 16, 16, gates, torch.float16)


def test_residual_layer_norm():
    """Titans' default memory (residual + LayerNorm): the LayerNorm's second-order backward runs on
    whole rows between the hidden passes."""
    _compare(40, 16, 16, residual=True, layer_norm=True)


@pytest.mark.parametrize("bias", [LpBias(p=3.0), HuberBias(mode="coord")])
def test_biases_with_layer_norm(bias):
    _compare(19, 8, 32, bias=bias, residual=True, layer_norm=True)


def test_huber_norm_float16():
    _compare(21, 16, 16, dtype=torch.float16, bias=HuberBias(mode="norm"))


@pytest.mark.parametrize("activation", ["silu", "tanh"])
def test_activations(activation):
    _compare(21, 8, 16, activation=activation)


def test_partial_hidden_block():
    """Hidden width 48 in blocks of 32: the last block is half masked."""
    _compare(20, 8, 32, hidden=48, residual=True, layer_norm=True)


@pytest.mark.parametrize("T, chunk_size, hidden", [(65, 16, 160), (40, 8, 128)])
def test_hidden_block_64(T, chunk_size, hidden):
    """The half-operand default hidden block (64: one wgmma M per warpgroup) over 2-3 blocks, the last
    one half masked at hidden width 160, with every branch the Titans memory takes."""
    _compare(T, chunk_size, 64, residual=True, layer_norm=True, hidden=hidden)


def test_default_hidden_block_follows_the_operands(monkeypatch):
    """With no hidden_block, half operands tile the hidden width in blocks of 64 (here 80: two blocks,
    the second three-quarters masked) and stay within float16's tolerance of the float64 engine;
    float32 operands take blocks of 32 (their float32 tiles at 64 outgrow the shared memory)."""
    assert (mlp_memory.DEFAULT_HIDDEN_BLOCK, mlp_memory.FLOAT32_HIDDEN_BLOCK) == (64, 32)
    calls = _spy_hidden_blocks(monkeypatch)
    half = {"dot_precision": "float16"}
    _compare(
        45,
        37,
        None,
        torch.float16,
        residual=True,
        layer_norm=True,
        hidden=80,
        dots=half,
        ratio=RATIO[torch.float16],
    )
    assert calls == [mlp_memory.DEFAULT_HIDDEN_BLOCK]


@pytest.mark.parametrize("split", [1, 2])
def test_half_operands_keep_half_chunk_states(monkeypatch, split):
    """With half operands the backward's recompute keeps every chunk's start state in that half type
    (:func:`~memnets.kernels.mlp_memory.config.chunk_state_dtype`: the products read them rounded so
    anyway), and every output and gradient stays within float16's tolerance of the float64 engine:
    momentum and gates, residual + LayerNorm, 4 chunks in checkpoint segments of 3 and 1, the hidden
    blocks over 1 and 2 programs per (sequence, head)."""
    config = mlp_memory.config
    assert [config.chunk_state_dtype(config.DOT_PRECISIONS[m]) for m in config.DOT_PRECISIONS] == [
        torch.float32,
        torch.float32,
        torch.float16,
        torch.bfloat16,
    ]
    monkeypatch.setattr(config, "WIDE_SPLIT", split)
    backward_module = mlp_memory.wide_backward
    recurrence = backward_module.launch_wide_split_backward
    seen = []
    monkeypatch.setattr(
        backward_module,
        "launch_wide_split_backward",
        lambda *a: seen.append({t.dtype for t in a[7] if t.numel()}) or recurrence(*a),
    )
    _compare(
        63,
        16,
        64,
        torch.float16,
        residual=True,
        layer_norm=True,
        hidden=128,
        checkpoint_every=3,
        dots={"dot_precision": "float16"},
        ratio=RATIO[torch.float16],
    )
    assert seen == [{torch.float16}] * 2


def test_too_large_state_runs_wide_kernels(monkeypatch):
    """With no hidden_block, a state beyond the whole-state kernels' shared memory at every tile of the
    chunk (16 x 80, padded 16 x 128, at chunk 37: prime, a single 64-row tile) runs the wide kernels,
    with float32 operands' default hidden block (here 3 blocks of 32, the last one half masked)."""
    assert (
        triton_mlp.on_chip_state_too_large(D, 80, 37)
        and triton_mlp.supports_mlp(base._arch(True, "gelu", True, 80), chunk_size=37) is None
    )
    calls = _spy_hidden_blocks(monkeypatch)
    _compare(45, 37, None, residual=True, layer_norm=True, hidden=80)
    assert calls == [mlp_memory.FLOAT32_HIDDEN_BLOCK]


def test_head_dim_beyond_wide_limit_refused():
    """Limits from scripts/check_kernels_compile.py: head dim 128 fits chunk tiles of 16 and 32 rows,
    64 fits 64 rows; beyond, supports names the reason and the kernel refuses to run."""
    assert "head dims <= 128" in triton_mlp.supports_mlp(MemoryMLP(1, 256, depth=2), chunk_size=16)
    arch = MemoryMLP(1, 128, depth=2)
    assert triton_mlp.supports_mlp(arch, chunk_size=32) is None
    assert "head dim 128 at chunk_size 33" in triton_mlp.supports_mlp(arch, chunk_size=33)
    assert triton_mlp.supports_mlp(MemoryMLP(1, 64, depth=2), chunk_size=64) is None
    x = torch.randn(1, 4, 1, 128)
    with pytest.raises(ValueError, match="unsupported configuration: head dim 128 at chunk_size 64"):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, 1), chunk_size=64)


def test_state_carry_mid_chunk():
    """A sequence fed in two calls (the first ending mid-chunk): the engine finishes the chunk, the wide
    kernels continue from the boundary."""
    _compare(30, 8, 16, split=5, bias=HuberBias(mode="norm", sharpness=3.0))


def test_equals_whole_state_kernel_float16():
    """Same rounding path as the whole-state kernel up to float32 summation order."""
    arch = base._arch(True, "gelu", True)
    inputs = base._inputs(23, torch.float16, "both")
    outs = []
    for fn in (
        functools.partial(triton_mlp.titans_mlp_chunked, **base.F32_DOTS),
        functools.partial(triton_mlp.titans_mlp_chunked, hidden_block=16, **base.F32_DOTS),
    ):
        with nan_allocations():
            outs.append(base._run(fn, arch, inputs, 8, torch.float32))
    for name in outs[0]:
        assert_close(f"{name} (wide vs whole-state)", outs[0][name], outs[1][name])


@pytest.mark.parametrize("momentum", [True, False])
def test_custom_op_opcheck(momentum):
    """Schema, fake (meta) implementation and autograd registration of the custom ops in wide-state mode
    (1 chunk per checkpoint segment: both chunks are segments)."""
    tensors = (*base.op_tensors(momentum), None, None)  # not packed
    config = base.op_config(hidden_block=32, checkpoint_every=1)
    base.opcheck_ops(ops.mlp_memory_fwd, ops.mlp_memory_bwd, tensors, config, slice(7, None))


def test_bad_hidden_block_raises():
    x = torch.randn(1, 4, H, D)
    with pytest.raises(ValueError, match="hidden_block 24"):
        triton_mlp.titans_mlp_chunked(base._arch(), x, x, x, torch.rand(1, 4, H), hidden_block=24)


def test_titans_mixer_head_dim_64_runs_wide_kernels(monkeypatch):
    """The Titans mixer at head dim 64 (its default memory: hidden 256, residual + LayerNorm; before the
    wide kernels, beyond the Triton backend): backend='triton' runs the wide kernels and equals
    backend='chunked', output, final state, input and every parameter gradient."""
    calls = _spy_hidden_blocks(monkeypatch)
    chunked, fast = base.twin_mixers("titans", d_model=64, num_heads=1, chunk_size=16, lr_max=0.02)
    x = torch.randn(1, 19, 64)
    with nan_allocations():
        out = forward_backward(fast, x)
    assert calls == [mlp_memory.FLOAT32_HIDDEN_BLOCK]
    assert_all_close(forward_backward(chunked, x), out)


def test_auto_leaves_wide_kernels_until_checked_on_a_gpu(monkeypatch, caplog):
    """backend='auto' on a device where kernels could run does not pick the wide-state kernels while
    WIDE_IN_AUTO is off (their barrier-ordered in-place updates are not testable in the interpreter):
    the memory runs the chunked engine and the log says why; backend='triton' runs them."""
    from memnets import dispatch

    monkeypatch.setattr(dispatch, "triton_available", lambda device: True)
    monkeypatch.setattr(dispatch, "_announced", set())
    assert not triton_mlp.WIDE_IN_AUTO
    mixer = memnets.build_mixer("titans", d_model=128, num_heads=2, backend="auto")  # head dim 64
    with caplog.at_level("INFO", logger=dispatch.log.name):
        assert mixer.op.backend(mixer.backend, torch.device("cpu")) == "chunked"
    assert "the wide-state kernels do not run under backend='auto' until checked on a GPU" in caplog.text
    explicit = memnets.build_mixer("titans", d_model=128, num_heads=2, backend="triton")
    assert explicit.op.backend(explicit.backend, torch.device("cpu")) == "triton"
