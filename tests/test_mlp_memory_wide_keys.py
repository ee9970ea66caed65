"""The wide-state Triton kernels with keys wider than values (OmegaNet's and Atlas' polynomial features,
ATLAS arXiv 2505.23735 §3.1: W1 ``[Dk, Dh]`` read in blocks of the key width) and with the Omega window
(§3.2 Eq. 9-10: each chunk's key path over its tokens and the window − 1 before them) == the engine's
float64 chunked forms: outputs, final weights/momenta/anchor, the carried window rows and every gradient
(random cotangents on all of them, so the initial state's and the window gates' are tested), on
awkward lengths, across split calls, with the key width over several blocks, the last one part
masked."""

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import test_mlp_memory as base  # the whole-state kernels' tests: same harness
import torch
from mixer_checks import Draws, assert_all_close, forward_backward

from memnets.memory import memory_chunked
from memnets.memory.features import FeatureMemoryMLP, PolynomialFeatures, feature_dim
from memnets.memory.omega import omega_chunked
from memnets.testing import RATIO, assert_close, nan_allocations

pytestmark = pytest.mark.usefixtures("kernel_device")  # tensors on base.DEVICE

triton_mlp = pytest.importorskip("memnets.memory.kernel_bridge")
mlp_memory = pytest.importorskip("memnets.kernels.mlp_memory")

H, D = base.H, base.D  # values 16 wide
DK = feature_dim(D, 2)  # degree-2 features: keys 16 + 136 = 152 wide, key blocks of 64, 64 and 24


def _arch(hidden: int = 32, residual: bool = True, layer_norm: bool = True) -> FeatureMemoryMLP:
    torch.manual_seed(0)
    arch = FeatureMemoryMLP(H, D, DK, 2, hidden / D, "gelu", residual, layer_norm)
    if layer_norm:  # away from the identity affine, so its gradients are tested
        with torch.no_grad():
            arch.norm_weight.copy_(1 + 0.3 * torch.randn(H, D))
            arch.norm_bias.copy_(0.2 * torch.randn(H, D))
    return arch


def _inputs(T: int, dtype: torch.dtype, gates: str, window: int, hidden: int = 32) -> dict:
    """base's problem with q and k through the degree-2 features (of l2-normalised vectors, as the
    mixers feed them: ‖φ(x)‖² = 2) and initial weights of the feature width."""
    inputs = base._inputs(T, torch.float64, gates)
    features = PolynomialFeatures(D, 2).double()  # made on the test's device (base's fixture)
    for n in ("q", "k"):
        inputs[n] = features(torch.nn.functional.normalize(inputs[n], dim=-1)).to(dtype)
    inputs["v"] = inputs["v"].to(dtype)
    rnd = Draws(T + 1, base.DEVICE).normal
    inputs["w1"], inputs["w2"] = rnd(1, H, DK, hidden) * DK**-0.5, rnd(1, H, hidden, D) * hidden**-0.5
    if inputs["s1"] is not None:
        inputs["s1"], inputs["s2"] = 0.1 * rnd(1, H, DK, hidden), 0.1 * rnd(1, H, hidden, D)
    inputs["gam"] = None  # window 1 has no window gate (the mixers pass none)
    if window == 1:
        return inputs
    g = torch.Generator(device=base.DEVICE).manual_seed(2)
    inputs["gam"] = 0.3 + 0.7 * torch.rand(
        1, T, H, window, generator=g, dtype=torch.float64, device=base.DEVICE
    )
    return inputs


def _compare_omega(
    arch, inputs, window, chunk_size, split=None, hidden_block=16, dots=base.F32_DOTS, ratio=None
):
    ref = base._run_omega(omega_chunked, _double(arch), inputs, window, chunk_size, torch.float64, split)
    fn = functools.partial(triton_mlp.omega_mlp_chunked, hidden_block=hidden_block, **dots)
    with nan_allocations():
        out = base._run_omega(fn, arch, inputs, window, chunk_size, torch.float32, split)
    assert ref.keys() == out.keys()
    case = f"window={window}, chunk={chunk_size}, split={split}, block={hidden_block}, {dots}"
    for name in ref:
        if ratio is None:
            assert_close(f"{name} ({case})", ref[name].to(out[name].dtype), out[name])
        else:
            assert_close(f"{name} ({case})", ref[name], out[name], ratio=ratio)


def _double(arch: torch.nn.Module) -> torch.nn.Module:
    twin = _arch(arch.shapes[0][1], arch.residual, arch.layer_norm)
    twin.load_state_dict(arch.state_dict())
    return twin.double()


@pytest.mark.parametrize(
    "T,window,chunk_size,gates,split",
    [
        (1, 4, 8, "both", None),
        (40, 1, 16, "both", None),
        (37, 4, 8, "both", 13),
        (65, 8, 16, "keep", None),
        (30, 3, 8, "none", 9),
    ],
)
def test_feature_keys_match_engine(T, window, chunk_size, gates, split):
    """OmegaNet's memory on 152-wide feature keys (three key blocks, the last part masked; two hidden
    blocks), residual + LayerNorm, with and without momentum and decay, windows of 1-8 tokens reaching
    into the previous chunk and across split calls (the carried rows), the tail chunk short."""
    _compare_omega(_arch(), _inputs(T, torch.float32, gates, window), window, chunk_size, split)


