"""Triton kernels of the deep (two-layer MLP) Titans memory == the engine's chunked PyTorch form (run in
float64): outputs, final weights/momenta/anchor and every gradient, on awkward lengths, several chunk
sizes, with and without momentum and decay, residual on and off, each activation and bias."""

import importlib.util
import itertools
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from helpers import ROOT

import memnets
from memnets.memory import MemoryMLP, MemoryState, memory_chunked, memory_reference
from memnets.memory.miras import HuberBias, LpBias
from memnets.testing import assert_close, nan_allocations

triton_mlp = pytest.importorskip("memnets.kernels.titans_mlp_triton")

H, D = 2, 16


def _arch(residual: bool = False, activation: str = "gelu", layer_norm: bool = False) -> MemoryMLP:
    torch.manual_seed(0)
    arch = MemoryMLP(H, D, depth=2, activation=activation, residual=residual, layer_norm=layer_norm)  # type: ignore[arg-type]
    if layer_norm:  # away from the identity affine, so its gradients are tested
        with torch.no_grad():
            arch.norm_weight.copy_(1 + 0.3 * torch.randn(H, D))
            arch.norm_bias.copy_(0.2 * torch.randn(H, D))
    return arch


def _inputs(
    T: int, dtype: torch.dtype, gates: str, bias: object = None, B: int = 1
) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(T)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def unit(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    Dh = 4 * D
    qkv = [rnd(B, T, H, D) for _ in range(3)]
    qkv[0], qkv[1] = (t / t.norm(dim=-1, keepdim=True) for t in qkv[:2])  # l2-normalised as in titans
    bp = None
    if isinstance(bias, HuberBias):
        # thresholds around the residual's size, so both branches of the switch are taken
        shape = (B, T, H) if bias.mode == "norm" else (B, T, H, D)
        bp = (4.0 if bias.mode == "norm" else 0.6) * (0.5 + unit(*shape))
    return {
        "q": qkv[0].to(dtype),
        "k": qkv[1].to(dtype),
        "v": qkv[2].to(dtype),
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
    g = torch.Generator().manual_seed(1)
    loss = sum(
        (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() for o in outs.values()
    )
    if arch.layer_norm:
        leaves.update(ln_w=arch.norm_weight, ln_b=arch.norm_bias)
    names = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    outs.update({f"d{n}": torch.zeros_like(leaves[n]) if gr is None else gr for n, gr in zip(names, grads)})
    return outs


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
):
    arch = _arch(residual, activation, layer_norm)
    ref_arch = _arch(residual, activation, layer_norm).double()
    inputs = _inputs(T, dtype, gates, bias)
    ref = _run(memory_chunked, ref_arch, inputs, chunk_size, torch.float64, bias, split)
    with nan_allocations():
        out = _run(triton_mlp.titans_mlp_chunked, arch, inputs, chunk_size, torch.float32, bias, split)
    assert ref.keys() == out.keys()
    for name in ref:
        # float32 results against the float64 engine, half ones against their half-rounded reference
        expected = ref[name].to(out[name].dtype)
        case = f"T={T}, chunk={chunk_size}, gates={gates}, {dtype}, res={residual}, ln={layer_norm}, {activation}, {bias}"
        assert_close(f"{name} ({case})", expected, out[name])


@pytest.mark.parametrize("T,chunk_size", [(1, 16), (17, 8), (63, 16), (65, 32), (40, 64)])
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


@pytest.mark.parametrize("p,T,chunk_size", [(3.0, 29, 8), (2.5, 33, 16)])
def test_lp_bias(p, T, chunk_size):
    """Moneta's ℓ_p bias (p a runtime float), forward and the second-order backward."""
    _compare(T, chunk_size, bias=LpBias(p=p))


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
    with pytest.raises(ValueError, match="chunk_size 256"):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, H), chunk_size=256)
    with pytest.raises(ValueError, match="needs bias_params of shape"):
        triton_mlp.titans_mlp_chunked(arch, x, x, x, torch.rand(1, 4, H), bias=HuberBias())


@pytest.mark.parametrize("momentum", [True, False])
def test_custom_op_opcheck(momentum):
    """Schema, fake (meta) implementation and autograd registration of the custom ops."""
    B, T, L, Dh = 1, 20, 16, 4 * D
    NC = 2
    q, k, v = (0.3 * torch.randn(B, T, H, D) for _ in range(3))
    beta, G = torch.rand(B, H, NC, L), 0.1 * torch.rand(B, H, NC, L, L)
    w1 = (0.2 * torch.randn(B, H, D, Dh)).requires_grad_()
    w2 = (0.2 * torch.randn(B, H, Dh, D)).requires_grad_()
    if momentum:
        f, m_end, s_coef = torch.rand(B, H, NC, L), torch.rand(B, H, NC), 0.1 * torch.rand(B, H, NC, L)
        s1, s2 = (torch.zeros_like(w).requires_grad_() for w in (w1, w2))
    else:
        f = m_end = s_coef = torch.zeros(0)
        s1 = s2 = None
    ln_w, ln_b = torch.randn(H, D, requires_grad=True), torch.randn(H, D)
    qr, beta = q.requires_grad_(), beta.requires_grad_()
    tensors = (qr, k, v, None, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2)
    config = (L, 0, 0, 2.0, 0.0, 0.0, 1e-5, True)
    torch.library.opcheck(
        triton_mlp.titans_mlp_fwd,
        (*tensors, *config),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    detached = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in tensors)
    cot = (
        torch.randn(B, T, H, D),
        torch.randn_like(w1),
        torch.randn_like(w2),
        torch.randn_like(w1) if momentum else torch.zeros(0),
        torch.randn_like(w2) if momentum else torch.zeros(0),
        torch.randn_like(w1),
        torch.randn_like(w2),
    )
    torch.library.opcheck(
        triton_mlp.titans_mlp_bwd, (*detached, *cot, *config), test_utils=("test_schema", "test_faketensor")
    )


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


