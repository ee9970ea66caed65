"""Miras (Moneta, Yaad, Memora): chunked == token-by-token reference (outputs, final state, every
gradient), chunk size 1 == the paper's online rules written out here, decoding == forward, the limits
that pin the algebra, and bf16 stability at T = 4096 with extreme gates."""

import functools

import pytest
import torch
from mixer_checks import (
    check_bf16_long_sequence_finite,
    check_decode_and_split,
    check_generate_matches_forward,
    check_same_outputs_and_grads,
)

import memnets
from memnets.memory import L2Bias, MemoryMLP, MemoryState, memory_chunked
from memnets.memory.miras import (
    ChunkEnd,
    HuberBias,
    KLBias,
    LpBias,
    LqNormalize,
    SimplexSoftmax,
    miras_chunked,
    miras_reference,
    retained_weights,
)
from memnets.testing import assert_close

F64 = torch.float64
MIXERS = ["moneta", "yaad", "memora"]


def rules(B, T, H, D):
    """(bias, bias_params, retention, lag) for each model; extra pieces for the KL bias and the
    coordinate Huber and the paper's literal Moneta map."""
    return {
        "moneta": (LpBias(3.0), None, LqNormalize(4.0, "unit"), False),
        "moneta_paper": (LpBias(3.0), None, LqNormalize(4.0, "paper"), False),
        "yaad": (HuberBias("norm"), 0.5 + torch.rand(B, T, H, dtype=F64), None, False),
        "yaad_coord": (HuberBias("coord"), 0.1 + torch.rand(B, T, H, D, dtype=F64), None, False),
        "memora": (L2Bias(), None, SimplexSoftmax(), True),
        "kl": (KLBias(), None, None, False),
    }


def inputs(B, T, H, D, seed=0):
    # step sizes stay moderate: the inner dynamics on random data are chaotic at large lr, which
    # amplifies round-off differences between two exact algorithms exponentially in T
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, D, dtype=F64, generator=g) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    lr = 0.2 * torch.rand(B, T, H, dtype=F64, generator=g)
    keep = 0.6 + 0.4 * torch.rand(B, T, H, dtype=F64, generator=g)
    return q, k, v, lr, keep


def run_with_grads(fn, arch, tensors, state0, cot_y, cot_w, momentum=None, **kw):
    """Outputs, final state and the gradients of a random functional of both w.r.t. every input,
    every parameter of ``arch`` and the initial state. ``momentum``: (the ``mom`` gate, the initial
    momentum S_0, the cotangent of the final S) for the rule with momentum."""
    leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
    init = tuple(w.clone().requires_grad_() for w in state0)
    q, k, v, lr, keep, bp = leaves
    mom, S0, cot_s = momentum or (None, None, ())
    if momentum is not None:
        mom, S0 = mom.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in S0)
    y, st = fn(arch, q, k, v, lr, mom, keep, MemoryState(init, S0), bias_params=bp, **kw)
    loss = (y * cot_y).sum() + sum((w * c).sum() for w, c in zip(st.weights, cot_w))
    loss = loss + sum((s * c).sum() for s, c in zip(st.momentum or (), cot_s))
    # the given initial state replaces the learnable W_0 (its gradient is checked by the mixer tests)
    params = [p for n, p in arch.named_parameters() if not n.startswith("init_weights")]
    extra = [mom, *S0] if momentum is not None else []
    wrt = [t for t in leaves if t is not None] + extra + list(init) + params
    return y, st, torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize("rule", ["moneta", "moneta_paper", "yaad", "yaad_coord", "memora", "kl"])
@pytest.mark.parametrize(("T", "chunk_size"), [(1, 4), (13, 5), (37, 8), (11, 1)])
def test_chunked_equals_reference(rule, T, chunk_size):
    B, H, D = 2, 2, 3
    torch.manual_seed(1)
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    q, k, v, lr, keep = inputs(B, T, H, D)
    bias, bp, retention, lag = rules(B, T, H, D)[rule]
    kw = dict(chunk_size=chunk_size, bias=bias, retention=retention, lag=lag)
    ref, out = check_chunked_equals_reference(rule, arch, (q, k, v, lr, keep, bp), **kw)
    assert ref.offset == out.offset == T % chunk_size


