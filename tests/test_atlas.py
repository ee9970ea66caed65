"""ATLAS family: Omega rule, polynomial features, Newton–Schulz (Muon) memory, omeganet/atlas mixers.

The chunked Omega rule is checked against its token-by-token reference (outputs, final state and the
gradients of every input, gate, parameter and initial-state tensor), against the engine's Titans
memory (window 1, degree 1, no Muon) and against a brute-force windowed loss written here."""

import math

import pytest
import torch
from mixer_checks import check_decode_and_split, check_same_outputs_and_grads, decode

import memnets
import memnets.memory.omega as omega_module
from memnets.memory import MemoryMLP, MemoryState, memory_chunked, memory_reference
from memnets.memory.dotbias import DotBias
from memnets.memory.features import FeatureMemoryMLP, PolynomialFeatures, feature_dim
from memnets.memory.gated import GatedMemoryMLP
from memnets.memory.muon import newton_schulz, newton_schulz_in_basis
from memnets.memory.omega import OmegaState, omega_chunked, omega_reference, window_band
from memnets.testing import assert_close

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation (several times slower
    on a loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -------------------------------------------------------------------------------------------------
# Newton–Schulz


def ns_float64(x, steps, coefficients):
    """Plain float64 transcription of Muon's iteration: x / ‖x‖_F, then x ← a x + b (x xᵀ) x + c (x xᵀ)² x."""
    a, b, c = coefficients
    x = x.double()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True)
    for _ in range(steps):
        g = x @ x.mT
        x = a * x + b * g @ x + c * g @ g @ x
    return x.mT if tall else x


@pytest.mark.parametrize("shape", [(3, 8, 24), (3, 24, 8), (16, 16)])
def test_newton_schulz_matches_float64_and_is_near_orthogonal(shape):
    x = torch.randn(*shape)
    coefficients = (3.4445, -4.7750, 2.0315)
    out = newton_schulz(x, 5, coefficients)
    assert_close("NS5 float32 vs float64", ns_float64(x, 5, coefficients), out, ratio=1e-5)
    sv = torch.linalg.svdvals(out.double())
    assert sv.min() > 0.6 and sv.max() < 1.25, f"singular values after NS5 not near 1: {sv}"
    # the classic cubic converges to the polar factor U Vᵀ
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    polar = newton_schulz(x.double(), 30, (1.5, -0.5, 0.0))
    assert_close("cubic NS -> polar factor", u @ vh, polar, ratio=1e-9)
    assert_close("NS is odd", -out, newton_schulz(-x, 5, coefficients))


def test_newton_schulz_in_a_basis_equals_newton_schulz():
    """NS(U c) = U NS_U(c): the iteration on coordinates through Uᵀ U (tall U c, a batch of c per U),
    and NS(0) = 0 with finite gradients there too."""
    g = torch.Generator().manual_seed(0)
    U = torch.randn(2, 1, 30, 9, generator=g, dtype=F64)
    c = torch.randn(2, 4, 9, 5, generator=g, dtype=F64)
    for coefficients in ((3.4445, -4.7750, 2.0315), (1.5, -0.5, 0.0)):
        want = newton_schulz(U @ c, 5, coefficients)
        got = U @ newton_schulz_in_basis(U.mT @ U, c, 5, coefficients)
        assert_close(f"NS in a basis, {coefficients}", want, got, ratio=1e-12)
    zero = torch.zeros_like(c, requires_grad=True)
    out = newton_schulz_in_basis(U.mT @ U, zero)
    out.sum().backward()
    assert (out == 0).all() and torch.isfinite(zero.grad).all()


def test_newton_schulz_zero_is_finite():
    x = torch.zeros(2, 4, 6, dtype=F64, requires_grad=True)
    y = newton_schulz(x)
    y.sum().backward()
    assert (y == 0).all() and torch.isfinite(x.grad).all()


# -------------------------------------------------------------------------------------------------
# feature maps