@pytest.mark.parametrize("name", ["titans", "titans_mac"])
def test_mixer_triton_backend_equals_chunked(name):
    """The mixer with backend='triton' (default deep memory) equals backend='chunked': output, input
    and every parameter gradient."""
    chunked, fast = _mlp_titans("chunked", name), _mlp_titans("triton", name)
    fast.load_state_dict(chunked.state_dict())
    x = torch.randn(1, 21, 32)
    cot = torch.randn(1, 21, 32)
    results = []
    for m in (chunked, fast):
        xi = x.clone().requires_grad_()
        with nan_allocations():
            y, _ = m(xi)
            (y * cot).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    assert_close("y", results[0][0], results[1][0])
    assert_close("dx", results[0][1], results[1][1])
    for n, g in results[0][2].items():
        assert_close(f"d{n}", g, results[1][2][n])


def test_mixer_triton_decode_equals_forward():
    mixer = _mlp_titans("triton")
    x = torch.randn(1, 18, 32)
    with torch.no_grad():
        y, _ = mixer(x)
        state, ys = None, []
        for t in range(x.shape[1]):
            yt, state = mixer.step(x[:, t], state)
            ys.append(yt)
    assert_close("decode", y, torch.stack(ys, 1))


def test_supports_checks_the_padded_state():
    """The kernels pad D and hidden to powers of two >= 16: D = 8, hidden 128 occupies a 16 x 128 state,
    whose backward at chunk 64 needs 232 KB of shared memory (check_kernels_compile.py), so the
    wide-state kernels take it there and the whole-state ones at chunk 32."""
    assert triton_mlp.on_chip_state_too_large(8, 128, 64)
    assert not triton_mlp.on_chip_state_too_large(8, 128, 32)


def test_mixer_triton_unsupported_config_raises():
    with pytest.raises(ValueError, match="backend='triton' does not support memory depth 3"):
        memnets.build_mixer("titans", d_model=32, num_heads=2, memory_depth=3, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' does not support head dim 256"):
        memnets.build_mixer("titans", d_model=512, num_heads=2, backend="triton")
    # auto: the engine on CPU (outside the interpreter the kernels need CUDA) or where no kernel applies
    y, _ = memnets.build_mixer("titans", d_model=32, num_heads=2, memory_depth=3, backend="auto")(
        torch.randn(1, 5, 32)
    )
    assert torch.isfinite(y).all()


def test_bench_script_smoke(tmp_path):
    """scripts/bench_titans_kernels.py times the depth-2 kernel (here in the interpreter, tiny shape)
    beside the engine and writes its JSON; chunk sizes the kernel does not cover become skipped rows."""
    spec = importlib.util.spec_from_file_location(
        "bench_titans_kernels", ROOT / "scripts/bench_titans_kernels.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    args = ["--depth", "2", "--T", "12", "--D", "16", "--chunk-sizes", "8", "256", "--repeats", "1"]
    bench.main([*args, "--triton", "--out", str(out)])
    res = json.loads(out.read_text())
    timed = {(r["backend"], r["chunk_size"], r["pass"]) for r in res["rows"] if "ms" in r}
    assert timed == {(b, 8, p) for b in ("chunked", "triton") for p in ("fwd", "fwd+bwd")} | {
        ("chunked", 256, p) for p in ("fwd", "fwd+bwd")
    }
    assert any(r.get("skipped", "").startswith("unsupported chunk_size 256") for r in res["rows"])
    assert all(r["tflops"] > 0 for r in res["rows"] if "ms" in r)
    assert res["meta"]["depth"] == 2 and res["meta"]["layer_norm"]


@pytest.mark.parametrize(
    "name,options",
    # sign_sharpness 1: tanh(10 R) on the memory's LayerNorm outputs leaves the float32 engine itself
    # 3e-5 off its float64 run (see test_layer_norm_with_bias)
    [("yaad", {"sign_sharpness": 1.0}), ("yaad", {"huber": "coord"}), ("moneta", {"normalize": "none"})],
)
def test_miras_mixer_triton_backend_equals_chunked(name, options):
    """Yaad and Moneta with identity retention run in the kernel: equal to backend='chunked' (output,
    input and every parameter gradient, the Huber threshold's gate included)."""
    mixers = []
    for backend in ("chunked", "triton"):
        torch.manual_seed(0)
        mixers.append(
            memnets.build_mixer(
                name, d_model=32, num_heads=2, chunk_size=8, backend=backend, lr_max=0.02, **options
            )
        )
    mixers[1].load_state_dict(mixers[0].state_dict())
    x, cot = torch.randn(1, 19, 32), torch.randn(1, 19, 32)
    results = []
    for m in mixers:
        xi = x.clone().requires_grad_()
        with nan_allocations():
            y, _ = m(xi)
            (y * cot).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    assert_close("y", results[0][0], results[1][0])
    assert_close("dx", results[0][1], results[1][1])
    for n, g in results[0][2].items():
        assert_close(f"d{n}", g, results[1][2][n])


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
