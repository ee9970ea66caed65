"""Per-channel gates (``gates: channel``): one gate per output unit of every weight matrix (Titans
arXiv 2501.00663 App. C's diag gates; Miras arXiv 2504.13173 §5.4's channel-wise gates). Chunked ==
token-by-token reference (outputs, states, every gradient incl. the initial state), chunk size 1 ==
the exact online rule, decoding == one call; the dispatcher keeps them off the Triton kernels."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import assert_all_close, forward_backward, state_tensors
from test_atlas import check_omega_chunked_equals_reference as omega_chunked_equals_reference
from test_atlas import count_basis_calls
from test_atlas import make_problem as atlas_problem
from test_atlas import random_state as atlas_random_state
from test_memory_engine import compare, random_state, run_and_grad, token_by_token
from test_miras import check_chunked_equals_reference as miras_chunked_equals_reference
from test_miras import inputs as miras_inputs
from test_miras import rules as miras_rules
from test_tnt import compare as tnt_compare
from test_tnt import grads_of as tnt_grads

import memnets
from memnets import dispatch
from memnets.memory import MemoryMLP, MemoryState, gate_units, memory_chunked, memory_reference
from memnets.memory.chunk_read import chunk_read_memory, chunk_read_memory_reference
from memnets.memory.miras import ChunkEnd, miras_chunked, miras_reference
from memnets.memory.omega import omega_chunked, omega_reference
from memnets.memory.sharded import sharded_memory
from memnets.testing import assert_close
from memnets.validation import ConfigError

F64 = torch.float64


def channel_inputs(arch, B, T, momentum=True, seed=0):
    """q, k, v and per-channel gates ``[B, T, H, N]`` (N = the memory's output units), all leaves."""
    H, D, N = arch.num_heads, arch.dim, sum(gate_units(arch))
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=F64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=F64), dim=-1)
    v = torch.randn(B, T, H, D, generator=g, dtype=F64)
    lr = 0.1 * torch.rand(B, T, H, N, generator=g, dtype=F64)
    mom = 0.5 * torch.rand(B, T, H, N, generator=g, dtype=F64) if momentum else None
    keep = 0.8 + 0.2 * torch.rand(B, T, H, N, generator=g, dtype=F64)
    for t in (q, k, v, lr, mom, keep):
        if t is not None:
            t.requires_grad_(True)
    return q, k, v, lr, mom, keep


# -------------------------------------------------------------------------------------------------
# the shared engine (Titans; TNT's local memories)


@pytest.mark.parametrize("T", [1, 63, 65, 100])
@pytest.mark.parametrize("depth,momentum", [(1, True), (2, True), (2, False), (3, True)])
def test_engine_chunked_equals_reference(T, depth, momentum):
    arch = MemoryMLP(2, 4, depth=depth, expansion=1.5, layer_norm=depth > 1, residual=depth > 1).double()
    inputs = channel_inputs(arch, 1, T, momentum)
    state = random_state(arch, 1, momentum)
    compare(
        run_and_grad(memory_reference, arch, inputs, state, 16),
        run_and_grad(memory_chunked, arch, inputs, state, 16),
    )


