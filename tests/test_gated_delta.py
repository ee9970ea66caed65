"""Gated delta rule: reference == chunked == triton on outputs, final states and every gradient."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # run the Triton kernels on CPU; must precede the import

import pytest
import torch
import torch.nn.functional as F

from memnets.kernels.gated_delta import gated_delta_rule
from memnets.testing import RATIO, assert_close, nan_allocations

# on MEMNETS_KERNEL_TEST_DEVICE (cpu: the interpreter; scripts/gpu_check.py runs them compiled on cuda)
pytestmark = pytest.mark.usefixtures("kernel_device")


def make_inputs(B, T, H, K, V, dtype, N=None, with_h0=True):
    """Leaf tensors: unit-norm keys (as the mixers feed them), log gates <= 0, beta in [0, 1]."""
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = F.normalize(torch.randn(B, T, H, K, dtype=torch.float64), dim=-1).to(dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, dtype=torch.float64) + 2).to(dtype)
    beta = torch.rand(B, T, H, dtype=dtype)
    h0 = torch.randn(N or B, H, K, V, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    tensors = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": h0 if with_h0 else None}
    return {n: t.requires_grad_() for n, t in tensors.items() if t is not None}


def run(inputs, backend, chunk_size=16, cu_seqlens=None, seed=1, **options):
    """Forward, then backward of <o, do> + <S_T, dS> with fixed random cotangents; return all results."""
    inputs = {n: t.detach().clone().requires_grad_() for n, t in inputs.items()}
    o, S = gated_delta_rule(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["g"],
        inputs["beta"],
        initial_state=inputs.get("initial_state"),
        output_final_state=True,
        cu_seqlens=cu_seqlens,
        chunk_size=chunk_size,
        backend=backend,
        **options,
    )
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same cotangents on every device
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64, device="cpu").to(o)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64, device="cpu").to(S)
    ((o * do).sum() + (S * dS).sum()).backward()
    out = {"o": o.detach(), "final_state": S.detach()}
    out.update({f"d{n}": t.grad for n, t in inputs.items()})
    return out


def check_all(ref, out, ratio=None):
    assert ref.keys() == out.keys()
    for name in ref:
        assert_close(name, ref[name], out[name], ratio)


def check_backend(inputs, backend, chunk_size, ratio=None, cu_seqlens=None, **options):
    """``backend`` against the reference on ``inputs``: every output and gradient, with the backend's
    fresh allocations filled with NaN (a value it forgets to write shows)."""
    ref = run(inputs, "reference", cu_seqlens=cu_seqlens)
    with nan_allocations():
        out = run(inputs, backend, chunk_size, cu_seqlens, **options)
    check_all(ref, out, ratio)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("chunk_size", [1, 16, 32])
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_chunked_matches_reference(T, chunk_size, dtype):
    check_backend(make_inputs(2, T, 2, 8, 6, dtype), "chunked", chunk_size)


def test_chunked_without_initial_state():
    inputs = make_inputs(1, 40, 2, 8, 8, torch.float64, with_h0=False)
    check_all(run(inputs, "reference"), run(inputs, "chunked", 16))


@pytest.mark.parametrize("chunk_size", [1, 16, 32])
def test_chunked_varlen_matches_reference(chunk_size):
    # lengths 1, 39, 0 (empty sequence keeps its state), 65 and 5 packed in one row
    cu = torch.tensor([0, 1, 40, 40, 105, 110], dtype=torch.int32)
    inputs = make_inputs(1, 110, 2, 8, 4, torch.float64, N=5)
    ref = run(inputs, "reference", cu_seqlens=cu)
    with nan_allocations():
        out = run(inputs, "chunked", chunk_size, cu_seqlens=cu)
    check_all(ref, out)


def test_varlen_equals_separate_sequences():
    """The packed reference must equal running each sequence alone (guards the reference itself)."""
    cu = torch.tensor([0, 7, 20])
    inputs = make_inputs(1, 20, 2, 4, 4, torch.float64, N=2)
    o, S = gated_delta_rule(
        *(inputs[n] for n in ("q", "k", "v", "g", "beta")),
        initial_state=inputs["initial_state"],
        output_final_state=True,
        cu_seqlens=cu,
        backend="reference",
    )
    for n, (s, e) in enumerate([(0, 7), (7, 20)]):
        o_n, S_n = gated_delta_rule(
            *(inputs[x][:, s:e] for x in ("q", "k", "v", "g", "beta")),
            initial_state=inputs["initial_state"][n : n + 1],
            output_final_state=True,
            backend="reference",
        )
        assert_close(f"o[{n}]", o_n, o[:, s:e])
        assert_close(f"S[{n}]", S_n, S[n : n + 1])


def test_reference_matches_closed_form_single_step():
    """One token from S0: S1 = e^g (I - b k k^T) S0 + b k v^T, o = scale S1^T q."""
    inputs = make_inputs(1, 1, 1, 3, 2, torch.float64)
    q, k, v, g, b = (inputs[n].detach()[0, 0, 0] for n in ("q", "k", "v", "g", "beta"))
    S0 = inputs["initial_state"].detach()[0, 0]
    S1 = g.exp() * (torch.eye(3, dtype=torch.float64) - b * torch.outer(k, k)) @ S0 + b * torch.outer(k, v)
    o, S = gated_delta_rule(
        *(inputs[n].detach() for n in ("q", "k", "v", "g", "beta")),
        initial_state=inputs["initial_state"].detach(),
        output_final_state=True,
        scale=0.5,
        backend="reference",
    )
    assert_close("S", S1, S[0, 0])
    assert_close("o", 0.5 * S1.T @ q, o[0, 0, 0])


def test_final_state_optional_and_default_scale():
    inputs = {n: t.detach() for n, t in make_inputs(1, 5, 1, 4, 4, torch.float64).items()}
    args = [inputs[n] for n in ("q", "k", "v", "g", "beta")]
    o, S = gated_delta_rule(*args, backend="chunked")
    assert S is None
    o2, _ = gated_delta_rule(*args, scale=4**-0.5, backend="reference")
    assert_close("o", o2, o)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(backend="fast"), "backend"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(q=torch.randn(2, 5, 2)), "q must be"),
        (dict(k=torch.randn(2, 5, 2, 3)), "k must have"),
        (dict(v=torch.randn(2, 4, 2, 4)), "v must be"),
        (dict(g=torch.randn(2, 5, 3)), "g must be"),
        (dict(beta=torch.randn(2, 5)), "beta must be"),
        (dict(v=torch.randn(2, 5, 2, 4, dtype=torch.float64)), "share one dtype"),
        (dict(initial_state=torch.zeros(3, 2, 4, 4)), "initial_state"),
        (dict(cu_seqlens=torch.tensor([0, 5])), "B=1"),
        (dict(q=torch.randint(0, 3, (2, 5, 2, 4))), "floating"),
    ],
)
def test_bad_arguments_raise(change, message):
    q = torch.randn(2, 5, 2, 4)
    args = dict(
        q=q,
        k=torch.randn(2, 5, 2, 4),
        v=torch.randn(2, 5, 2, 4),
        g=torch.randn(2, 5, 2),
        beta=torch.rand(2, 5, 2),
    )
    # the changed tensors were made at collection, on the CPU: on the test's device, so the check named
    # fires and not the device check before it
    args.update({n: t.to(q.device) if isinstance(t, torch.Tensor) else t for n, t in change.items()})
    with pytest.raises((ValueError, TypeError), match=message):
        gated_delta_rule(**args)


def test_bad_cu_seqlens_raise():
    x = torch.randn(1, 6, 1, 2)
    g = torch.zeros(1, 6, 1)
    for cu in (
        torch.tensor([0, 4, 3, 6]),
        torch.tensor([1, 6]),
        torch.tensor([0, 5]),
        torch.tensor([0.0, 6]),
    ):
        with pytest.raises((ValueError, TypeError), match="cu_seqlens"):
            gated_delta_rule(x, x, x, g, g, cu_seqlens=cu)


# ---- triton backend (TRITON_INTERPRET=1 on CPU; shapes kept tiny because the interpreter is slow) ----


@pytest.mark.parametrize(
    "dtype,dot_precision",
    [(torch.float32, "auto"), (torch.float16, "tf32x3"), (torch.float16, "auto")],
    ids=str,
)
@pytest.mark.parametrize("chunk_size", [16, 32])
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_triton_matches_reference(T, chunk_size, dtype, dot_precision):
    """Float32 operands (float32 inputs, or half ones with ``tf32x3`` named) keep the float32 state to
    float32 accuracy; ``auto`` on half inputs rounds every product's operands, the state's too, to
    float16, so everything is held to float16's tolerance."""
    half_operands = dtype == torch.float16 and dot_precision == "auto"
    ratio = RATIO[torch.float16] if half_operands else None
    check_backend(make_inputs(2, T, 1, 8, 6, dtype), "triton", chunk_size, ratio, dot_precision=dot_precision)


