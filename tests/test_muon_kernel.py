"""The Muon-per-chunk Triton kernel (Atlas, ATLAS arXiv 2505.23735 §5 Eq. 32–33, ``muon="chunk"``) ==
the engine's chunked form (``omega_chunked``): outputs, final weights, momenta, Muon directions, anchor,
carried window rows and every gradient (random cotangents on all of them, so the initial state's and
the gates' are tested), on awkward lengths, across split calls (the second from inside a chunk, which
the bridge finishes in PyTorch), over several checkpoint segments, with the key width over several
blocks; and Newton–Schulz's right-factor form on its own.

Tolerances. With one Newton–Schulz step the map is well conditioned and the kernel (float32) meets
float32's relative-RMS ratio against the float64 engine. Five steps of Muon's quintic amplify rounding
in the momentum's small singular directions (its slope at 0 is a⁵ ≈ 490), so there the float32 engine
itself misses float64 by up to ~1e-5; the kernel must stay within 5× of the float32 engine's own
distance to float64 (measured: 0.9–2.7×: the forward's right-factor form of layer 1's iteration rounds
differently), plus float32's ratio."""

import functools
import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from mixer_checks import (
    Draws,
    check_against_float64,
    check_decode_and_split,
    check_same_outputs_and_grads,
    with_leaf_grads,
)

import memnets
from memnets.memory import MemoryState
from memnets.memory.features import FeatureMemoryMLP, PolynomialFeatures
from memnets.memory.muon import MUON_COEFFICIENTS, newton_schulz
from memnets.memory.omega import OmegaState, omega_chunked
from memnets.testing import RATIO, assert_close, nan_allocations, rel_err

pytestmark = pytest.mark.usefixtures("kernel_device")

triton = pytest.importorskip("triton")
muon_kernel = pytest.importorskip("memnets.memory.muon_kernel")
import triton.language as tl  # noqa: E402
from test_mlp_memory_wide_keys import DK, D, H, _arch  # noqa: E402  (H 2, D 16, DK 152: key blocks 64, 64, 24)

from memnets.kernels.mlp_memory.newton_schulz import ns_tile, ns_tile_backward  # noqa: E402

F32 = {"dot_precision": "tf32x3"}


def _inputs(T: int, window: int, hidden: int, keep: bool = True) -> dict:
    """A float64 problem: degree-2 features of l2-normalised q and k (as the mixers feed them), small
    steps (the deep memory's inner loop stays well conditioned), a started momentum and direction."""
    draw = Draws(T, torch.get_default_device())
    rnd, unit = draw.normal, draw.uniform
    q, k, v = draw.qkv(1, T, H, D)
    features = PolynomialFeatures(D, 2).double()
    q, k = (features(torch.nn.functional.normalize(x.double(), dim=-1)) for x in (q, k))
    s1, s2 = 0.1 * rnd(1, H, DK, hidden), 0.1 * rnd(1, H, hidden, D)
    return {
        "q": q, "k": k, "v": v.double(),
        "lr": 0.03 * unit(1, T, H), "mom": 0.5 + 0.4 * unit(1, T, H),
        "keep": 0.97 + 0.03 * unit(1, T, H) if keep else None,
        "gam": 0.3 + 0.7 * unit(1, T, H, window) if window > 1 else None,
        "w1": rnd(1, H, DK, hidden) * DK**-0.5, "w2": rnd(1, H, hidden, D) * hidden**-0.5,
        "s1": s1, "s2": s2, "o1": newton_schulz(s1), "o2": newton_schulz(s2),
    }  # fmt: skip