@pytest.mark.parametrize("rule", ["moneta", "moneta_paper", "moneta_chunk_end", "yaad", "memora"])
@pytest.mark.parametrize(("T", "chunk_size"), [(1, 4), (13, 5), (37, 8)])
def test_momentum_chunked_equals_reference(rule, T, chunk_size):
    """With momentum (``mom``, Titans Eq. 13-14 on the accumulator): chunked == reference, final S
    included, and the gradients of ``mom`` and S_0."""
    B, H, D = 2, 2, 3
    torch.manual_seed(2)
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    q, k, v, lr, keep = inputs(B, T, H, D, seed=4)
    mom = 0.5 + 0.5 * torch.rand(B, T, H, dtype=F64)
    name = rule.removesuffix("_chunk_end")
    bias, bp, retention, lag = rules(B, T, H, D)[name]
    if rule == "moneta_chunk_end":
        retention = ChunkEnd(retention)
    kw = dict(chunk_size=chunk_size, bias=bias, retention=retention, lag=lag)
    # half the step sizes: momentum adds up steps, and the random-data inner dynamics amplify round-off
    check_chunked_equals_reference(rule, arch, (q, k, v, 0.5 * lr, keep, bp), mom, **kw)


def check_chunked_equals_reference(
    label: str, arch: MemoryMLP, inputs: tuple, mom: torch.Tensor | None = None, **kw
) -> tuple[MemoryState, MemoryState]:
    """``miras_chunked`` against ``miras_reference`` from a random state under random cotangents:
    outputs, final weights (and momentum, with the ``mom`` gate) and every gradient. Returns both
    final states."""
    q = inputs[0]
    B, T, H, D = q.shape
    state0 = tuple(0.5 * torch.randn(B, *w.shape, dtype=F64) for w in arch.init_weights)
    cot_y = torch.randn(B, T, H, D, dtype=F64)
    cot_w = tuple(torch.randn_like(w) for w in state0)
    if mom is not None:
        S0 = tuple(0.1 * torch.randn_like(w) for w in state0)
        kw["momentum"] = (mom, S0, tuple(torch.randn_like(w) for w in state0))
    ref = run_with_grads(miras_reference, arch, inputs, state0, cot_y, cot_w, **kw)
    out = run_with_grads(miras_chunked, arch, inputs, state0, cot_y, cot_w, **kw)
    assert_close(f"{label} y", ref[0], out[0])
    for i, (a, b) in enumerate(zip(ref[1].weights, out[1].weights)):
        assert_close(f"{label} final A{i}", a, b)
    assert (ref[1].momentum is None) == (out[1].momentum is None) == (mom is None)
    for i, (a, b) in enumerate(zip(ref[1].momentum or (), out[1].momentum or ())):
        assert_close(f"{label} final S{i}", a, b)
    for i, (a, b) in enumerate(zip(ref[2], out[2])):
        assert_close(f"{label} grad #{i}", a, b)
    return ref[1], out[1]


# ---------------------------------------------------------------------------------------------------
# chunk size 1 == the paper's online rules, written out for a linear memory (row form: M(k) = k W)


