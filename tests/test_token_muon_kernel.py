"""The per-token Muon forward kernel (Atlas, ATLAS arXiv 2505.23735 §5 Eq. 32–33 and 40, ``muon="token"``)
== the engine's chunked form (``omega_chunked``): outputs, final weights, momenta, anchor and carried
window rows, on awkward lengths, across split calls (the second from inside a chunk, which the bridge
finishes in PyTorch), with the key width over several blocks (152 = 64 + 64 + 24); and the mixer's
dispatch: ``backend: triton`` runs the kernel where no gradient is needed and the chunked engine where one
is. The kernel has no backward yet, so no gradient is compared.

Tolerance, as for the per-chunk kernel (``test_muon_kernel.py``): five steps of Muon's quintic amplify
rounding in the momentum's small singular directions, so the float32 engine itself misses float64 by up to
~4e-5 here; the kernel must stay within 5× of that distance plus float32's ratio. Measured: 0.5–1.0× the
engine's distance (layer 1's Newton–Schulz on coordinates rounds differently from the engine's, which
materialises each token's momentum at these widths); one step, at float32's ratio."""

import functools
import itertools
import logging
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from mixer_checks import check_decode_and_split

import memnets
from memnets import dispatch
from memnets.memory import MemoryState
from memnets.memory.features import FeatureMemoryMLP
from memnets.memory.omega import OmegaState, omega_chunked
from memnets.testing import RATIO, assert_close, nan_allocations, rel_err

pytestmark = pytest.mark.usefixtures("kernel_device")

pytest.importorskip("triton")
muon_kernel = pytest.importorskip("memnets.memory.muon_kernel")
from test_mlp_memory_wide_keys import DK, D, H, _arch  # noqa: E402  (H 2, D 16, DK 152)
from test_muon_kernel import _inputs  # noqa: E402


def _run(fn, arch, inputs, dtype, window, chunk_size, split, ns_steps):
    """Outputs and final state of ``fn`` (``omega_chunked``'s signature, ``muon="token"``) without
    gradients, fed in one call or two (cut at ``split``)."""
    x = {n: t.to(dtype) for n, t in inputs.items() if t is not None}
    empty_k, empty_v = x["q"].new_zeros(1, 0, H, DK), x["v"].new_zeros(1, 0, H, D)
    state = OmegaState(MemoryState((x["w1"], x["w2"]), (x["s1"], x["s2"])), empty_k, empty_v)
    args = [x[n] for n in ("q", "k", "v", "lr", "mom")] + [x.get(n) for n in ("keep", "gam")]
    T = x["q"].shape[1]
    cuts = [0, T] if split is None else [0, split, T]
    ys = []
    with torch.no_grad():
        for a, b in itertools.pairwise(cuts):
            y, state = fn(
                arch,
                *(None if t is None else t[:, a:b] for t in args),
                state,
                window=window,
                chunk_size=chunk_size,
                muon="token",
                ns_steps=ns_steps,
            )
            ys.append(y)
    mem = state.memory
    outs = {"y": torch.cat(ys, 1), "w1": mem.weights[0], "w2": mem.weights[1], "s1": mem.momentum[0]}
    outs.update(s2=mem.momentum[1], window_k=state.window_k, window_v=state.window_v)
    if mem.anchor is not None:
        outs.update(anchor1=mem.anchor[0], anchor2=mem.anchor[1])
    return outs