@pytest.mark.parametrize("kernel", ["poly", "exp"])
@pytest.mark.parametrize("degree", [1, 2, 3])
def test_feature_map_kernel(kernel, degree):
    phi = PolynomialFeatures(5, degree, kernel).double()
    with torch.no_grad():  # move the learnable coefficients off their start values
        if phi.coef is not None:
            phi.coef.mul_(torch.rand(phi.coef.shape, dtype=F64) + 0.5)
    q, k = torch.randn(7, 5, dtype=F64), torch.randn(7, 5, dtype=F64)
    fq, fk = phi(q), phi(k)
    assert fq.shape[-1] == phi.out_dim == feature_dim(5, degree, kernel)
    assert_close("raw x first", q, fq[..., :5])
    s = (q * k).sum(-1)
    expect = s.clone()
    for i, a in phi.coefficients().items():
        expect = expect + a * s**i
    assert_close("φ(q)·φ(k) = Σ a_i (qᵀk)^i", expect, (fq * fk).sum(-1))


def test_feature_map_exp_starts_at_taylor():
    phi = PolynomialFeatures(4, 4, "exp").double()
    for i, a in phi.coefficients().items():
        assert abs(a.item() - 1 / math.factorial(i)) < 1e-7, (i, a)
    q, k = torch.nn.functional.normalize(torch.randn(2, 6, 4, dtype=F64), dim=-1)
    assert_close("exp kernel", (q * k).sum(-1).exp(), (phi(q) * phi(k)).sum(-1), ratio=2e-3)


# -------------------------------------------------------------------------------------------------
# the Omega rule


def make_problem(B, T, H, d, degree, window, momentum, gated, seed=0, memory="mlp"):
    g = torch.Generator().manual_seed(seed)
    phi = PolynomialFeatures(d, degree).double()
    if memory == "gated_mlp":
        arch = GatedMemoryMLP(H, d, phi.out_dim, expansion=2.0).double()
    else:
        arch = FeatureMemoryMLP(H, d, phi.out_dim, depth=2, expansion=2.0).double()
    with torch.no_grad():
        arch.norm_weight.add_(0.1 * torch.randn(arch.norm_weight.shape, generator=g, dtype=F64))
    feats = lambda n: phi(
        torch.nn.functional.normalize(torch.randn(B, n, H, d, generator=g, dtype=F64), dim=-1)
    )
    inputs = {
        "q": feats(T),
        "k": feats(T),
        "v": torch.randn(B, T, H, d, generator=g, dtype=F64),
        "lr": 0.3 * torch.rand(B, T, H, generator=g, dtype=F64),
        "mom": torch.rand(B, T, H, generator=g, dtype=F64) if momentum else None,
        "keep": 0.8 + 0.2 * torch.rand(B, T, H, generator=g, dtype=F64),
        "win_gate": torch.rand(B, T, H, window, generator=g, dtype=F64) if gated else None,
    }
    return arch, inputs, feats


def random_state(arch, B, window, chunk_size, momentum, muon, feats, seed=1):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda w: 0.3 * torch.randn(w.shape, generator=g, dtype=F64) + w.detach()
    W = arch.initial_weights(B, F64)
    offset = 2 % chunk_size
    n = min(window - 1, 3)
    mem = MemoryState(
        tuple(rnd(w) for w in W),
        tuple(rnd(w) - w.detach() for w in W) if momentum else None,
        tuple(rnd(w) for w in W) if offset else None,
        offset,
    )
    direction = tuple(rnd(w) - w.detach() for w in W) if muon == "chunk" else None
    wk = feats(n)
    wv = torch.randn(B, n, arch.num_heads, arch.dim, generator=g, dtype=F64)
    return OmegaState(mem, wk, wv, direction)


def state_tensors(st):
    m = st.memory
    out = list(m.weights) + list(m.momentum or ()) + list(m.anchor or ()) + list(st.direction or ())
    return [*out, st.window_k, st.window_v]