def _run(fn, arch, inputs, window, chunk_size, dtype, split):
    """Outputs, final state and every gradient of ``fn`` (``omega_chunked``'s signature with Muon per
    chunk), fed in one call or two (cut at ``split``)."""
    leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in inputs.items() if t is not None}
    q, v = leaves["q"], leaves["v"]
    empty_k, empty_v = (x.new_zeros(1, 0, *x.shape[2:]) for x in (q, v))
    state = OmegaState(
        MemoryState((leaves["w1"], leaves["w2"]), (leaves["s1"], leaves["s2"])),
        empty_k, empty_v, (leaves["o1"], leaves["o2"]),
    )  # fmt: skip
    args = [leaves[n] for n in ("q", "k", "v", "lr", "mom")] + [leaves.get(n) for n in ("keep", "gam")]
    T = q.shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    for a, b in itertools.pairwise(cuts):
        y, state = fn(
            arch,
            *(None if x is None else x[:, a:b] for x in args),
            state,
            window=window,
            chunk_size=chunk_size,
        )
        ys.append(y)
    mem = state.memory
    outs = {"y": torch.cat(ys, 1), "w1": mem.weights[0], "w2": mem.weights[1], "s1": mem.momentum[0]}
    outs.update(s2=mem.momentum[1], o1=state.direction[0], o2=state.direction[1])
    if mem.anchor is not None:
        outs.update(anchor1=mem.anchor[0], anchor2=mem.anchor[1])
    outs.update(window_k=state.window_k, window_v=state.window_v)
    if arch.layer_norm:
        leaves.update(ln_w=arch.norm_weight, ln_b=arch.norm_bias)
    return with_leaf_grads(outs, leaves)


def _compare(arch, inputs, window, chunk_size, split, ns_steps, checkpoint_every=None):
    arch64 = FeatureMemoryMLP(H, D, DK, 2, arch.shapes[0][1] / D, "gelu", arch.residual, arch.layer_norm)
    arch64.load_state_dict(arch.state_dict())
    arch64 = arch64.double()
    engine = functools.partial(omega_chunked, muon="chunk", ns_steps=ns_steps)
    kernel = functools.partial(
        muon_kernel.omega_muon_chunked, ns_steps=ns_steps, checkpoint_every=checkpoint_every, **F32
    )
    ref = _run(engine, arch64, inputs, window, chunk_size, torch.float64, split)
    eng32 = _run(engine, arch, inputs, window, chunk_size, torch.float32, split) if ns_steps > 1 else None
    with nan_allocations():
        out = _run(kernel, arch, inputs, window, chunk_size, torch.float32, split)
    assert ref.keys() == out.keys()
    case = f"window={window}, chunk={chunk_size}, split={split}, ns_steps={ns_steps}"
    for name in ref:
        ratio = RATIO[torch.float32]
        if eng32 is not None:
            ratio += 5 * rel_err(ref[name], eng32[name])
        assert_close(f"{name} ({case})", ref[name], out[name], ratio=ratio)


@pytest.mark.parametrize(
    "T,window,chunk_size,split,hidden",
    [(1, 4, 8, None, 32), (40, 8, 16, None, 32), (63, 3, 8, 20, 64), (65, 1, 16, None, 32)],
)
def test_kernel_matches_engine_one_step(T, window, chunk_size, split, hidden):
    """One Newton–Schulz step: every term of the kernel's forward and backward at float32's ratio."""
    arch = _arch(hidden)
    _compare(arch, _inputs(T, window, hidden), window, chunk_size, split, ns_steps=1, checkpoint_every=2)


@pytest.mark.parametrize("T,window,chunk_size,split", [(40, 3, 8, None), (100, 2, 16, 37)])
def test_kernel_matches_engine_five_steps(T, window, chunk_size, split):
    """Muon's five quintic steps (the mixers' default), the tolerance from the float32 engine's own error."""
    arch = _arch(32)
    _compare(arch, _inputs(T, window, 32), window, chunk_size, split, ns_steps=5)


