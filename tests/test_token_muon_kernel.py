"""The per-token Muon Triton kernels (Atlas, ATLAS arXiv 2505.23735 §5 Eq. 32–33 and 40, ``muon="token"``)
== the engine's chunked form (``omega_chunked``): outputs, final weights, momenta, anchor, carried window
rows and every gradient (random cotangents on all of them, so the initial state's and the coefficients'
are tested), on awkward lengths, across split calls (the second from inside a chunk, which the bridge
finishes in PyTorch), over several checkpoint segments, with the key width over several blocks (152 =
64 + 64 + 24); the mixer's dispatch; the custom ops.

Tolerances. Up to four Newton–Schulz steps every tensor is within float32's ratio plus 5× the float32
engine's own distance to float64 (measured: at most 1.1× that distance). At Muon's five steps (the
mixers' default) the float32 gradients of every path lose accuracy although the problem does not: input
perturbations at float32's resolution move the float64 gradients by at most 5e-7, while the float32
engine misses them by 2e-6 when it materialises every token's momentum and by 5e-6 to 2e-5 on layer
1's coordinates (the form the kernel uses, whose Gram matrix squares the basis's conditioning). The
kernel's outputs, momenta and the gradients of q, the gates and the momenta stay at or below that
engine's distance; the gradients that pass through the key path's second-order backward (k, v, W1,
W2, the LayerNorm) reach 4-16× it (3e-5 to 9e-5 at T = 24-47). Computed in float64 (a scratch run of
the interpreter, benchmarks/RESULTS.md §50) the kernel matches the float64 engine within 6.3e-7 at five
steps, so this is rounding, not a formula: the five-step case holds the kernel within 25× the float32
engine's distance, and the formulas are the ones the four-step cases check tightly."""

import functools
import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from mixer_checks import check_decode_and_split, check_same_outputs_and_grads, with_leaf_grads

import memnets
from memnets.memory import MemoryState
from memnets.memory.features import FeatureMemoryMLP
from memnets.memory.muon import MUON_COEFFICIENTS
from memnets.memory.omega import OmegaState, omega_chunked
from memnets.testing import RATIO, assert_close, nan_allocations, rel_err

pytestmark = pytest.mark.usefixtures("kernel_device")

pytest.importorskip("triton")
muon_kernel = pytest.importorskip("memnets.memory.muon_kernel")
from test_mlp_memory_wide_keys import DK, D, H, _arch  # noqa: E402  (H 2, D 16, DK 152)
from test_muon_kernel import _inputs  # noqa: E402


def _run(fn, arch, inputs, dtype, window, chunk_size, split, ns_steps, checkpoint_every=None):
    """Outputs, final state and every gradient of ``fn`` (``omega_chunked``'s signature, ``muon="token"``),
    fed in one call or two (cut at ``split``)."""
    leaves = {n: t.to(dtype).clone().requires_grad_() for n, t in inputs.items() if t is not None}
    leaves = {n: t for n, t in leaves.items() if n not in ("o1", "o2")}  # the per-chunk schedule's
    q, v = leaves["q"], leaves["v"]
    empty_k, empty_v = (x.new_zeros(1, 0, *x.shape[2:]) for x in (q, v))
    state = OmegaState(
        MemoryState((leaves["w1"], leaves["w2"]), (leaves["s1"], leaves["s2"])), empty_k, empty_v
    )
    args = [leaves[n] for n in ("q", "k", "v", "lr", "mom")] + [leaves.get(n) for n in ("keep", "gam")]
    options = {} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}
    T = q.shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    for a, b in itertools.pairwise(cuts):
        y, state = fn(
            arch,
            *(None if t is None else t[:, a:b] for t in args),
            state,
            window=window,
            chunk_size=chunk_size,
            muon="token",
            ns_steps=ns_steps,
            **options,
        )
        ys.append(y)
    mem = state.memory
    outs = {"y": torch.cat(ys, 1), "w1": mem.weights[0], "w2": mem.weights[1], "s1": mem.momentum[0]}
    outs.update(s2=mem.momentum[1], window_k=state.window_k, window_v=state.window_v)
    if mem.anchor is not None:
        outs.update(anchor1=mem.anchor[0], anchor2=mem.anchor[1])
    if arch.layer_norm:
        leaves.update(ln_w=arch.norm_weight, ln_b=arch.norm_bias)
    return with_leaf_grads(outs, leaves)


def _compare(arch, inputs, window, chunk_size, split, ns_steps, checkpoint_every=None, factor=5):
    """Every output and gradient of the kernel within float32's ratio plus ``factor`` times the float32
    engine's own distance to the float64 engine (at ``ns_steps``), NaN-filled allocations."""
    hidden = arch.shapes[0][1]
    arch64 = FeatureMemoryMLP(H, D, DK, 2, hidden / D, "gelu", arch.residual, arch.layer_norm)
    arch64.load_state_dict(arch.state_dict())
    arch64 = arch64.double()
    kernel = functools.partial(
        muon_kernel.omega_muon_chunked, dot_precision="tf32x3", checkpoint_every=checkpoint_every
    )
    case = (window, chunk_size, split, ns_steps)
    ref = _run(omega_chunked, arch64, inputs, torch.float64, *case)
    eng32 = _run(omega_chunked, arch, inputs, torch.float32, *case)
    with nan_allocations():
        out = _run(kernel, arch, inputs, torch.float32, *case)
    assert ref.keys() == out.keys()
    label = f"window={window}, chunk={chunk_size}, split={split}, ns_steps={ns_steps}"
    for name in ref:
        ratio = RATIO[torch.float32] + factor * rel_err(ref[name], eng32[name])
        assert_close(f"{name} ({label})", ref[name], out[name], ratio=ratio)