def online(rule, A0, W0, q, k, v, lr, keep, delta=None, mom=None):
    """Miras Eq. 24-27 token by token for one linear memory per (batch, head), from the accumulator
    A0 (Moneta) or the weights W0; returns the reads y_t = M(q_t; W_t) and the last W. With ``mom``
    each model's step −η_t ∇ goes through momentum first, S_t = mom_t S_{t−1} − η_t ∇ (Titans Eq. 14,
    from S_0 = 0); Memora then steps its logits (log W up to a per-output constant)."""
    W, A, S, ys = W0, A0, 0.0, []
    for t in range(q.shape[1]):
        kt, vt, qt = k[:, t, :, None, :], v[:, t, :, None, :], q[:, t, :, None, :]  # [B, H, 1, D]
        a, et = keep[:, t, :, None, None], lr[:, t, :, None, None]
        r = kt @ W - vt
        if rule == "moneta":  # Eq. 24-25: A_t = α A − η p (Sign(r) ⊙ |r|^{p−1}) kᵀ, W = A/‖A‖_4^2
            grad = kt.transpose(-1, -2) @ (3 * torch.sign(r) * r.abs().pow(2))
        elif rule == "yaad":  # Eq. 26 with ℓ2 = ‖r‖², ℓ1 = 2‖r‖₁ (smooth Sign = tanh(10 x))
            d = delta[:, t, :, None, None]
            small = r.norm(dim=-1, keepdim=True) <= d
            grad = kt.transpose(-1, -2) @ torch.where(small, 2 * r, 2 * d * torch.tanh(10 * r))
        else:  # memora, Eq. 27: W_t = Softmax(α log W_{t−1} − η ∇‖r‖²), softmax over each output's inputs
            grad = kt.transpose(-1, -2) @ (2 * r)
        if mom is None:
            step = -et * grad
        else:
            S = step = mom[:, t, :, None, None] * S - et * grad
        if rule == "moneta":
            A = a * A + step
            W = A / A.pow(4).sum((-2, -1), keepdim=True).pow(0.5)
        elif rule == "yaad":
            W = a * W + step
        else:
            W = torch.softmax(a * torch.log(W) + step, dim=-2)
        ys.append(qt @ W)
    return torch.cat(ys, 2).transpose(1, 2), W


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("rule", ["moneta", "yaad", "memora"])
def test_chunk_size_one_is_the_online_rule(rule, momentum):
    B, T, H, D = 2, 17, 2, 4
    arch = MemoryMLP(H, D, depth=1, residual=False, layer_norm=False).double()
    q, k, v, lr, keep = inputs(B, T, H, D, seed=3)
    mom = 0.5 + 0.5 * torch.rand(B, T, H, dtype=F64) if momentum else None
    S0 = (torch.zeros(B, H, D, D, dtype=F64),) if momentum else None
    A0 = torch.randn(B, H, D, D, dtype=F64)
    delta = 0.2 + torch.rand(B, T, H, dtype=F64)
    if rule == "moneta":
        pieces = dict(bias=LpBias(3.0, eps=1e-14), retention=LqNormalize(4.0, "paper"))
    elif rule == "yaad":
        pieces = dict(bias=HuberBias("norm", 10.0), bias_params=delta)
    else:
        pieces = dict(retention=SimplexSoftmax())
    retention = pieces.get("retention")
    W0 = retained_weights((A0,), retention)[0]
    y_ref, W_ref = online(rule, A0, W0, q, k, v, lr, keep, delta, mom)
    sizes = [(1, False), (1, True), (2, True)] if rule == "memora" else [(1, False)]
    for chunk_size, lag in sizes:  # Memora: the lag token makes chunk size 2 exact too
        y, st = miras_chunked(
            arch, q, k, v, lr, mom, keep, MemoryState((A0,), S0), chunk_size=chunk_size, lag=lag, **pieces
        )
        assert_close(f"{rule} C={chunk_size} y", y_ref, y, ratio=1e-8)
        assert_close(
            f"{rule} C={chunk_size} W", W_ref, retained_weights(st.weights, retention)[0], ratio=1e-8
        )


# ---------------------------------------------------------------------------------------------------
# limits


def test_limits_reduce_to_the_l2_memory():
    """Yaad with a huge δ, and Moneta with p = 2 and plain weight decay (or q = 2), are the L2 memory
    with the same gates."""
    B, T, H, D = 2, 19, 2, 4
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    q, k, v, lr, keep = inputs(B, T, H, D, seed=5)
    y_l2, st_l2 = memory_chunked(arch, q, k, v, lr, None, keep, chunk_size=4, bias=L2Bias())
    big = torch.full((B, T, H), 1e6, dtype=F64)
    for name, kw in {
        "yaad δ=1e6": dict(bias=HuberBias("norm"), bias_params=big),
        "yaad coord δ=1e6": dict(bias=HuberBias("coord"), bias_params=big[..., None].expand(B, T, H, D)),
        "moneta p=2, L2": dict(bias=LpBias(2.0)),
        "moneta p=2, q=2": dict(bias=LpBias(2.0), retention=LqNormalize(2.0, "paper")),
    }.items():
        y, st = miras_chunked(arch, q, k, v, lr, None, keep, chunk_size=4, **kw)
        assert_close(f"{name} y", y_l2, y)
        for a, b in zip(st_l2.weights, st.weights):
            assert_close(f"{name} W", a, b)


def test_memora_rows_stay_on_the_simplex():
    mixer = tiny("memora", chunk_size=3)
    x = torch.randn(2, 10, 16, dtype=F64)
    state = None
    for t in range(x.shape[1]):
        _, state = mixer.step(x[:, t], state)
        for w in retained_weights(state.memory.weights, mixer.retention):
            assert (w >= 0).all()
            assert_close("column sums", torch.ones_like(w.sum(-2)), w.sum(-2))


def test_memora_memory_has_no_layer_norm_unless_asked():
    """Memora's default memory drops the output LayerNorm (``SimplexMemorySpec``); other memory keys keep
    that default, and ``norm: true`` restores Miras §5.3's x + LN(...)."""
    build = functools.partial(memnets.build_mixer, "memora", d_model=16, num_heads=2)
    assert not build().memory.layer_norm
    assert not build(memory={"expansion": 2.0}).memory.layer_norm
    assert build(memory={"norm": True}).memory.layer_norm
    assert memnets.build_mixer("moneta", d_model=16, num_heads=2).memory.layer_norm