def test_kernel_half_operands_one_step():
    """float16 operands (the interpreter's stand-in for bfloat16, whose interpreted tl.dot is wrong:
    Triton #11584) everywhere but Newton–Schulz (``muon_ops.ns_dot``): float16's ratio against the
    float64 engine with one Newton–Schulz step. With five, the quintic amplifies the operands' rounding
    of the momentum itself (8e-3 measured): benchmarks/RESULTS.md §37."""
    arch = _arch(32)
    inputs, ref_fn = _inputs(40, 3, 32), functools.partial(omega_chunked, muon="chunk", ns_steps=1)
    arch64 = FeatureMemoryMLP(H, D, DK, 2, 2.0, "gelu", True, True)
    arch64.load_state_dict(arch.state_dict())
    ref = _run(ref_fn, arch64.double(), inputs, 3, 8, torch.float64, None)
    kernel = functools.partial(muon_kernel.omega_muon_chunked, ns_steps=1, dot_precision="float16")
    with nan_allocations():
        out = _run(kernel, arch, inputs, 3, 8, torch.float32, None)
    for name in ref:
        assert_close(f"{name} (float16 operands)", ref[name], out[name], ratio=RATIO[torch.float16])


def test_kernel_three_checkpoint_levels(monkeypatch):
    """Checkpoints every 4 chunks, each segment recomputed in inner segments of 2 (the plan long
    sequences get, :func:`~memnets.kernels.mlp_memory.launch.checkpoint_chunks`), over 13 chunks."""
    from memnets.kernels.mlp_memory import muon_launch

    monkeypatch.setattr(muon_launch, "checkpoint_chunks", lambda chunks, every, wide: (4, 2))
    arch = _arch(32)
    _compare(arch, _inputs(100, 3, 32), 3, 8, None, ns_steps=1)


def test_kernel_without_layer_norm_residual_or_keep():
    arch = _arch(32, residual=False, layer_norm=False)
    _compare(arch, _inputs(33, 4, 32, keep=False), 4, 8, None, ns_steps=1)


@triton.jit
def _ns_kernel(x, dn, out, dx, R, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, a, b, c, eps,
               STEPS: tl.constexpr):  # fmt: skip
    r = tl.arange(0, BR)
    cc = tl.arange(0, BC)
    m = (r < R)[:, None] & (cc < C)[None, :]
    o = r[:, None] * C + cc[None, :]
    X = tl.load(x + o, mask=m, other=0.0)
    tl.store(out + o, ns_tile(X, a, b, c, eps, STEPS, BC, 0), mask=m)
    tl.store(
        dx + o, ns_tile_backward(X, tl.load(dn + o, mask=m, other=0.0), a, b, c, eps, STEPS, BC, 0), mask=m
    )


@pytest.mark.parametrize("R,C", [(40, 16), (20, 12), (16, 16)])
def test_newton_schulz_right_factor(R, C):
    """NS(X) = X F and its backward == ``newton_schulz`` under autograd, well-conditioned X (float32:
    within 4× of the float32 iteration's own distance to float64)."""
    torch.manual_seed(0)
    X, dN = torch.randn(R, C), torch.randn(R, C)
    with nan_allocations():
        out, dx = torch.empty_like(X), torch.empty_like(X)
    _ns_kernel[(1,)](
        X,
        dN,
        out,
        dx,
        R,
        C,
        triton.next_power_of_2(R),
        triton.next_power_of_2(C),
        *MUON_COEFFICIENTS,
        1e-7,
        5,
    )
    X64 = X.double().requires_grad_()
    ref = newton_schulz(X64)
    (g,) = torch.autograd.grad(ref, X64, dN.double())
    X32 = X.clone().requires_grad_()
    ref32 = newton_schulz(X32)
    (g32,) = torch.autograd.grad(ref32, X32, dN)
    assert_close("NS(X)", ref, out, ratio=RATIO[torch.float32] + 4 * rel_err(ref, ref32))
    assert_close("dX", g, dx, ratio=RATIO[torch.float32] + 4 * rel_err(g, g32))