def test_engine_chunk_size_one_is_the_online_rule():
    """Titans App. C per column: S_t = diag(mom_t) S_{t-1} − diag(lr_t) u_t, W_t = diag(keep_t) W_{t-1} + S_t
    (row form: the diagonals scale each matrix's output columns), y_t = M(q_t; W_t)."""
    H, D, T = 2, 4, 9
    arch = MemoryMLP(H, D, depth=2, expansion=2.0, residual=False, layer_norm=False).double()
    q, k, v, lr, mom, keep = (None if t is None else t.detach() for t in channel_inputs(arch, 1, T))
    y, st = memory_chunked(arch, q, k, v, lr, mom, keep, chunk_size=1)
    units = gate_units(arch)
    for h in range(H):
        W = [w[h].detach().clone() for w in arch.init_weights]
        S = [torch.zeros_like(w) for w in W]
        for t in range(T):
            Wg = [w.clone().requires_grad_() for w in W]
            loss = (F.gelu(k[0, t, h] @ Wg[0]) @ Wg[1] - v[0, t, h]).pow(2).sum()
            u = torch.autograd.grad(loss, Wg)
            a, m, kp = (g[0, t, h].split(units) for g in (lr, mom, keep))
            S = [mi * s - ai * g for mi, ai, s, g in zip(m, a, S, u)]
            W = [ki * w + s for ki, w, s in zip(kp, W, S)]
            assert_close(f"y[t={t}, h={h}]", F.gelu(q[0, t, h] @ W[0]) @ W[1], y[0, t, h])
        for i in range(2):
            assert_close(f"W[{i}] h={h}", W[i], st.weights[i][0, h])


@pytest.mark.parametrize("C", [1, 3, 16])
def test_engine_token_by_token_equals_one_call(C):
    arch = MemoryMLP(2, 4, depth=2, expansion=2.0).double()
    q, k, v, lr, mom, keep = (t.detach() for t in channel_inputs(arch, 2, 21))
    y, st = memory_chunked(arch, q, k, v, lr, mom, keep, chunk_size=C)
    ys, state = token_by_token(arch, q, k, v, lr, mom, keep, C)
    assert_close("token by token", y, ys)
    for a, b in zip(st.weights, state.weights):
        assert_close("final weights", a, b)


def test_engine_channel_gates_equal_to_head_gates_match_the_head_path():
    """A per-channel gate constant over the units is the per-head gate."""
    arch = MemoryMLP(2, 4, depth=2, expansion=2.0).double()
    q, k, v, lr, mom, keep = (t.detach() for t in channel_inputs(arch, 1, 19))
    N = lr.shape[-1]
    head = [g[..., 0] for g in (lr, mom, keep)]
    y1, s1 = memory_chunked(arch, q, k, v, *head, chunk_size=8)
    y2, s2 = memory_chunked(arch, q, k, v, *(g[..., None].expand(-1, -1, -1, N) for g in head), chunk_size=8)
    assert_close("y", y1, y2)
    for a, b in zip(s1.weights + s1.momentum, s2.weights + s2.momentum):
        assert_close("state", a, b)


def test_engine_gate_shapes_are_named():
    arch = MemoryMLP(2, 4, depth=2, expansion=2.0)
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(
        ValueError, match=r"lr must have shape \[B, T, H\] = \[1, 3, 2\], got \(1, 3, 2, 5\).*\[1, 3, 2, 12\]"
    ):
        memory_chunked(arch, q, q, q, torch.rand(1, 3, 2, 5))
    with pytest.raises(ValueError, match="all per head or all per channel"):
        memory_chunked(arch, q, q, q, torch.rand(1, 3, 2, 12), keep=torch.rand(1, 3, 2))


# -------------------------------------------------------------------------------------------------
# Miras (Moneta, Yaad, Memora): channel-wise η_t, α_t of §5.4


def channel_gates(arch, B, T):
    """Per-channel step size and retention (no momentum), not leaves."""
    _, _, _, lr, _, keep = channel_inputs(arch, B, T, momentum=False)
    return lr.detach(), keep.detach()


@pytest.mark.parametrize(
    "rule", ["moneta", "moneta_paper", "moneta_chunk_end", "yaad", "yaad_coord", "memora"]
)
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_miras_chunked_equals_reference(rule, T):
    B, H, D, C = 1, 2, 3, 16
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    lr, keep = channel_gates(arch, B, T)
    q, k, v, _, _ = miras_inputs(B, T, H, D)
    name = rule.removesuffix("_chunk_end")
    bias, bp, retention, lag = miras_rules(B, T, H, D)["moneta_paper" if name == "moneta" else name]
    if rule == "moneta_chunk_end":
        retention = ChunkEnd(retention)
    kw = dict(chunk_size=C, bias=bias, retention=retention, lag=lag)
    miras_chunked_equals_reference(rule, arch, (q, k, v, lr, keep, bp), **kw)