@pytest.mark.parametrize(
    "T,window,chunk_size,split,hidden,ns_steps,checkpoint_every",
    [
        (1, 4, 8, None, 32, 4, None),
        (40, 3, 8, None, 64, 2, 2),
        (63, 3, 8, 20, 16, 1, 2),
        (65, 1, 16, None, 32, 2, None),
        (100, 2, 16, 37, 32, 1, None),
    ],
)
def test_kernel_matches_engine(T, window, chunk_size, split, hidden, ns_steps, checkpoint_every):
    arch = _arch(hidden)
    _compare(arch, _inputs(T, window, hidden), window, chunk_size, split, ns_steps, checkpoint_every)


def test_kernel_four_and_five_newton_schulz_steps():
    """Four steps within 5× the float32 engine's distance; Muon's five within 25× (module docstring)."""
    _compare(_arch(32), _inputs(24, 3, 32), 3, 8, None, 4)
    _compare(_arch(32), _inputs(24, 3, 32), 3, 8, None, 5, factor=25)


def test_kernel_without_layer_norm_residual_or_keep():
    arch = _arch(32, residual=False, layer_norm=False)
    _compare(arch, _inputs(29, 2, 32, keep=False), 2, 8, None, 2)


def test_hidden_width_past_the_backward_shared_memory_is_refused():
    """At hidden width 64 (Atlas at 340M/760M) the backward fits sm_90's shared memory with half, TF32x3
    and "auto" operands but not with one TF32 product (252 KiB, ``scripts/check_kernels_compile.py``):
    the per-token kernel refuses that mode there, naming why; the per-chunk one takes it."""
    why = muon_kernel.supports_muon(_arch(64), None, 8, 3, "token", "tf32")
    assert "per-token backward's shared memory" in why and "dot_precision='tf32'" in why
    assert muon_kernel.supports_muon(_arch(64), None, 8, 3, "chunk", "tf32") is None
    for dot_precision in ("auto", "tf32x3", "bfloat16", "float16"):
        assert muon_kernel.supports_muon(_arch(64), None, 8, 3, "token", dot_precision) is None
    assert muon_kernel.supports_muon(_arch(32), None, 8, 3, "token", "tf32") is None


def test_atlas_mixer_runs_the_kernel():
    """``atlas`` with its default ``muon: token`` and ``backend: triton`` runs the kernel and equals
    ``chunked`` (output, input and parameter gradients); decoding token by token (started chunks in
    PyTorch, a chunk's first token in the kernel) and split calls equal one call. One Newton–Schulz step
    keeps float32's ratio between two float32 paths."""
    kw = {"chunk_size": 8, "window": 3, "memory": {"expansion": 1.0}, "ns_steps": 1}
    torch.manual_seed(0)
    kernel = memnets.build_mixer("atlas", d_model=32, num_heads=2, backend="triton", **kw)
    chunked = memnets.build_mixer("atlas", d_model=32, num_heads=2, backend="chunked", **kw)
    chunked.load_state_dict(kernel.state_dict())
    assert kernel.muon == "token" and kernel.op.no_kernel("triton") is None
    x, cot = torch.randn(1, 21, 32), torch.randn(1, 21, 32)
    calls = []
    original = muon_kernel.token_muon_memory_chunked
    with pytest.MonkeyPatch.context() as mp, nan_allocations():
        mp.setattr(
            muon_kernel, "token_muon_memory_chunked", lambda *a, **k: calls.append(1) or original(*a, **k)
        )
        check_same_outputs_and_grads(chunked, kernel, x, cot, every_param_learns=True)
        check_decode_and_split("atlas (triton, muon token)", kernel, x[:, :13], 5)
    assert calls, "the per-token kernel did not run"


def test_custom_ops_opcheck():
    """``memnets::token_muon_memory_fwd`` / ``_bwd``: schema, fake implementations (torch.compile) and the
    autograd registration (``torch.library.opcheck``)."""
    from memnets.kernels.mlp_memory import muon_ops

    B, T, L, P, hidden = 1, 12, 8, 2, 16
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    NC = -(-T // L)
    q, k, v = rnd(B, T, H, DK), rnd(B, P + T, H, DK), rnd(B, P + T, H, D)
    coefs = [torch.rand(B, H, NC, L, generator=g) for _ in range(4)]
    qm = torch.rand(B, H, NC, L, P + L, generator=g)
    state = [0.1 * rnd(B, H, DK, hidden), 0.1 * rnd(B, H, hidden, D)] * 2
    ln = (1 + 0.1 * rnd(H, D), 0.1 * rnd(H, D))
    config = tuple(muon_ops.MuonConfig(L, P, 1, 1, 0, 1, *MUON_COEFFICIENTS, 1e-7, 0, True, 1e-5))
    tensors = (q, k, v, *ln, *coefs, qm, *state)
    torch.library.opcheck(
        muon_ops.token_muon_memory_fwd,
        (*tensors, *config),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    ckpts = muon_ops.token_muon_memory_fwd(*tensors, *config)[7:]
    cot = (rnd(B, T, H, D), *(torch.randn_like(t) for t in state), *(torch.randn_like(t) for t in state[:2]))
    torch.library.opcheck(
        muon_ops.token_muon_memory_bwd,
        (*tensors, *ckpts, *cot, *config),
        test_utils=("test_schema", "test_faketensor"),
    )
