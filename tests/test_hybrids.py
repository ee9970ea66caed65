"""MAG/MAL around the ATLAS memories (atlas_mag, atlas_mal, omeganet_mag, omeganet_mal) and the
DeepTransformers mixers (dla, swla, deep_transformer, swdt, dot): decoding equals the parallel forward,
the reference backend equals the chunked one (outputs and every parameter gradient), packed equals
separate, and each DeepTransformers mixer computes its ATLAS equation, written here as a token loop."""

import pytest
import torch
from mixer_checks import check_decode_and_split, check_packed_equals_separate, check_same_outputs_and_grads

import memnets
from memnets.registry import mixer_options
from memnets.testing import assert_close

F64 = torch.float64
HYBRIDS = ["atlas_mag", "atlas_mal", "omeganet_mag", "omeganet_mal"]
DEEP = ["dla", "swla", "deep_transformer", "swdt", "dot"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(name, **kw):
    opts = {"chunk_size": 4, "memory": {"expansion": 2.0}}
    if name in HYBRIDS:
        opts.update(window=5, memory_window=3)
    elif name in ("swla", "swdt", "dot"):
        opts["window"] = 3
    if name.startswith("atlas"):
        opts["muon"] = "chunk"
    opts.update(kw)
    return memnets.build_mixer(name, d_model=16, num_heads=2, **opts).double()


@pytest.mark.parametrize("name", HYBRIDS + DEEP)
def test_step_equals_forward(name):
    torch.manual_seed(0)
    mixer = tiny(name)
    x = torch.randn(2, 11, 16, dtype=F64)
    final, state, _ = check_decode_and_split(name, mixer, x, 6)
    assert_close(f"{name} next", mixer.step(x[:, 0], final)[0], mixer.step(x[:, 0], state)[0])


@pytest.mark.parametrize("name", HYBRIDS + DEEP)
def test_reference_backend_equals_chunked(name):
    torch.manual_seed(0)
    chunked = tiny(name)
    reference = tiny(name, backend="reference")
    reference.load_state_dict(chunked.state_dict())
    x, cot = torch.randn(1, 10, 16, dtype=F64), torch.randn(1, 10, 16, dtype=F64)
    check_same_outputs_and_grads(reference, chunked, x, cot, every_param_learns=True)


@pytest.mark.parametrize("name", HYBRIDS)
def test_hybrid_packed_equals_separate(name):
    check_packed_equals_separate(tiny(name))


def test_hybrid_options():
    """The wrapper's options come first, then the memory mixer's; a clash is renamed memory_<name>."""
    assert list(mixer_options("atlas_mag"))[:4] == ["window", "num_persistent", "combine", "head_dim"]
    assert "memory_window" in mixer_options("omeganet_mal") and "combine" not in mixer_options("omeganet_mal")
    assert list(mixer_options("titans_mal"))[:3] == ["window", "num_persistent", "residual"]
    assert list(mixer_options("titans_mal"))[3:] == list(mixer_options("titans"))
    m = memnets.build_mixer("atlas_mag", d_model=16, num_heads=2, window=7, memory_window=2, combine="sum")
    assert (m.attention.window, m.memory.window, m.memory.muon, m.combine) == (7, 2, "token", "sum")
    with pytest.raises(ValueError, match="atlas_mal: num_persistent must be >= 0, got -1"):
        memnets.build_mixer("atlas_mal", d_model=16, num_heads=2, num_persistent=-1)
    with pytest.raises(memnets.validation.ConfigError, match="unknown option"):
        memnets.build_mixer("titans_mag", d_model=16, num_heads=2, memory_window=3)


def test_mal_residual():
    """MAL's ``residual``: o = y + SW-Attn(y) with y the memory's output (the same weights without it
    give SW-Attn(y)); decoding still equals the parallel forward."""
    torch.manual_seed(0)
    plain, res = tiny("omeganet_mal"), tiny("omeganet_mal", residual=True)
    res.load_state_dict(plain.state_dict())
    x = torch.randn(2, 11, 16, dtype=F64)
    y_mem, _ = plain.memory(x)
    assert_close("o", plain(x)[0] + y_mem, res(x)[0])
    check_decode_and_split("omeganet_mal", res, x, 6)


EQUATIONS = {  # name: (inner loss, forgetting) of ATLAS Eq. 19, 20, 25, 27
    "dla": ("dot", True),
    "swla": ("dot", True),
    "deep_transformer": ("dot", False),
    "swdt": ("dot", False),
    "dot": ("l2", False),
}


@pytest.mark.parametrize("name", DEEP)
def test_deep_transformers_compute_their_equation(name):
    """chunk_size 1 (gradients at W_{t−1}, as the equations): the mixer's memory read equals
    W_t = keep_t W_{t−1} − lr_t ∇_W Σ_{j<c} γ_j^{(t)} ℓ(M(φ(k_{t−j}); W_{t−1}), v_{t−j}),
    y_t = M(φ(q_t); W_t), with ℓ = −⟨·, v⟩ (dot) or ‖· − v‖² (l2), keep = 1 without forgetting."""
    torch.manual_seed(0)
    loss_kind, forgets = EQUATIONS[name]
    mixer = tiny(name, chunk_size=1)
    assert (mixer.gates.forget, mixer.gates.momentum) == (forgets, False)
    x = torch.randn(2, 9, 16, dtype=F64)
    y, _ = mixer(x)
    qkv, _ = mixer.inputs(x, None)
    q, k = mixer.features(qkv["q"]), mixer.features(qkv["k"])
    g = mixer.gates(x, F64)
    c, arch = mixer.window, mixer.memory
    W = arch.initial_weights(2, F64)
    reads = []
    for t in range(x.shape[1]):
        point = tuple(w.detach().requires_grad_() for w in W)
        total = 0.0
        for j in range(min(c, t + 1)):
            kj, vj = k[:, t - j, :, None].detach(), qkv["v"][:, t - j, :, None].detach()  # [B, H, 1, D]
            pred = arch.read(point, kj)
            ell = -(pred * vj).sum(-1) if loss_kind == "dot" else (pred - vj).pow(2).sum(-1)
            gamma = 1.0 if c == 1 else g["win_gate"][:, t, :, j, None].detach()
            total = total + (gamma * ell).sum()
        grads = torch.autograd.grad(total, point)
        lr = g["lr"][:, t, :, None, None].detach()
        keep = g["keep"][:, t, :, None, None].detach() if forgets else 1.0
        W = tuple(keep * w.detach() - lr * d for w, d in zip(W, grads))
        reads.append(arch.read(W, q[:, t, :, None].detach())[:, :, 0])
    expect = mixer.output(torch.stack(reads, 1), x)
    assert_close(f"{name} = its equation", expect, y.detach())


def test_deep_transformer_linear_memory_is_unnormalised_attention():
    """ATLAS Eq. 26: a linear memory without forgetting reads y_t = φ(q_t) W_0 + Σ_{i≤t} lr_i
    (φ(q_t)·φ(k_i)) v_i, at any chunk size (φ·φ the Taylor approximation of exp(qᵀk))."""
    torch.manual_seed(0)
    memory = {"depth": 1, "residual": False, "norm": False}
    for chunk_size in (1, 4):
        mixer = tiny("deep_transformer", chunk_size=chunk_size, memory=memory)
        x = torch.randn(1, 9, 16, dtype=F64)
        y, _ = mixer(x)
        qkv, _ = mixer.inputs(x, None)
        q, k = mixer.features(qkv["q"]), mixer.features(qkv["k"])
        lr = mixer.gates(x, F64)["lr"]
        scores = torch.einsum("bthf,bshf->bhts", q, k).tril() * lr.transpose(1, 2)[:, :, None, :]
        read = torch.einsum("bthf,hfd->bthd", q, mixer.memory.init_weights[0]) + torch.einsum(
            "bhts,bshd->bthd", scores, qkv["v"]
        )
        assert_close(f"kernel attention C={chunk_size}", mixer.output(read, x).detach(), y.detach())
