"""The shared memory engine: chunked dual form == token-by-token reference (outputs, states and every
gradient), chunk size 1 == the exact online recurrence, delta-rule limit, state continuation, gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from memnets.memory import (
    L2Bias,
    MemoryMLP,
    MemorySpec,
    MemoryState,
    initial_state,
    memory_chunked,
    memory_read,
    memory_reference,
)
from memnets.memory.rule import chunk_coefficients, safe_log
from memnets.mixers.atlas import OmegaMemorySpec
from memnets.registry import build_mixer
from memnets.testing import assert_close

F64 = torch.float64


def make_inputs(B, T, H, D, momentum=True, requires_grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=F64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=F64), dim=-1)
    v = torch.randn(B, T, H, D, generator=g, dtype=F64)
    lr = 0.1 * torch.rand(B, T, H, generator=g, dtype=F64)
    mom = 0.5 * torch.rand(B, T, H, generator=g, dtype=F64) if momentum else None
    keep = 0.9 + 0.1 * torch.rand(B, T, H, generator=g, dtype=F64)
    tensors = [t for t in (q, k, v, lr, mom, keep) if t is not None]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return q, k, v, lr, mom, keep


def random_state(arch, B, momentum, seed=1):
    """A non-trivial initial state with leaf tensors, so its gradient is tested too."""
    g = torch.Generator().manual_seed(seed)
    w = tuple(
        (w0.detach()[None].expand(B, *w0.shape) + 0.1 * torch.randn(B, *w0.shape, generator=g, dtype=F64))
        for w0 in arch.init_weights
    )
    s = tuple(0.1 * torch.randn_like(x) for x in w) if momentum else None
    for t in (*w, *(s or ())):
        t.requires_grad_(True)
    return MemoryState(w, s)


def run_and_grad(fn, arch, inputs, state, chunk_size, cot_seed=3):
    """Forward, then backward a random cotangent through the outputs and the final state."""
    q, k, v, lr, mom, keep = inputs
    y, st = fn(arch, q, k, v, lr, mom, keep, state, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(cot_seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum()
    finals = [*st.weights, *(st.momentum or ())]
    for t in finals:
        loss = loss + (t * torch.randn(t.shape, generator=g, dtype=F64)).sum()
    leaves = [t for t in inputs if t is not None] + list(arch.parameters())
    if state is not None:
        leaves += [*state.weights, *(state.momentum or ())]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return y, st, grads


def compare(ref, out):
    (y1, s1, g1), (y2, s2, g2) = ref, out
    assert_close("y", y1, y2)
    assert s1.offset == s2.offset
    for name, a, b in (
        ("weights", s1.weights, s2.weights),
        ("momentum", s1.momentum or (), s2.momentum or ()),
    ):
        for i, (x, z) in enumerate(zip(a, b)):
            assert_close(f"final {name}[{i}]", x, z)
    assert (s1.anchor is None) == (s2.anchor is None)
    for i, (a, b) in enumerate(zip(g1, g2)):
        if a is None and b is None:
            continue
        assert_close(f"grad[{i}]", a, b)


@pytest.mark.parametrize("T", [1, 63, 65, 100])
@pytest.mark.parametrize("C", [1, 2, 16, 64])
def test_chunked_equals_reference(T, C):
    arch = MemoryMLP(2, 4, depth=2, expansion=2.0, residual=True, layer_norm=True).double()
    inputs = make_inputs(1, T, 2, 4)
    state = random_state(arch, 1, momentum=True)
    compare(
        run_and_grad(memory_reference, arch, inputs, state, C),
        run_and_grad(memory_chunked, arch, inputs, state, C),
    )


@pytest.mark.parametrize(
    "depth,activation,residual,layer_norm,momentum",
    [
        (1, "gelu", False, False, False),
        (1, "gelu", True, True, True),
        (3, "silu", False, True, True),
        (2, "tanh", True, False, False),
    ],
)
def test_chunked_equals_reference_architectures(depth, activation, residual, layer_norm, momentum):
    arch = MemoryMLP(
        2, 4, depth=depth, expansion=1.5, activation=activation, residual=residual, layer_norm=layer_norm
    ).double()
    with torch.no_grad():
        for p in arch.parameters():
            p.add_(0.1 * torch.randn_like(p))  # LN affine away from (1, 0)
    inputs = make_inputs(2, 37, 2, 4, momentum=momentum)
    compare(
        run_and_grad(memory_reference, arch, inputs, None, 8),
        run_and_grad(memory_chunked, arch, inputs, None, 8),
    )


@pytest.mark.parametrize("T", [13, 16])
def test_chunk_end_hook_matches_reference(T):
    """A post-chunk map on the weights (Moneta-style normalisation) is applied at the same places."""
    arch = MemoryMLP(2, 4, depth=2, expansion=2.0).double()
    inputs = make_inputs(1, T, 2, 4)

    def normalise(ws):
        return tuple(w / w.pow(2).sum((-2, -1), keepdim=True).sqrt() for w in ws)

    def run(fn):
        q, k, v, lr, mom, keep = inputs
        y, st = fn(arch, q, k, v, lr, mom, keep, chunk_size=4, chunk_end=normalise)
        grads = torch.autograd.grad(y.sum() + st.weights[0].sum(), [q, k, lr, *arch.parameters()])
        return y, st, grads

    compare(run(memory_reference), run(memory_chunked))


def _mlp(ws, x):
    """Independent memory forward for the online test: depth-2 GELU MLP, residual + LayerNorm(affine)."""
    (w1, w2), (g, b) = ws
    z = F.gelu(x @ w1) @ w2
    return x + F.layer_norm(z, (z.shape[-1],)) * g + b


def test_chunk_size_one_is_exact_online_recurrence():
    """Titans (arXiv 2501.00663) Eq. 13-15 written out: u_t = ∇ℓ(W_{t-1}), S_t = mom S_{t-1} - lr u_t, W_t = keep W_{t-1} + S_t, y_t = M(q_t; W_t)."""
    H, D, T = 2, 4, 23
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    q, k, v, lr, mom, keep = make_inputs(1, T, H, D, requires_grad=False)
    y, st = memory_chunked(arch, q, k, v, lr, mom, keep, chunk_size=1)
    affine = (arch.norm_weight.detach(), arch.norm_bias.detach())
    for h in range(H):
        W = [w[h].detach().clone() for w in arch.init_weights]
        S = [torch.zeros_like(w) for w in W]
        for t in range(T):
            Wg = [w.clone().requires_grad_() for w in W]
            loss = (_mlp((Wg, (affine[0][h], affine[1][h])), k[0, t, h]) - v[0, t, h]).pow(2).sum()
            u = torch.autograd.grad(loss, Wg)
            S = [mom[0, t, h] * s - lr[0, t, h] * g for s, g in zip(S, u)]
            W = [keep[0, t, h] * w + s for w, s in zip(W, S)]
            expect = _mlp((W, (affine[0][h], affine[1][h])), q[0, t, h])
            assert_close(f"y[t={t}, h={h}]", expect, y[0, t, h])
        for i in range(2):
            assert_close(f"W[{i}] h={h}", W[i], st.weights[i][0, h])
            assert_close(f"S[{i}] h={h}", S[i], st.momentum[i][0, h])


@pytest.mark.parametrize("mom_zero", [True, False])
def test_linear_memory_is_delta_rule(mom_zero):
    """Linear memory, L2 bias, mom = 0 (or no momentum), keep = 1, C = 1: S_t = S_{t-1} - β_t kᵀ(k S_{t-1} - v), β_t = 2 lr_t."""
    B, T, H, D = 2, 30, 3, 5
    arch = MemoryMLP(H, D, depth=1, residual=False, layer_norm=False).double()
    q, k, v, lr, _, _ = make_inputs(B, T, H, D, requires_grad=False)
    mom = torch.zeros(B, T, H, dtype=F64) if mom_zero else None
    y, st = memory_chunked(arch, q, k, v, lr, mom, None, chunk_size=1)
    S = arch.init_weights[0].detach()[None].expand(B, H, D, D).clone()
    for t in range(T):
        kt, vt, qt = k[:, t, :, None, :], v[:, t, :, None, :], q[:, t, :, None, :]  # [B, H, 1, D]
        S = S - 2 * lr[:, t, :, None, None] * kt.transpose(-1, -2) @ (kt @ S - vt)
        assert_close(f"y[{t}]", (qt @ S)[:, :, 0], y[:, t])
    assert_close("final state", S, st.weights[0])


def token_by_token(arch, q, k, v, lr, mom, keep, C: int) -> tuple[torch.Tensor, MemoryState]:
    """``memory_chunked`` fed one token per call: the outputs ``[B, T, H, D]`` and the final state."""
    state, ys = None, []
    for t in range(q.shape[1]):
        sl = slice(t, t + 1)
        yt, state = memory_chunked(
            arch, q[:, sl], k[:, sl], v[:, sl], lr[:, sl], mom[:, sl], keep[:, sl], state, chunk_size=C
        )
        ys.append(yt)
    return torch.cat(ys, 1), state


@pytest.mark.parametrize("C", [1, 3, 8])
def test_state_continuation_and_token_by_token(C):
    """A sequence split anywhere (including inside a chunk), or fed one token at a time, equals one call."""
    arch = MemoryMLP(2, 4, depth=2, expansion=2.0).double()
    q, k, v, lr, mom, keep = make_inputs(2, 21, 2, 4, requires_grad=False)
    y, st = memory_chunked(arch, q, k, v, lr, mom, keep, chunk_size=C)
    for cut in (5, 11):
        y1, s1 = memory_chunked(
            arch, q[:, :cut], k[:, :cut], v[:, :cut], lr[:, :cut], mom[:, :cut], keep[:, :cut], chunk_size=C
        )
        y2, s2 = memory_chunked(
            arch,
            q[:, cut:],
            k[:, cut:],
            v[:, cut:],
            lr[:, cut:],
            mom[:, cut:],
            keep[:, cut:],
            s1,
            chunk_size=C,
        )
        assert_close(f"split at {cut}", y, torch.cat([y1, y2], 1))
        for a, b in zip(st.weights, s2.weights):
            assert_close("final weights", a, b)
    assert_close("token by token", y, token_by_token(arch, q, k, v, lr, mom, keep, C)[0])
    # the reference continues from a chunked state too
    yr, _ = memory_reference(
        arch, q[:, 11:], k[:, 11:], v[:, 11:], lr[:, 11:], mom[:, 11:], keep[:, 11:], s1, chunk_size=C
    )
    assert_close("reference from chunked state", y[:, 11:], yr)


def test_memory_read_uses_current_weights():
    arch = MemoryMLP(2, 4, depth=2).double()
    st = initial_state(arch, 3, momentum=False)
    x = torch.randn(3, 5, 2, 4, dtype=F64)
    expect = arch.read(st.weights, x.transpose(1, 2)).transpose(1, 2)
    assert_close("read", expect, memory_read(arch, st, x))


def test_extreme_gates_closed_form_is_finite():
    """mom and keep exactly 0 or 1 (log = -inf or 0) give finite coefficients and gradients."""
    L = 16
    lr = torch.rand(1, 1, L, dtype=torch.float32, requires_grad=True)
    gates = torch.tensor([0.0, 1.0, 1e-12, 1 - 1e-7] * 4, dtype=torch.float32)[None, None].requires_grad_()
    c = chunk_coefficients(lr, safe_log(gates), safe_log(gates.flip(-1)))
    total = c.G.sum() + c.beta.sum() + c.f.sum() + c.s_coef.sum() + c.m_end.sum()
    total.backward()
    for t in (c.G, c.beta, c.f, lr.grad, gates.grad):
        assert torch.isfinite(t).all()
    assert (lr.detach().max() * L + 1e-6 >= c.G).all()


def test_gradcheck_float64():
    arch = MemoryMLP(1, 3, depth=2, expansion=1.0).double()
    q, k, v, lr, mom, keep = make_inputs(1, 5, 1, 3)

    def f(q, k, v, lr, mom, keep, *params):
        y, st = memory_chunked(arch, q, k, v, lr, mom, keep, chunk_size=2)
        return y, *st.weights, *st.momentum

    assert torch.autograd.gradcheck(f, (q, k, v, lr, mom, keep, *arch.parameters()), fast_mode=True)


def test_bad_inputs_are_named():
    arch = MemoryMLP(2, 4)
    q = torch.randn(1, 3, 2, 4)
    lr = torch.rand(1, 3, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        memory_chunked(arch, q, q, q, lr, chunk_size=0)
    with pytest.raises(ValueError, match="keep must have shape"):
        memory_chunked(arch, q, q, q, lr, keep=torch.rand(1, 3))
    with pytest.raises(ValueError, match="momentum"):
        memory_chunked(
            arch, q, q, q, lr, mom=torch.rand(1, 3, 2), state=initial_state(arch, 1, momentum=False)
        )
    with pytest.raises(ValueError, match="H=3"):
        memory_chunked(MemoryMLP(3, 4), q, q, q, lr)
    assert isinstance(L2Bias().grad(q, q), torch.Tensor)


@pytest.mark.parametrize("activation", ["gelu", "silu", "tanh"])
def test_unit_input_init_gives_unit_preactivations(activation):
    """``init="unit_input"``: for unit-norm keys (the mixers l2-normalise them) every layer's
    pre-activation starts at unit variance; ``fan_in`` leaves the output near 0.1. Tolerance 5%: the
    std over 20,000 keys x 4 heads varies with the weights' draw (seeds 0-2 of every activation land
    within 1.5% of 1), and the gain is exact to 1e-6."""
    torch.manual_seed(0)
    k = F.normalize(torch.randn(4, 20_000, 32, dtype=F64), dim=-1)
    stds = {}
    for init in ("fan_in", "unit_input"):
        arch = MemoryMLP(4, 32, activation=activation, init=init).double()
        z1 = torch.einsum("hnd,hde->hne", k, arch.init_weights[0])
        z2 = torch.einsum("hnd,hde->hne", arch.act(z1), arch.init_weights[1])
        stds[init] = (z1.std().item(), z2.std().item())
    assert stds["unit_input"][0] == pytest.approx(1.0, rel=0.05)
    assert stds["unit_input"][1] == pytest.approx(1.0, rel=0.05)
    assert stds["fan_in"][1] < 0.3  # the small pre-LayerNorm output unit_input is there to avoid


def test_memory_init_is_validated():
    with pytest.raises(ValueError, match="init='xavier' is not one of"):
        MemoryMLP(2, 4, init="xavier")


def test_norm_scale_sets_the_memory_output_scale():
    """``norm_scale`` starts the LayerNorm's outer scale γ there, so the memory's output before the
    residual has norm norm_scale·√d for any weights (the LayerNorm normalises each row to √d; the
    shift starts at 0; its ε = 1e-5 shrinks the norm by about ε / (2 var z), below 1e-3 relative here).
    It reaches every MLP memory through ``MemorySpec`` and the mixers' options."""
    torch.manual_seed(0)
    x = F.normalize(torch.randn(1, 2, 5, 8, dtype=F64), dim=-1)
    for scale in (1.0, 0.1):
        arch = MemorySpec(residual=False, norm_scale=scale).build(2, 8).double()
        out = arch.read(arch.initial_weights(1), x)
        want = torch.full((1, 2, 5), scale * 8**0.5, dtype=F64)
        torch.testing.assert_close(out.norm(dim=-1), want, atol=0, rtol=1e-3)
    feature = OmegaMemorySpec(norm_scale=0.1).build_features("omeganet", 2, 8, 44)
    assert torch.all(feature.norm_weight == 0.1)
    mixer = build_mixer("yaad", 16, 2, memory={"norm_scale": 0.1})
    assert torch.all(mixer.memory.norm_weight == 0.1)
    with pytest.raises(ValueError, match="norm_scale must be > 0, got 0"):
        MemoryMLP(2, 4, norm_scale=0.0)