def run_with_grads(fn, arch, inputs, state, **kw):
    """Outputs, final state and the gradients of every input, gate, parameter and state tensor under
    fixed random cotangents on the outputs and on the final state."""
    leaves = {n: t.clone().requires_grad_() for n, t in inputs.items() if t is not None}
    st = None
    if state is not None:
        ts = [t.clone().requires_grad_() for t in state_tensors(state)]
        leaves.update({f"state{i}": t for i, t in enumerate(ts)})
        it = iter(ts)
        m = state.memory
        take = lambda ws: None if ws is None else tuple(next(it) for _ in ws)
        mem = MemoryState(take(m.weights), take(m.momentum), take(m.anchor), m.offset)
        st = OmegaState(mem, None, None, take(state.direction))
        st.window_k, st.window_v = next(it), next(it)
    args = {n: leaves.get(n) for n in inputs}
    y, final = fn(arch, state=st, **args, **kw)
    outs = [y, *state_tensors(final)]
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=F64)).sum() for o in outs)
    params = dict(arch.named_parameters())
    grads = torch.autograd.grad(loss, list(leaves.values()) + list(params.values()), allow_unused=True)
    names = list(leaves) + [f"param {n}" for n in params]
    return outs, final.memory.offset, dict(zip(names, grads))


def check_omega_chunked_equals_reference(
    arch, inputs, state, ratio: float | None = None, unreached_may_be_zero: bool = True, **kw
) -> tuple[int, int]:
    """``omega_chunked`` against ``omega_reference`` from ``state``: outputs and every gradient; a leaf
    the reference does not reach has none in the chunked run either (or, if ``unreached_may_be_zero``,
    a zero one). Returns both final offsets."""
    ref, ref_off, ref_g = run_with_grads(omega_reference, arch, inputs, state, **kw)
    out, off, g = run_with_grads(omega_chunked, arch, inputs, state, **kw)
    for i, (a, b) in enumerate(zip(ref, out)):
        assert_close(f"output {i}", a, b, ratio=ratio)
    for n, a in ref_g.items():
        if a is None:
            assert g[n] is None or (unreached_may_be_zero and (g[n] == 0).all()), n
        else:
            assert_close(f"grad {n}", a, g[n], ratio=ratio)
    return ref_off, off


CASES = [  # (window, chunk_size, T)
    (1, 4, 13),
    (2, 4, 13),
    (8, 4, 13),
    (11, 4, 23),  # window longer than two chunks
    (3, 1, 7),
    (8, 16, 37),  # a chunk longer than the window
]