def _compare(arch, inputs, window, chunk_size, split, ns_steps):
    hidden = arch.shapes[0][1]
    arch64 = FeatureMemoryMLP(H, D, DK, 2, hidden / D, "gelu", arch.residual, arch.layer_norm)
    arch64.load_state_dict(arch.state_dict())
    arch64 = arch64.double()
    kernel = functools.partial(muon_kernel.omega_muon_chunked, dot_precision="tf32x3")
    case = (window, chunk_size, split, ns_steps)
    ref = _run(omega_chunked, arch64, inputs, torch.float64, *case)
    eng32 = _run(omega_chunked, arch, inputs, torch.float32, *case)
    with nan_allocations():
        out = _run(kernel, arch, inputs, torch.float32, *case)
    assert ref.keys() == out.keys()
    label = f"window={window}, chunk={chunk_size}, split={split}, ns_steps={ns_steps}"
    for name in ref:
        ratio = RATIO[torch.float32] + (5 * rel_err(ref[name], eng32[name]) if ns_steps > 1 else 0.0)
        assert_close(f"{name} ({label})", ref[name], out[name], ratio=ratio)


@pytest.mark.parametrize(
    "T,window,chunk_size,split,hidden,ns_steps",
    [
        (1, 4, 8, None, 32, 5),
        (40, 3, 8, None, 32, 5),
        (63, 3, 8, 20, 64, 1),
        (65, 1, 16, None, 32, 5),
        (100, 2, 16, 37, 32, 5),
    ],
)
def test_kernel_matches_engine(T, window, chunk_size, split, hidden, ns_steps):
    arch = _arch(hidden)
    _compare(arch, _inputs(T, window, hidden), window, chunk_size, split, ns_steps)


def test_kernel_without_layer_norm_residual_or_keep():
    arch = _arch(32, residual=False, layer_norm=False)
    _compare(arch, _inputs(29, 2, 32, keep=False), 2, 8, None, 5)


def test_kernel_refuses_to_run_where_a_gradient_is_needed():
    arch = _arch(32)
    x = {n: t.float() for n, t in _inputs(8, 1, 32).items() if t is not None}
    q = x["q"].requires_grad_()
    with pytest.raises(ValueError, match="forward kernel only"):
        muon_kernel.omega_muon_chunked(arch, q, x["k"], x["v"], x["lr"], x["mom"], muon="token", chunk_size=8)


def test_atlas_mixer_runs_the_kernel_without_gradients(caplog):
    """``atlas`` with its default ``muon: token`` and ``backend: triton``: without gradients the kernel
    runs and equals ``chunked``, decoding token by token and split calls equal one call; with gradients
    the chunked engine runs (the log says so), so output and gradients equal ``chunked``'s exactly. One
    Newton–Schulz step keeps float32's ratio between two float32 paths (module docstring)."""
    kw = {"chunk_size": 8, "window": 3, "memory": {"expansion": 1.0}, "ns_steps": 1}
    torch.manual_seed(0)
    kernel = memnets.build_mixer("atlas", d_model=32, num_heads=2, backend="triton", **kw)
    chunked = memnets.build_mixer("atlas", d_model=32, num_heads=2, backend="chunked", **kw)
    chunked.load_state_dict(kernel.state_dict())
    assert kernel.muon == "token" and kernel.op.no_kernel("triton") is None
    x, cot = torch.randn(1, 21, 32), torch.randn(1, 21, 32)
    calls = []
    original = muon_kernel.token_muon_memory_forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            muon_kernel, "token_muon_memory_forward", lambda *a, **k: calls.append(1) or original(*a, **k)
        )
        with torch.no_grad(), nan_allocations():
            assert_close("y", chunked(x)[0], kernel(x)[0])
            check_decode_and_split("atlas (triton, muon token)", kernel, x[:, :13], 5)
    assert calls, "the per-token kernel did not run"
    with pytest.MonkeyPatch.context() as mp, caplog.at_level(logging.INFO, logger="memnets"):
        mp.setattr(dispatch, "_announced", set())  # log_once: the message as if for the first time
        ys, grads = [], []
        for m in (chunked, kernel):
            xi = x.clone().requires_grad_()
            y, _ = m(xi)
            (y * cot).sum().backward()
            ys.append(y.detach())
            grads.append([xi.grad, *(p.grad for p in m.parameters())])
    assert torch.equal(ys[0], ys[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert "muon='token' runs the chunked engine where a gradient is needed" in caplog.text