def test_atlas_mixer_runs_the_kernel():
    """``atlas`` with ``muon: chunk`` and ``backend: triton`` runs the kernel and equals ``chunked`` (output,
    input and parameter gradients); decoding token by token (started chunks in PyTorch, a chunk's first
    token in the kernel) and split calls equal one call. One Newton–Schulz step keeps float32's ratio
    (module docstring)."""
    kw = {"muon": "chunk", "chunk_size": 8, "window": 3, "memory": {"expansion": 1.0}, "ns_steps": 1}
    torch.manual_seed(0)
    kernel = memnets.build_mixer("atlas", d_model=32, num_heads=2, backend="triton", **kw)
    chunked = memnets.build_mixer("atlas", d_model=32, num_heads=2, backend="chunked", **kw)
    chunked.load_state_dict(kernel.state_dict())
    assert kernel.op.no_kernel("triton") is None
    x, cot = torch.randn(1, 21, 32), torch.randn(1, 21, 32)
    with nan_allocations():
        check_same_outputs_and_grads(chunked, kernel, x, cot, every_param_learns=True)
        check_decode_and_split("atlas (triton)", kernel, x[:, :13], 5)


@pytest.mark.parametrize("name", ["atlas_mag", "atlas_mal"])
def test_atlas_hybrids_run_the_kernel(name):
    """Atlas (MAG) and (MAL) run their memory through the same dispatch: ``backend: triton`` against
    ``chunked`` in float64, within 10× of float32 ``chunked``'s own error (plus float32's ratio; one
    Newton–Schulz step). The feature map's coefficients are sums over every token and feature with
    heavy cancellation: over seeds 0-3 the kernel's error on them was 0.4-7× the float32 engine's,
    every other tensor's at most 1.5×."""
    kw = {"window": 6, "memory_window": 3, "chunk_size": 8, "muon": "chunk", "ns_steps": 1}
    kw["memory"] = {"expansion": 1.0}
    torch.manual_seed(0)
    kernel = memnets.build_mixer(name, d_model=32, num_heads=2, backend="triton", **kw)
    chunked = memnets.build_mixer(name, d_model=32, num_heads=2, backend="chunked", **kw)
    chunked.load_state_dict(kernel.state_dict())
    x, cot = torch.randn(1, 19, 32), torch.randn(1, 19, 32)
    with nan_allocations():
        check_against_float64(chunked, kernel, x, cot, factor=10)


def test_custom_ops_opcheck():
    """``memnets::muon_memory_fwd`` / ``_bwd``: schema, fake implementations (torch.compile) and the
    autograd registration (``torch.library.opcheck``)."""
    from memnets.kernels.mlp_memory import muon_ops

    B, T, L, P, hidden = 1, 12, 8, 2, 16
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    NC = -(-T // L)
    q, k, v = rnd(B, T, H, DK), rnd(B, P + T, H, DK), rnd(B, P + T, H, D)
    coefs = (torch.rand(B, H, NC, L, generator=g) for _ in range(3))
    m_end, s_coef = torch.rand(B, H, NC, generator=g), torch.rand(B, H, NC, P + L, generator=g)
    state = [0.1 * rnd(B, H, DK, hidden), 0.1 * rnd(B, H, hidden, D)] * 3
    ln = (1 + 0.1 * rnd(H, D), 0.1 * rnd(H, D))
    config = tuple(muon_ops.MuonConfig(L, P, 1, 1, 0, 1, *MUON_COEFFICIENTS, 1e-7, 0, True, 1e-5))
    tensors = (q, k, v, *ln, *coefs, m_end, s_coef, *state)
    torch.library.opcheck(
        muon_ops.muon_memory_fwd,
        (*tensors, *config),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    ckpts = muon_ops.muon_memory_fwd(*tensors, *config)[9:]
    cot = (rnd(B, T, H, D), *(torch.randn_like(t) for t in state), *(torch.randn_like(t) for t in state[:2]))
    torch.library.opcheck(
        muon_ops.muon_memory_bwd,
        (*tensors, *ckpts, *cot, *config),
        test_utils=("test_schema", "test_faketensor"),
    )