@pytest.mark.parametrize("muon", [None, "token", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"c{c[0]}-C{c[1]}-T{c[2]}")
def test_chunked_equals_reference(case, muon):
    window, chunk_size, T = case
    momentum = muon is not None or window != 8  # also covers the momentum-free rule (OmegaNet)
    B, H, d = 2, 2, 3
    arch, inputs, feats = make_problem(B, T, H, d, 2, window, momentum, gated=window > 1)
    kw = dict(window=window, chunk_size=chunk_size, muon=muon, ns_steps=3)
    for state in (None, random_state(arch, B, window, chunk_size, momentum, muon, feats)):
        ref_off, off = check_omega_chunked_equals_reference(arch, inputs, state, **kw)
        assert ref_off == off


@pytest.mark.parametrize("muon", [None, "token", "chunk"])
def test_gated_memory_chunked_equals_reference(muon):
    """Atlas++ memory x + W₁(σ(W₂x) ⊙ W₃x): same checks, window across chunk boundaries."""
    B, H, d, window, chunk_size, T = 2, 2, 3, 6, 4, 13
    arch, inputs, feats = make_problem(B, T, H, d, 2, window, True, True, memory="gated_mlp")
    kw = dict(window=window, chunk_size=chunk_size, muon=muon, ns_steps=3)
    for state in (None, random_state(arch, B, window, chunk_size, True, muon, feats)):
        check_omega_chunked_equals_reference(arch, inputs, state, **kw)


def count_basis_calls(monkeypatch) -> list[int]:
    """Count the chunked engine's Newton–Schulz runs on coordinates (per-token Muon on a wide key path)."""
    calls: list[int] = []

    def counted(*args, **kw):
        calls.append(1)
        return newton_schulz_in_basis(*args, **kw)

    monkeypatch.setattr(omega_module, "newton_schulz_in_basis", counted)
    return calls


@pytest.mark.parametrize("memory", ["mlp", "gated_mlp"])
def test_token_muon_on_a_wide_key_path_equals_reference(monkeypatch, memory):
    """Per-token Muon where the first layer's input (27 degree-2 features of 6 dims) is wider than the
    basis of its momenta (12 hidden columns + 5 gradient rows): Newton–Schulz runs on coordinates
    (:func:`memnets.memory.omega._token_layer`); same checks as above, last chunk partial."""
    calls = count_basis_calls(monkeypatch)
    B, H, d, window, chunk_size, T = 2, 2, 6, 2, 4, 13
    arch, inputs, feats = make_problem(B, T, H, d, 2, window, True, True, memory=memory)
    assert arch.initial_weights(1, F64)[0].shape[-2:] == (27, 12)
    kw = dict(window=window, chunk_size=chunk_size, muon="token", ns_steps=3)
    for state in (None, random_state(arch, B, window, chunk_size, True, "token", feats)):
        ref_off, off = check_omega_chunked_equals_reference(arch, inputs, state, **kw)
        assert ref_off == off
    assert calls


def test_split_and_token_by_token_equal_one_call():
    B, T, H, d, window, chunk = 1, 23, 2, 3, 5, 4
    arch, inp, _ = make_problem(B, T, H, d, 2, window, True, True)
    for muon in (None, "token", "chunk"):
        y, final = omega_chunked(arch, **inp, window=window, chunk_size=chunk, muon=muon)
        st, ys = None, []
        pieces = [(0, 3), (3, 4), (4, 14), *((t, t + 1) for t in range(14, T))]
        for s, e in pieces:
            part = {n: None if t is None else t[:, s:e] for n, t in inp.items()}
            yp, st = omega_chunked(arch, **part, state=st, window=window, chunk_size=chunk, muon=muon)
            ys.append(yp)
        assert_close(f"{muon} pieces", y, torch.cat(ys, 1))
        for a, b in zip(state_tensors(final), state_tensors(st)):
            assert_close(f"{muon} final state", a, b)


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_window_one_degree_one_equals_titans_memory(chunk_size):
    B, T, H, d = 2, 37, 2, 4
    arch = MemoryMLP(H, d, depth=2, expansion=2.0).double()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, T, H, d, generator=g, dtype=F64) for _ in range(3))
    phi = PolynomialFeatures(d, 1)
    lr = 0.3 * torch.rand(B, T, H, generator=g, dtype=F64)
    mom, keep = (
        torch.rand(B, T, H, generator=g, dtype=F64),
        0.9 + 0.1 * torch.rand(B, T, H, generator=g, dtype=F64),
    )
    for m in (mom, None):
        for titans, omega in ((memory_chunked, omega_chunked), (memory_reference, omega_reference)):
            y0, s0 = titans(arch, q, k, v, lr, m, keep, chunk_size=chunk_size)
            y1, s1 = omega(arch, phi(q), phi(k), v, lr, m, keep, window=1, chunk_size=chunk_size)
            assert_close("y", y0, y1)
            for a, b in zip(s0.weights + (s0.momentum or ()), s1.memory.weights + (s1.memory.momentum or ())):
                assert_close("state", a, b)
    # muon="token" with chunk_size 1 equals "chunk" with chunk_size 1
    ya, _ = omega_chunked(arch, q, k, v, lr, mom, keep, window=2, chunk_size=1, muon="token")
    yb, _ = omega_chunked(arch, q, k, v, lr, mom, keep, window=2, chunk_size=1, muon="chunk")
    assert_close("muon token == chunk at C=1", ya, yb)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_windowed_loss_equals_brute_force(window):
    """One chunk covering the sequence, keep = 1, no momentum: W_T = W_0 − ∇_W Σ_t lr_t Σ_j γ[t, j]
    ‖M(k_{t−j}; W_0) − v_{t−j}‖², written here as an explicit double loop."""
    B, T, H, d = 2, 9, 2, 3
    arch, inp, _ = make_problem(B, T, H, d, 2, window, False, True)
    inp["keep"] = None
    W0 = tuple(w.detach().clone().requires_grad_() for w in arch.initial_weights(B, F64))
    k, v = inp["k"].transpose(1, 2), inp["v"].transpose(1, 2)  # [B, H, T, D]
    loss = 0.0
    for t in range(T):
        for j in range(window):
            i = t - j
            if i < 0:
                continue
            err = arch.read(W0, k[:, :, i : i + 1]) - v[:, :, i : i + 1]
            gamma = inp["win_gate"][:, t, :, j]  # [B, H]
            loss = loss + (inp["lr"][:, t] * gamma * err.pow(2).sum((-1, -2))).sum()
    expect = [w - g for w, g in zip(W0, torch.autograd.grad(loss, W0))]
    for fn in (omega_chunked, omega_reference):
        _, st = fn(arch, **inp, window=window, chunk_size=T)
        for a, b in zip(expect, st.memory.weights):
            assert_close(f"{fn.__name__} brute-force window", a, b)