def test_init_std_scales_the_initial_weights():
    """``memory.init_std`` multiplies every layer's initial draw (the same draw under the same seed),
    through ``MemorySpec``, the feature memories and the mixers' options; it must be positive."""
    for build in (
        lambda spec: spec.build(2, 8),
        lambda spec: OmegaMemorySpec(**vars(spec)).build_features("omeganet", 2, 8, 44),
        lambda spec: OmegaMemorySpec(**vars(spec), kind="gated_mlp").build_features("atlas", 2, 8, 44),
    ):
        torch.manual_seed(0)
        base = build(MemorySpec())
        torch.manual_seed(0)
        wide = build(MemorySpec(init_std=8.0))
        for a, b in zip(base.init_weights, wide.init_weights, strict=True):
            torch.testing.assert_close(b, 8.0 * a, atol=0, rtol=1e-6)
    torch.manual_seed(0)
    plain = build_mixer("memora", 16, 2)
    torch.manual_seed(0)
    scaled = build_mixer("memora", 16, 2, memory={"init_std": 8.0})
    torch.testing.assert_close(
        scaled.memory.init_weights[0], 8.0 * plain.memory.init_weights[0], atol=0, rtol=1e-6
    )
    with pytest.raises(ValueError, match="init_std must be > 0, got 0"):
        MemorySpec(init_std=0.0).build(2, 4)


def test_read_with_every_tokens_own_weights():
    """``read`` with per-token weights ``[B, H, L, d_in, d_out]`` (a retention map's W_t) is every token
    read alone with its weights, in float64 to round-off."""
    torch.manual_seed(0)
    arch = MemoryMLP(2, 4, expansion=2.0).double()
    x = torch.randn(3, 2, 5, 4, dtype=F64)
    weights = tuple(torch.randn(3, 2, 5, *shape, dtype=F64) for shape in arch.shapes)
    alone = torch.cat(
        [arch.read(tuple(w[:, :, t] for w in weights), x[:, :, t : t + 1]) for t in range(5)], 2
    )
    assert_close("per-token read", alone, arch.read(weights, x))