def test_moneta_paper_map_is_scale_inverse():
    """The documented instability: Eq. 24 taken literally at q = 4 gives ‖W‖₄ = 1/‖A‖₄; the unit map
    is scale-free."""
    A = torch.randn(3, 5, 7, dtype=F64)
    for c in (0.1, 10.0):
        n4 = (c * A).pow(4).sum((-2, -1)).pow(0.25)
        paper, unit = LqNormalize(4.0, "paper")(c * A), LqNormalize(4.0, "unit")(c * A)
        assert_close("paper", 1 / n4, paper.pow(4).sum((-2, -1)).pow(0.25))
        assert_close("unit", torch.ones_like(n4), unit.pow(4).sum((-2, -1)).pow(0.25))
        assert_close("direction", unit, LqNormalize(4.0, "unit")(A))


# ---------------------------------------------------------------------------------------------------
# the mixers


def tiny(name, **kw):
    opts = {"chunk_size": 4, "memory": {"expansion": 2.0}, "gate_rank": 4, **kw}
    return memnets.build_mixer(name, d_model=16, num_heads=2, **opts).double()


# each mixer with its defaults, Moneta with the paper's chunk-end normalisation, and momentum
VARIANTS = [
    ("moneta", {}),
    ("moneta", {"normalize_at": "chunk_end"}),
    ("yaad", {}),
    ("memora", {}),
    ("moneta", {"momentum": True}),
    ("memora", {"momentum": True}),
]


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
def test_step_equals_forward(name, opts):
    mixer = tiny(name, **opts)
    x = torch.randn(2, 11, 16, dtype=F64)
    final, state, s2 = check_decode_and_split(name, mixer, x, 6)
    assert s2.memory.offset == final.memory.offset
    nxt = torch.randn(2, 16, dtype=F64)
    assert_close(f"{name} next", mixer.step(nxt, final)[0], mixer.step(nxt, state)[0])


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
def test_reference_backend_equals_chunked(name, opts):
    torch.manual_seed(0)
    chunked, reference = tiny(name, **opts), tiny(name, backend="reference", **opts)
    reference.load_state_dict(chunked.state_dict())
    x, cot = torch.randn(1, 9, 16, dtype=F64), torch.randn(1, 9, 16, dtype=F64)
    check_same_outputs_and_grads(reference, chunked, x, cot)


def test_options_and_backend_errors():
    # Memora's softmax and Moneta's per-token ℓ_q map run in the whole-state and the wide-state kernels
    # (tests/test_memora_kernel.py, tests/test_moneta_kernel.py)
    for name in ("moneta", "memora"):
        for d_model, heads in ((16, 2), (1024, 16)):
            mixer = memnets.build_mixer(name, d_model=d_model, num_heads=heads, backend="triton")
            assert mixer.op.no_kernel("triton") is None
    with pytest.raises(ValueError, match="backend='triton' does not support memory depth 3"):
        memnets.build_mixer("yaad", d_model=16, num_heads=2, memory={"depth": 3}, backend="triton")
    with pytest.raises(ValueError, match="q must be >= 2"):
        memnets.build_mixer("moneta", d_model=16, num_heads=2, q=1.5)
    with pytest.raises(ValueError, match="p must be >= 1"):
        memnets.build_mixer("moneta", d_model=16, num_heads=2, p=0.5)
    with pytest.raises(ValueError, match="simplex_scale|scale must be > 0"):
        memnets.build_mixer("memora", d_model=16, num_heads=2, simplex_scale=0.0)


def test_yaad_threshold_starts_above_the_typical_residual():
    """Yaad's δ starts at 2√d (norm form): with the residual LayerNorm memory ‖r‖₂ = ‖M(k) − v‖₂ is
    just above √d at init, so the old √d start put most tokens on the ℓ1 branch and 2√d puts none
    there (RESULTS.md section 12). ``delta_init`` overrides it and must be positive."""
    x = torch.randn(2, 24, 16, dtype=F64)

    def l1_share(**opts):
        torch.manual_seed(0)
        yaad = memnets.build_mixer("yaad", d_model=16, num_heads=2, **opts).double()
        delta = yaad.bias_params(yaad.gates(x)).transpose(1, 2)  # [B, H, T]
        qkv = {n: t.transpose(1, 2) for n, t in yaad.inputs(x, None)[0].items()}
        r = yaad.memory.read(yaad.memory.initial_weights(2, F64), qkv["k"]) - qkv["v"]
        return delta, (r.norm(dim=-1) > delta).double().mean().item()

    delta, share = l1_share()
    assert abs(delta.mean().item() - 2 * 8**0.5) < 0.1  # the gate bias; its input adds a little spread
    assert share == 0.0
    assert l1_share(delta_init=8**0.5)[1] > 0.5
    with pytest.raises(ValueError, match="delta_init must be > 0"):
        memnets.build_mixer("yaad", d_model=16, num_heads=2, delta_init=0.0)