def test_dot_loss_linear_memory_is_kernel_attention():
    """DeepTransformer (ATLAS Eq. 25-26): linear memory, dot-product loss, no forgetting →
    y_t = φ(q_t) W_0 + Σ_{i≤t} lr_i (φ(q_t)·φ(k_i)) v_i, exactly, for any chunk size."""
    B, T, H, d = 1, 11, 2, 3
    phi = PolynomialFeatures(d, 3, "exp").double()
    arch = FeatureMemoryMLP(H, d, phi.out_dim, depth=1, residual=False, layer_norm=False).double()
    q, k = (phi(torch.nn.functional.normalize(torch.randn(B, T, H, d, dtype=F64), dim=-1)) for _ in range(2))
    v, lr = torch.randn(B, T, H, d, dtype=F64), torch.rand(B, T, H, dtype=F64)
    scores = torch.einsum("bthf,bshf->bhts", q, k).tril() * lr.transpose(1, 2)[:, :, None, :]
    expect = torch.einsum("bthf,hfd->bthd", q, arch.init_weights[0]) + torch.einsum(
        "bhts,bshd->bthd", scores, v
    )
    for C in (1, 4, T):
        y, _ = omega_chunked(arch, q, k, v, lr, chunk_size=C, bias=DotBias())
        assert_close(f"kernel attention C={C}", expect, y)


def test_window_band_matches_loops():
    B, H, L, prefix, window = 1, 2, 5, 3, 4
    gate = torch.rand(B, H, L, window, dtype=F64)
    band = window_band(gate, prefix, L, window, gate)
    for n in range(L):
        for e in range(prefix + L):
            j = prefix + n - e
            expect = gate[:, :, n, j] if 0 <= j < window else torch.zeros(B, H, dtype=F64)
            assert torch.equal(band[:, :, n, e], expect)


def test_bad_arguments_raise():
    arch, inp, _ = make_problem(1, 5, 2, 3, 2, 2, False, True)
    with pytest.raises(ValueError, match="muon needs the momentum"):
        omega_chunked(arch, **inp, window=2, muon="token")
    with pytest.raises(ValueError, match="win_gate must have shape"):
        omega_chunked(arch, **inp, window=3)
    with pytest.raises(ValueError, match="muon='bogus'"):
        omega_chunked(arch, **{**inp, "mom": inp["lr"]}, window=2, muon="bogus")


# -------------------------------------------------------------------------------------------------
# mixers

MIXERS = [
    ("omeganet", {}),
    ("atlas", {}),
    ("atlas", {"muon": "chunk"}),
    ("omeganet", {"memory": {"expansion": 2.0, "kind": "gated_mlp"}, "momentum": True}),
    ("omeganet", {"inner_loss": "dot", "forget": False}),  # SWLA / SWDT
]


def tiny(name, **kw):
    opts = {"chunk_size": 4, "window": 3, "memory": {"expansion": 2.0}, **kw}
    return memnets.build_mixer(name, d_model=16, num_heads=2, **opts).double()