@pytest.mark.parametrize("rule", ["moneta", "yaad", "memora"])
def test_miras_momentum_chunked_equals_reference(rule):
    """Per-channel step size, momentum and retention on the Miras accumulator."""
    B, H, D, C, T = 1, 2, 3, 16, 65
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    _, _, _, lr, mom, keep = (t.detach() for t in channel_inputs(arch, B, T, momentum=True))
    q, k, v, _, _ = miras_inputs(B, T, H, D)
    bias, bp, retention, lag = miras_rules(B, T, H, D)["moneta_paper" if rule == "moneta" else rule]
    kw = dict(chunk_size=C, bias=bias, retention=retention, lag=lag)
    miras_chunked_equals_reference(rule, arch, (q, k, v, lr, keep, bp), mom, **kw)


@pytest.mark.parametrize("rule", ["moneta", "memora"])
def test_miras_chunk_size_one_equals_reference(rule):
    B, H, D, T = 1, 2, 3, 11
    arch = MemoryMLP(H, D, depth=2, expansion=2.0).double()
    lr, keep = channel_gates(arch, B, T)
    q, k, v, _, _ = miras_inputs(B, T, H, D)
    bias, bp, retention, lag = miras_rules(B, T, H, D)[rule]
    kw = dict(chunk_size=1, bias=bias, retention=retention, lag=lag, bias_params=bp)
    y1, s1 = miras_reference(arch, q, k, v, lr, None, keep, **kw)
    y2, s2 = miras_chunked(arch, q, k, v, lr, None, keep, **kw)
    assert_close("y", y1, y2)
    for a, b in zip(s1.weights, s2.weights):
        assert_close("state", a, b)


# -------------------------------------------------------------------------------------------------
# the Omega rule (OmegaNet; without Muon)


def omega_channel_problem(B, T, memory, momentum, seed=0, d=3, degree=1):
    H, window = 2, 4
    arch, inputs, feats = atlas_problem(B, T, H, d, degree, window, momentum, True, seed=seed, memory=memory)
    g = torch.Generator().manual_seed(seed + 1)
    N = sum(gate_units(arch))
    inputs["lr"] = 0.1 * torch.rand(B, T, H, N, generator=g, dtype=F64)
    inputs["keep"] = 0.8 + 0.2 * torch.rand(B, T, H, N, generator=g, dtype=F64)
    inputs["mom"] = 0.5 * torch.rand(B, T, H, N, generator=g, dtype=F64) if momentum else None
    return arch, inputs, feats, window


@pytest.mark.parametrize("T", [1, 63, 65, 100])
@pytest.mark.parametrize("memory,momentum", [("mlp", False), ("mlp", True), ("gated_mlp", True)])
def test_omega_chunked_equals_reference(T, memory, momentum):
    """Tolerance 1e-8: the windowed loss's outer gradients here reach ~1e4 and round-off between the two
    exact algorithms grows with T (per-head gates on the same problem already reach 7e-10 at T = 100)."""
    B, C = 1, 16
    arch, inputs, feats, window = omega_channel_problem(B, T, memory, momentum)
    kw = dict(window=window, chunk_size=C)
    for state in (None, atlas_random_state(arch, B, window, C, momentum, None, feats)):
        # unreached: the initial weights, when a state replaces them
        ref_off, off = omega_chunked_equals_reference(
            arch, inputs, state, ratio=1e-8, unreached_may_be_zero=False, **kw
        )
        assert ref_off == off