@pytest.mark.parametrize("dtype,named", [(torch.float32, "tf32x3"), (torch.float16, "float16")], ids=str)
def test_triton_dot_precision_auto_is_the_inputs_type(dtype, named):
    """``auto`` runs exactly the named mode of the inputs' type: outputs, state and every gradient
    equal bit for bit (a float16 run within float16's tolerance could also be tf32x3)."""
    inputs = make_inputs(1, 40, 1, 8, 6, dtype)
    with nan_allocations():
        auto, out = (run(inputs, "triton", 16, dot_precision=mode) for mode in ("auto", named))
    for name in auto:
        torch.testing.assert_close(auto[name], out[name], rtol=0, atol=0, msg=name)


def test_triton_varlen_matches_reference():
    cu = torch.tensor([0, 1, 40, 40, 105, 110], dtype=torch.int32)
    check_backend(make_inputs(1, 110, 2, 8, 4, torch.float32, N=5), "triton", 32, cu_seqlens=cu)


def test_triton_value_blocks_and_no_initial_state():
    """V = 72 spans two value blocks of 64 in the state kernels; no initial state."""
    check_backend(make_inputs(1, 20, 1, 4, 72, torch.float32, with_h0=False), "triton", 16)


def test_triton_under_torch_compile():
    """The custom ops have fake implementations, so torch.compile traces the op in one graph."""
    inputs = {n: t.detach() for n, t in make_inputs(1, 20, 1, 4, 4, torch.float32).items()}
    args = [inputs[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "beta")]

    def loss(q, k, v, g, beta):
        o, S = gated_delta_rule(
            q, k, v, g, beta, initial_state=inputs["initial_state"], output_final_state=True,
            chunk_size=16, backend="triton",
        )  # fmt: skip
        return o.square().sum() + S.sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    value = compiled(*args)
    value.backward()
    ref_args = [a.detach().clone().requires_grad_() for a in args]
    ref = loss(*ref_args)
    ref.backward()
    assert_close("loss", ref.detach(), value.detach())
    for name, a, r in zip(("q", "k", "v", "g", "beta"), args, ref_args):
        assert_close(f"d{name}", r.grad, a.grad)


def test_triton_rejects_bad_chunk_size_and_dtype():
    x = torch.randn(1, 4, 1, 4)
    g = torch.zeros(1, 4, 1)
    with pytest.raises(ValueError, match="power of two"):
        gated_delta_rule(x, x, x, g, g, chunk_size=24, backend="triton")
    with pytest.raises(TypeError, match="dtypes"):
        gated_delta_rule(x.double(), x.double(), x.double(), g, g, chunk_size=16, backend="triton")