@pytest.mark.parametrize("name", ["moneta", "yaad", "memora"])
def test_lr_init_sets_the_starting_step_apart_from_the_cap(name):
    """``lr = lr_max·sigmoid(·)`` starts at lr_max/2, or at ``lr_init`` when given (inside (0, lr_max))."""
    x = torch.randn(2, 24, 16, dtype=F64)

    def start(**opts):
        torch.manual_seed(0)
        mixer = memnets.build_mixer(name, d_model=16, num_heads=2, **opts).double()
        return (mixer.lr_max * torch.sigmoid(mixer.gates(x)["lr"])).mean().item()

    assert start(lr_max=0.4) == pytest.approx(0.2, rel=0.05)  # the gate's input adds a little spread
    assert start(lr_max=0.4, lr_init=0.01) == pytest.approx(0.01, rel=0.05)
    for bad in (0.0, 0.4, 1.0):
        with pytest.raises(ValueError, match=rf"{name}: lr_init must be in \(0, lr_max=0.4\), got {bad}"):
            memnets.build_mixer(name, d_model=16, num_heads=2, lr_max=0.4, lr_init=bad)


def test_lq_floor_only_acts_below_it():
    """The literal L_q map's floor (Moneta ``norm_floor``) changes nothing while ‖A‖_q >= floor, and
    below it scales by floor^{-(q-2)}, so ‖W‖_q stays <= 1/floor."""
    a = torch.randn(3, 4, 5, dtype=torch.float64)
    norms = a.abs().pow(4).sum((-2, -1)).pow(0.25)
    big, small = a / norms[:, None, None], 1e-3 * a / norms[:, None, None]  # ‖·‖_4 = 1 and 1e-3
    exact, floored = LqNormalize(4.0, "paper"), LqNormalize(4.0, "paper", floor=0.1)
    assert_close("above the floor", exact(big), floored(big))
    assert_close("below the floor", small / 0.1**2, floored(small))
    with pytest.raises(ValueError, match="floor must be >= 0"):
        LqNormalize(4.0, "paper", floor=-1.0)


@pytest.mark.parametrize(
    ("name", "opts"), [("moneta", {}), ("moneta", {"normalize": "unit"}), ("yaad", {}), ("memora", {})]
)
def test_bf16_autocast_long_sequence_extreme_gates_is_finite(name, opts):
    """T = 4096, lr at its max, keep ≈ 0 in head 0 and ≈ 1 in head 1 (Yaad: δ tiny, then huge):
    finite outputs and gradients under bf16 autocast."""
    mixer = memnets.build_mixer(
        name, d_model=8, num_heads=2, chunk_size=128, memory={"expansion": 2.0}, gate_rank=4, **opts
    )
    extreme = torch.tensor([-12.0, 12.0])
    with torch.no_grad():
        mixer.gates.up.bias[:2] = 12.0  # lr = lr_max in both heads
        mixer.gates.up.bias[2:4] = extreme  # keep
        mixer.gates.up.bias[4:] = extreme.repeat_interleave(mixer.gates.up.bias[4:].numel() // 2)  # δ
    check_bf16_long_sequence_finite(mixer, 8)


@pytest.mark.parametrize("name", MIXERS)
def test_lm_generate_matches_forward(name):
    check_generate_matches_forward(name, {"chunk_size": 4, "memory": {"expansion": 2.0}, "gate_rank": 4}, 6)


@pytest.mark.parametrize("name", MIXERS)
def test_paper_sized_configs_have_the_papers_parameter_counts(name):
    from pathlib import Path

    from memnets.config import load_config

    root = Path(__file__).resolve().parent.parent / "configs" / "lm"
    for size, target in (("340m", 340e6), ("760m", 760e6)):
        cfg = load_config(root / f"{name}-{size}.yaml", ["data.path=corpus.bin"])
        with torch.device("meta"):
            n = memnets.build_model(cfg.model).num_params()
        assert abs(n - target) / target < 0.02, f"{name}-{size}: {n / 1e6:.1f}M parameters"