def test_omega_chunk_size_one_and_token_by_token():
    B, T = 1, 17
    arch, inputs, _, window = omega_channel_problem(B, T, "mlp", True)
    y1, s1 = omega_reference(arch, **inputs, window=window, chunk_size=1)
    y2, s2 = omega_chunked(arch, **inputs, window=window, chunk_size=1)
    assert_close("chunk size 1", y1.detach(), y2)
    for a, b in zip(s1.memory.weights, s2.memory.weights):
        assert_close("chunk size 1 state", a.detach(), b)
    y, final = omega_chunked(arch, **inputs, window=window, chunk_size=4)
    st, ys = None, []
    for t in range(T):
        part = {n: None if x is None else x[:, t : t + 1] for n, x in inputs.items()}
        yt, st = omega_chunked(arch, **part, state=st, window=window, chunk_size=4)
        ys.append(yt)
    assert_close("token by token", y, torch.cat(ys, 1))
    for a, b in zip(final.memory.weights, st.memory.weights):
        assert_close("final weights", a, b)


@pytest.mark.parametrize(("T", "C"), [(1, 16), (63, 16), (65, 16), (100, 16), (23, 1)])
@pytest.mark.parametrize("muon,memory", [("token", "mlp"), ("chunk", "mlp"), ("chunk", "gated_mlp")])
def test_atlas_muon_chunked_equals_reference(T, C, muon, memory):
    """Atlas (ATLAS Eq. 32-33) with per-channel θ_t, η_t, α_t: columns of S before Newton–Schulz,
    of the orthogonalised step after it, of W; tolerance as for the Omega rule above."""
    B = 1
    arch, inputs, feats, window = omega_channel_problem(B, T, memory, True)
    kw = dict(window=window, chunk_size=C, muon=muon, ns_steps=3)
    for state in (None, atlas_random_state(arch, B, window, C, True, muon, feats)):
        # unreached (the Muon direction at chunk size 1): no or a zero gradient
        ref_off, off = omega_chunked_equals_reference(arch, inputs, state, ratio=1e-8, **kw)
        assert ref_off == off


def test_atlas_token_muon_on_a_wide_key_path_equals_reference(monkeypatch):
    """Per-token Muon on coordinates (27 degree-2 features against 12 hidden columns + 11 gradient rows)
    with per-channel gates: the momentum's columns scaled inside the coordinates, the steps' after."""
    calls = count_basis_calls(monkeypatch)
    B, T, C = 1, 23, 8
    arch, inputs, feats, window = omega_channel_problem(B, T, "mlp", True, d=6, degree=2)
    kw = dict(window=window, chunk_size=C, muon="token", ns_steps=3)
    for state in (None, atlas_random_state(arch, B, window, C, True, "token", feats)):
        ref_off, off = omega_chunked_equals_reference(arch, inputs, state, ratio=1e-8, **kw)
        assert ref_off == off
    assert calls


# -------------------------------------------------------------------------------------------------
# TNT: the global memory (chunk-start reads) and the local memories (shards, Q-K projection)


def tnt_inputs(arch, T):
    q, k, v, lr, _, _ = channel_inputs(arch, 2, T, momentum=False)
    return q, k, v, lr


@pytest.mark.parametrize("C", [1, 16])
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_tnt_global_memory_chunked_equals_reference(T, C):
    a = MemoryMLP(2, 4, depth=2, expansion=2.0).double()
    q, k, v, lr = tnt_inputs(a, T)
    w0 = tuple((w + 0.1 * torch.randn_like(w)).requires_grad_() for w in a.initial_weights(2, F64))
    ref = chunk_read_memory_reference(a, q, k, v, lr, MemoryState(w0), chunk_size=C)
    out = chunk_read_memory(a, q, k, v, lr, MemoryState(w0), chunk_size=C)
    params = (q, k, v, lr, *w0, *a.parameters())
    outs_ref, outs = (ref[0], *ref[1].weights), (out[0], *out[1].weights)
    tnt_compare("outputs", outs_ref, outs)
    tnt_compare("grads", tnt_grads(outs_ref, params), tnt_grads(outs, params))