def test_window_one_gate():
    """At window 1 a window gate still scales each token's inner gradient (Eq. 9 with c = 1): the
    kernel path folds it into lr and equals the engine, which applies it to the gradient."""
    inputs = _inputs(21, torch.float32, "both", 1)
    inputs["gam"] = 0.3 + 0.7 * torch.rand(1, 21, H, 1, dtype=torch.float64, device=base.DEVICE)
    _compare_omega(_arch(), inputs, 1, 8)


def test_feature_keys_without_residual_or_norm():
    """ATLAS Eq. 42 literally (no LayerNorm) and without the residual: the kernel's plain branches."""
    arch = _arch(48, residual=False, layer_norm=False)  # hidden 48: the second block half masked
    _compare_omega(arch, _inputs(29, torch.float32, "mom", 3, hidden=48), 3, 8, hidden_block=32)


def test_feature_keys_equal_the_engines_chunked_form():
    """Window 1 is the Titans rule on feature keys: ``titans_mlp_chunked`` (the wide-state kernels, which
    every call with wider keys runs) == ``memory_chunked`` in float64, whose checks take wider keys too."""
    arch, inputs = _arch(), _inputs(33, torch.float32, "both", 1)
    del inputs["gam"]
    ref = base._run(memory_chunked, _double(arch), inputs, 16, torch.float64)
    with nan_allocations():
        out = base._run(
            functools.partial(triton_mlp.titans_mlp_chunked, **base.F32_DOTS), arch, inputs, 16, torch.float32
        )
    for name in ref:
        assert_close(f"{name} (feature keys, window 1)", ref[name].float(), out[name])


def test_equal_widths_window_in_wide_kernels():
    """The Omega window in the wide-state kernels with keys as wide as values (head dim 16, the hidden
    width in two blocks): the same as the whole-state kernels' window, through the other kernels."""
    arch, ref_arch = base._arch(True, "gelu", True, 32), base._arch(True, "gelu", True, 32).double()
    inputs = base._inputs(30, torch.float32, "both")
    rnd = Draws(31, base.DEVICE).normal
    inputs["w1"], inputs["w2"] = rnd(1, H, D, 32) * D**-0.5, rnd(1, H, 32, D) * 32**-0.5
    inputs["s1"], inputs["s2"] = 0.1 * rnd(1, H, D, 32), 0.1 * rnd(1, H, 32, D)
    inputs["gam"] = 0.5 + 0.5 * torch.rand(1, 30, H, 3, dtype=torch.float64, device=base.DEVICE)
    ref = base._run_omega(omega_chunked, ref_arch, inputs, 3, 8, torch.float64, 11)
    fn = functools.partial(triton_mlp.omega_mlp_chunked, hidden_block=16, **base.F32_DOTS)
    with nan_allocations():
        out = base._run_omega(fn, arch, inputs, 3, 8, torch.float32, 11)
    for name in ref:
        assert_close(f"{name} (window 3, wide kernels)", ref[name].float(), out[name])


def test_feature_keys_float16():
    """Half inputs and half operands (what autocast runs) within float16's tolerance of float64."""
    inputs = _inputs(21, torch.float16, "both", 2)
    dots = {"dot_precision": "float16"}
    _compare_omega(_arch(), inputs, 2, 8, dots=dots, ratio=RATIO[torch.float16])


def test_limits_name_the_reason():
    """Wider keys run the wide-state kernels only: refused with packed sequences (and beyond their
    chunk limit with the window's rows), each with its reason."""
    arch = _arch()
    assert triton_mlp.supports_mlp(arch, chunk_size=16, window=8) is None
    why = triton_mlp.supports_mlp(arch, chunk_size=16, window=8, no_wide="packed sequences")
    assert why.startswith(f"key width {DK} != value width {D}") and "packed sequences" in why
    assert "chunk_size 64 with 7 more key rows" in triton_mlp.supports_mlp(arch, chunk_size=64, window=8)
    inputs = _inputs(9, torch.float32, "none", 2)
    with pytest.raises(ValueError, match="unsupported configuration: key width 152 != value width 16"):
        triton_mlp.omega_mlp_chunked(
            arch, *(inputs[n] for n in ("q", "k", "v", "lr")), window=2,
            cu_seqlens=torch.tensor([0, 4, 9]),
        )  # fmt: skip


def test_omeganet_features_packed_run_one_by_one():
    """Packed sequences with feature keys on backend='triton': the wide-state kernels take none, so the
    dispatch runs the sequences one by one (each through the kernels) and equals backend='chunked'."""
    chunked, fast = base.twin_mixers("omeganet", d_model=32, num_heads=2, lr_max=0.05, window=3, chunk_size=8)
    cu = torch.tensor([0, 7, 8, 20])
    x = torch.randn(1, 20, 32)
    assert not fast.op.packs("triton", x.device)
    with nan_allocations():
        out = forward_backward(fast, x, cu_seqlens=cu)
    assert_all_close(forward_backward(chunked, x, cu_seqlens=cu), out)
