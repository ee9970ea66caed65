"""The compiled chunked path (:mod:`memnets.compiled`): what ``auto`` runs on CUDA where no kernel
covers a configuration, never eager float32.

On CPU the steps are captured with dynamo's ``aot_eager`` backend (``MEMNETS_COMPILE_BACKEND``): the
same graphs forward and backward, run without generated code, so the checks here are about what the
compiled path computes (every chunked engine's step under capture, autocast operands, the dispatch),
not about inductor's code, which an inductor compile on a 2-core CPU would take minutes to build.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from benchmarks.config_mixers import build_meta, config_mixers, dispatches
from memnets import compiled, dispatch
from memnets.memory import MemoryMLP, memory_chunked
from memnets.registry import build_mixer
from memnets.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
LM_CONFIGS = sorted((ROOT / "configs" / "lm").glob("*.yaml"))


@pytest.fixture(autouse=True)
def aot_eager(monkeypatch):
    monkeypatch.setenv("MEMNETS_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(dispatch, "_announced", set())


@pytest.mark.parametrize("path", LM_CONFIGS, ids=[p.stem for p in LM_CONFIGS])
def test_auto_on_cuda_never_runs_eager_float32(path):
    """Every memory dispatch of every shipped LM config picks, under ``auto`` on a CUDA device, a
    Triton kernel or the compiled chunked form (built on the meta device at the config's real widths)."""
    cuda = torch.device("cuda")
    for name, cfg in config_mixers(path):
        mixer = build_meta(name, cfg)
        for attr, d, _ in dispatches(mixer):
            chosen = d.backend(getattr(mixer, "backend", "auto"), cuda)
            assert chosen in ("triton", "compiled"), (path.stem, name, attr, chosen, d.no_kernel("auto"))


def _run(mixer, x, backend):
    mixer.backend = backend
    x = x.clone().requires_grad_()
    y = mixer(x)
    y = y[0] if isinstance(y, tuple) else y
    (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    # a parameter the loss does not reach has no gradient eagerly and a zero one through a captured
    # graph (TNT's global memory writes nothing that a single chunk reads back)
    grads = {
        n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in mixer.named_parameters()
    }
    mixer.zero_grad(set_to_none=True)
    return y.detach(), x.grad, grads


MIXERS = [
    ("titans", {}),
    ("yaad", {}),
    ("moneta", {}),
    ("memora", {}),
    ("omeganet", {}),
    ("atlas", {"muon": "chunk"}),
    ("atlas", {"muon": "token"}),
    ("tnt", {}),
    # per-channel gates (no kernel: what auto runs on CUDA), through each engine's step
    ("titans", {"gates": "channel"}),
    ("yaad", {"gates": "channel"}),
    ("omeganet", {"gates": "channel"}),
    ("atlas", {"muon": "chunk", "gates": "channel"}),
    ("tnt", {"gates": "channel"}),
]


@pytest.mark.parametrize(("name", "options"), MIXERS, ids=[f"{n}-{o}" if o else n for n, o in MIXERS])
def test_compiled_equals_chunked(name, options):
    """float32 operands: the captured steps compute what the eager chunked form computes (outputs and
    the gradients of the input and of every parameter), at a length that ends mid-chunk. Not bitwise:
    the captured graph decomposes some ops (e.g. the LayerNorm backward) differently, so float32
    round-off of a few ulps of the outputs' scale."""
    torch.manual_seed(0)
    mixer = build_mixer(name, 32, 2, **options)
    x = torch.randn(2, 37, 32)
    y0, dx0, g0 = _run(mixer, x, "chunked")
    y1, dx1, g1 = _run(mixer, x, "compiled")
    assert_close("y", y0, y1)
    assert_close("dx", dx0, dx1)
    for n in g0:
        assert_close(n, g0[n], g1[n], atol=1e-7)


def _memory(dtype):
    """A two-layer MLP memory and its inputs, the same values in any dtype (drawn in float64)."""
    torch.manual_seed(1)
    arch = MemoryMLP(2, 16, depth=2, expansion=2.0).to(dtype)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 65, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    lr, mom, keep = (torch.rand(2, 65, 2, generator=g, dtype=torch.float64) for _ in range(3))
    return arch, tuple(t.to(dtype) for t in (q, k, v, 0.5 * lr, 0.9 * mom, 1 - 0.1 * keep))


@pytest.mark.parametrize("recompute", [False, True], ids=["saved", "recomputed"])
def test_compiled_state_and_gradients_equal_chunked(recompute):
    """The engine's step captured: outputs, the final state and the gradients of every input and of
    the initial weights, continuing from a state that stopped mid-chunk (decoding's hand-over); also
    with every step recomputed in the backward (``recomputed_steps``: the checkpoint compiled with the
    step) against the plain eager engine."""
    arch, inputs = _memory(torch.float32)
    results = []
    for run_compiled in (False, True):
        xs = [t.clone().requires_grad_() for t in inputs]
        arch.zero_grad(set_to_none=True)
        with (
            compiled.recomputed_steps(recompute and run_compiled),
            compiled.compiled_steps(torch.float32) if run_compiled else contextlib.nullcontext(),
        ):
            y1, s1 = memory_chunked(arch, *(t[:, :20] for t in xs), chunk_size=16)
            y2, s2 = memory_chunked(arch, *(t[:, 20:] for t in xs), state=s1, chunk_size=16)
        y = torch.cat([y1, y2], 1)
        loss = (y * torch.linspace(-1, 1, 16)).sum() + sum(w.square().sum() for w in s2.weights)
        loss.backward()
        results.append(
            (
                y.detach(),
                [w.detach() for w in s2.weights],
                [x.grad for x in xs],
                [p.grad for p in arch.parameters()],
            )
        )
    (y0, w0, dx0, dp0), (y1, w1, dx1, dp1) = results
    assert_close("y", y0, y1)
    names = [f"W{i}" for i in range(len(w0))] + ["dq", "dk", "dv", "dlr", "dmom", "dkeep"]
    names += [f"d{n}" for n, _ in arch.named_parameters()]
    for name, ref, out in zip(names, [*w0, *dx0, *dp0], [*w1, *dx1, *dp1], strict=True):
        assert_close(name, ref, out)


def _rel_rms(out, ref):
    return ((out.double() - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()


def test_compiled_steps_multiply_in_the_autocast_dtype(monkeypatch):
    """Under bf16 autocast the captured steps compute exactly what the eager steps compute under the
    same autocast, and that is bf16 arithmetic: the error against float64 is far above float32's,
    while the state leaves every step in float32. Against float64 the bf16-operand state drifts as
    the recurrence compounds rounding (about 0.7% after one chunk, 3.4% after four at step sizes up to
    0.5 here); the bound is the kernel self-check's half-precision tolerance."""
    from memnets import self_check

    arch64, inputs64 = _memory(torch.float64)
    y_ref, s_ref = memory_chunked(arch64, *inputs64, chunk_size=16)
    arch, inputs = _memory(torch.float32)
    with compiled.compiled_steps(torch.float32):
        y32, _ = memory_chunked(arch, *inputs, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16), compiled.compiled_steps(torch.bfloat16):
        y16, s16 = memory_chunked(arch, *inputs, chunk_size=16)
    monkeypatch.setattr(compiled, "_compiled_step", lambda fn, device_type, backend: fn)  # eager steps
    with torch.autocast("cpu", dtype=torch.bfloat16), compiled.compiled_steps(torch.bfloat16):
        y16_eager, s16_eager = memory_chunked(arch, *inputs, chunk_size=16)
    assert all(w.dtype == torch.float32 for w in s16.weights)
    assert_close("y", y16_eager, y16)
    for i, (ref, out) in enumerate(zip(s16_eager.weights, s16.weights)):
        assert_close(f"W{i}", ref, out)
    assert _rel_rms(y32, y_ref) < 1e-5 < 1e-3 < _rel_rms(y16, y_ref) < self_check.HALF_TOLERANCE
    for w, ref in zip(s16.weights, s_ref.weights):
        assert _rel_rms(w, ref) < self_check.HALF_TOLERANCE


def test_compiled_backend_is_checked_and_logged(caplog):
    no_steps = dispatch.MemoryDispatch("toy", dispatch.MemoryOp("the toy op", print, print))
    with pytest.raises(ValueError, match=r"toy: backend='compiled' is not available for the toy op"):
        no_steps.check("compiled")
    titans = build_mixer("titans", 32, 2)
    d = titans.op
    with caplog.at_level("INFO", logger=dispatch.log.name):
        assert d.backend("auto", torch.device("cpu")) == "chunked"  # compile time outweighs it on CPU
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert d.backend("compiled", torch.device("cpu")) == "compiled"
    assert (
        "running the compiled backend (asked for compiled on cpu; bfloat16 operands, float32 state"
        in caplog.text
    )