@pytest.mark.parametrize("C", [1, 8])
@pytest.mark.parametrize("T", [1, 63, 65, 100])
def test_tnt_local_memory_chunked_equals_reference(T, C):
    a = MemoryMLP(2, 4, depth=2, expansion=2.0).double()
    q, k, v, lr = tnt_inputs(a, T)
    opts = {"chunk_size": C, "shard_size": 32, "projection": "l2"}
    ref = sharded_memory(a, q, k, v, lr, backend="reference", **opts)
    out = sharded_memory(a, q, k, v, lr, **opts)
    outs_ref, outs = [ref[0]], [out[0]]
    if ref[1].memory is not None:
        outs_ref += [*ref[1].memory.weights, ref[1].gram]
        outs += [*out[1].memory.weights, out[1].gram]
    params = (q, k, v, lr, *a.parameters())
    tnt_compare("outputs", outs_ref, outs)
    tnt_compare("grads", tnt_grads(outs_ref, params), tnt_grads(outs, params))


# -------------------------------------------------------------------------------------------------
# the mixers: the gates option, decoding, backends, the dispatcher

#: one channel-gated variant of each family (small: float64 reference runs)
CHANNEL_MIXERS = [
    ("titans", {}),
    ("titans", {"memory": {"depth": 1, "norm": False, "residual": False}}),
    ("titans_mac", {"segment_size": 8, "chunk_size": 4}),
    ("titans_mag", {}),
    ("moneta", {}),
    ("yaad", {}),
    ("memora", {}),
    ("omeganet", {"window": 3, "feature_degree": 1}),
    ("atlas", {"window": 3, "feature_degree": 1, "muon": "chunk"}),
    ("atlas", {"window": 3, "feature_degree": 1, "muon": "token", "memory": {"kind": "gated_mlp"}}),
    ("tnt", {"chunk_size": [2, 4], "shard_size": 8, "global_chunk_size": 8}),
]
IDS = [
    f"{n}-{kw.get('muon', '')}{'-' + str(kw['memory']) if 'memory' in kw else ''}" for n, kw in CHANNEL_MIXERS
]


def channel_mixer(name, **kw):
    torch.manual_seed(0)
    opts = {"chunk_size": 4, "memory": {"expansion": 2.0}, "gate_rank": 4, "gates": "channel", **kw}
    return memnets.build_mixer(name, d_model=16, num_heads=2, **opts).double()


def memory_op(mixer):
    """The mixer's (first) memory dispatch, wherever the family keeps it."""
    for m in mixer.modules():
        if hasattr(m, "local_ops"):
            return m.local_ops[0]
        if isinstance(getattr(m, "op", None), dispatch.MemoryDispatch):
            return m.op
    raise AssertionError(f"{type(mixer).__name__} has no memory dispatch")


@pytest.mark.parametrize("name,kw", CHANNEL_MIXERS, ids=IDS)
def test_mixer_gates_are_per_channel(name, kw):
    """The gates reach the memory as ``[B, T, H, N]``, N = the memory's output units."""
    mixer = channel_mixer(name, **kw)
    seen = []
    op = memory_op(mixer)
    real = op.op.chunked

    def spy(arch, q, k, v, lr, *rest, **options):
        seen.append((tuple(lr.shape), sum(gate_units(arch))))
        return real(arch, q, k, v, lr, *rest, **options)

    op.op = dataclasses.replace(op.op, chunked=spy)
    mixer(torch.randn(2, 9, 16, dtype=F64))
    (shape, units), *_ = seen
    assert shape[-1] == units > 1 and len(shape) == 4