@pytest.mark.parametrize("name,kw", MIXERS)
def test_mixer_step_equals_forward(name, kw):
    mixer = tiny(name, **kw)
    x = torch.randn(2, 11, 16, dtype=F64)
    final, state, _ = check_decode_and_split(name, mixer, x, 6)
    assert_close("next token", mixer.step(x[:, 0], final)[0], mixer.step(x[:, 0], state)[0])


@pytest.mark.parametrize("name,kw", MIXERS)
def test_mixer_reference_backend_equals_chunked(name, kw):
    chunked = tiny(name, feature_kernel="exp", **kw)
    reference = tiny(name, feature_kernel="exp", backend="reference", **kw)
    reference.load_state_dict(chunked.state_dict())
    x = torch.randn(1, 10, 16, dtype=F64)
    cot = torch.randn(1, 10, 16, dtype=F64)
    check_same_outputs_and_grads(reference, chunked, x, cot, every_param_learns=True)


def test_mixer_causal_and_packed():
    mixer = tiny("atlas", muon="chunk")
    x = torch.randn(1, 15, 16, dtype=F64)
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, 9:] = torch.randn(1, 6, 16, dtype=F64)
    assert_close("prefix unchanged", y[:, :9], mixer(x2)[0][:, :9])
    packed, _ = mixer(x, cu_seqlens=torch.tensor([0, 6, 15]))
    assert_close("packed", torch.cat([mixer(x[:, :6])[0], mixer(x[:, 6:])[0]], 1), packed)


def test_mixer_options_and_errors():
    # per-token Muon (the default) has a forward kernel (tests/test_token_muon_kernel.py), off under auto
    atlas = memnets.build_mixer("atlas", d_model=16, num_heads=2, backend="triton")
    assert atlas.op.no_kernel("triton") is None
    assert "muon='token' under backend='auto'" in atlas.op.no_kernel("auto")
    # degree-2 features (keys 44 wide, values 8) run in the wide-state kernels, which take no packed
    # sequences (tests/test_mlp_memory_wide_keys.py)
    wide = memnets.build_mixer("omeganet", d_model=16, num_heads=2, backend="triton")
    assert wide.op.no_kernel("triton") is None
    assert "key width 44 != value width 8" in wide.op.no_kernel("auto")
    with pytest.raises(ValueError, match="window must be >= 1"):
        memnets.build_mixer("omeganet", d_model=16, num_heads=2, window=0)
    with pytest.raises(Exception, match="feature_kernel"):
        memnets.build_mixer("omeganet", d_model=16, num_heads=2, feature_kernel="cosine")
    m = memnets.build_mixer("atlas", d_model=16, num_heads=2, ns_coefficients=[1.5, -0.5, 0.0], ns_steps=7)
    assert m.ns_coefficients == (1.5, -0.5, 0.0) and m.ns_steps == 7
    assert m.state_size(64) > 0


@pytest.mark.parametrize("name,kw", [("omeganet", {}), ("atlas", {"muon": "chunk"})])
def test_bf16_autocast_long_sequence_is_finite(name, kw):
    mixer = memnets.build_mixer(
        name, d_model=16, num_heads=1, chunk_size=64, window=4, memory={"expansion": 1.0}, **kw
    )
    x = torch.randn(1, 4096, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = mixer(x)
    y.float().pow(2).mean().backward()
    assert torch.isfinite(y.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters() if p.grad is not None)


def test_bf16_autocast_atlas_token_muon_is_finite():
    mixer = memnets.build_mixer(
        "atlas", d_model=16, num_heads=1, chunk_size=16, window=4, memory={"expansion": 1.0}
    )
    x = torch.randn(1, 1024, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = mixer(x)
    y.float().pow(2).mean().backward()
    assert torch.isfinite(y.float()).all()


def test_decoding_works_in_inference_mode():
    """Serving stacks decode under eval() + inference_mode(): the memory must still learn there."""
    mixer = tiny("atlas", memory={"expansion": 2.0, "kind": "gated_mlp"}).eval()
    x = torch.randn(1, 9, 16, dtype=F64)
    y, _ = mixer(x)
    with torch.inference_mode():
        decoded, _ = decode(mixer, x)
    assert_close("inference-mode decode", y.detach(), decoded)