@pytest.mark.parametrize("name,kw", CHANNEL_MIXERS, ids=IDS)
def test_mixer_step_equals_forward(name, kw):
    mixer = channel_mixer(name, **kw)
    x = torch.randn(2, 11, 16, dtype=F64)
    with torch.no_grad():
        y, final = mixer(x)
        state, ys = None, []
        for t in range(x.shape[1]):
            yt, state = mixer.step(x[:, t], state)
            ys.append(yt)
        y1, s1 = mixer(x[:, :5])
        y2, s2 = mixer(x[:, 5:], s1)
    assert_close("token by token", y, torch.stack(ys, 1))
    assert_close("in two pieces", y, torch.cat([y1, y2], 1))
    ref, got, split = state_tensors(final), state_tensors(state), state_tensors(s2)
    for key in ref:
        assert_close(f"final {key}", ref[key], got[key])
        assert_close(f"final {key} (two pieces)", ref[key], split[key])


@pytest.mark.parametrize("name,kw", CHANNEL_MIXERS, ids=IDS)
def test_mixer_reference_backend_equals_chunked(name, kw):
    """Outputs, final state and every gradient (input, parameters incl. the learnable initial weights;
    the engine tests above cover a given initial state: a random one for MAC's attention-fed memory is
    ill-conditioned enough that even per-head gates differ by ~1e-8 between two exact algorithms)."""
    mixer = channel_mixer(name, **kw)
    x = torch.randn(2, 9, 16, dtype=F64)
    results = {}
    for backend in ("reference", "chunked"):
        set_backend(mixer, backend)
        results[backend] = forward_backward(mixer, x)
    assert_all_close(results["reference"], results["chunked"])


def set_backend(mixer, backend):
    for m in mixer.modules():
        if hasattr(m, "backend") and isinstance(m.backend, str):
            m.backend = backend


def test_gates_option_errors():
    with pytest.raises(
        ConfigError, match=r"gates='chanel' is not allowed; choose one of \['head', 'channel'\]"
    ):
        memnets.build_mixer("titans", d_model=16, num_heads=2, gates="chanel")
    for name in ("titans", "titans_mac", "moneta", "omeganet", "atlas", "tnt"):
        cls = memnets.registry.mixer_class(name)
        with pytest.raises(ValueError, match=rf"{name}: gates='diag' is not one of \['head', 'channel'\]"):
            cls(16, 2, gates="diag")
    with pytest.raises(ValueError, match=r"titans: gate_rank must be >= 1, got 0"):
        memnets.build_mixer("titans", d_model=16, num_heads=2, gates="channel", gate_rank=0)


@pytest.mark.parametrize("name,kw", CHANNEL_MIXERS, ids=IDS)
def test_triton_backend_refuses_channel_gates(name, kw):
    """The kernels take one scalar gate per token and head: asking for them by name names the option."""
    with pytest.raises(
        ValueError,
        match=r"backend='triton' does not support (local memory 0: )?gates: channel \(per-channel gates are not in the Triton kernel\)",
    ):
        channel_mixer(name, backend="triton", **kw)


def test_auto_runs_the_chunked_form_and_logs_why(monkeypatch, caplog):
    """Where ``auto`` could pick a kernel (a CUDA device), channel gates run the chunked form: the
    compiled one on CUDA, the eager one elsewhere, and the log names the option."""
    monkeypatch.setattr(dispatch, "triton_available", lambda device: True)
    monkeypatch.setattr(dispatch, "_announced", set())
    mixer = channel_mixer("titans", memory={"depth": 2, "expansion": 2.0})
    assert mixer.op.no_kernel("auto") == "gates: channel (per-channel gates are not in the Triton kernel)"
    assert mixer.op.fallback(torch.device("cuda")) == "compiled"
    with caplog.at_level("INFO", logger=dispatch.log.name):
        assert mixer.op.backend("auto", torch.device("cpu")) == "chunked"
    assert (
        "titans: running the chunked backend (asked for auto on cpu; the Triton kernels do not cover gates: channel (per-channel gates are not in the Triton kernel))"
        in caplog.text
    )
    head = memnets.build_mixer("titans", d_model=16, num_heads=2, memory={"expansion": 2.0})
    assert head.op.no_kernel("auto") is None  # the same memory with per-head gates has a kernel
