import itertools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend runs on CPU in the interpreter
from dataclasses import dataclass

import pytest
import torch
from mixer_checks import assert_all_close, check_decode_and_split, forward_backward, random_state

import memnets
from memnets.kernels.gated_delta import gated_delta_rule
from memnets.mixers.mom import (
    MoM,
    MoMState,
    RouterStats,
    dispatch,
    load_balancing_loss,
    pooled_load_balancing_loss,
    route,
    routing_fraction,
)
from memnets.model import ModelConfig
from memnets.testing import assert_close

D, H = 16, 2


@dataclass
class Finals:
    """The final memory matrices, as a state-like dataclass so the helpers drive them with cotangents."""

    routed: torch.Tensor
    shared: torch.Tensor | None


def mom(**options) -> MoM:
    options.setdefault("backend", "chunked")
    options.setdefault("chunk_size", 8)
    return memnets.build_mixer("mom", d_model=D, num_heads=H, **options).double()


def dense_memory_output(m: MoM, x: torch.Tensor, state: MoMState | None, cu_seqlens=None):
    """REFERENCE: every memory runs over every token of every sequence. A token not routed to memory m
    writes nothing there (beta = 0, keep = 1, zero key) and its read-out is masked by the router
    weight; m's key/value short conv runs over m's own routed tokens of that sequence. Returns the
    mixed read-out (before the output norm) and the final memory matrices."""
    B, T, _ = x.shape
    if cu_seqlens is None:
        seqs = [(b, 0, T) for b in range(B)]
    else:
        seqs = [(0, s, e) for s, e in itertools.pairwise(cu_seqlens.tolist())]
    outs, routed, shared = [], [], []
    for n, (b, s, e) in enumerate(seqs):
        xn = x[b : b + 1, s:e]
        q, _ = m.query(xn, state.conv_q[n : n + 1] if state else None, None)
        _, weights, selected = route(m.router(xn[0]), m.topk)
        o, finals = 0, []
        for j, write in enumerate(m.memories):
            picked = (selected == j).any(-1)
            w = (weights * (selected == j)).sum(-1)
            idx = picked.nonzero().flatten()
            prev = (
                [t[n : n + 1, j] if state else None for t in (state.routed.conv_k, state.routed.conv_v)]
                if state
                else [None, None]
            )
            L = e - s
            dense = [x.new_zeros(1, L, H, m.head_dim), x.new_zeros(1, L, H, m.head_dim_v)]
            dense += [x.new_zeros(1, L, H), x.new_zeros(1, L, H)]
            if idx.numel():
                parts = m.keys_values(tuple(t[None] for t in write(xn[0, idx])), *prev, None)[:4]
                for full, part in zip(dense, parts):
                    full[:, idx] = part.to(full.dtype)
            init = state.routed.memory[n : n + 1, j] if state else None
            oj, Sj = gated_delta_rule(
                q, *dense, initial_state=init, output_final_state=True, backend="reference"
            )
            o = o + w[None, :, None, None] * oj
            finals.append(Sj)
        routed.append(torch.stack(finals, 1))
        if m.shared is not None:
            prev = (state.shared.conv_k[n : n + 1], state.shared.conv_v[n : n + 1]) if state else (None, None)
            k, v, g, beta, _, _ = m.keys_values(m.shared(xn), *prev, None)
            init = state.shared.memory[n : n + 1] if state else None
            os_, Ss = gated_delta_rule(
                q, k, v, g, beta, initial_state=init, output_final_state=True, backend="reference"
            )
            o = o + os_
            shared.append(Ss)
        outs.append(o)
    o = torch.cat(outs, 1) if cu_seqlens is not None else torch.cat(outs, 0)
    return o, torch.cat(routed), torch.cat(shared) if shared else None


def test_route_renormalises_topk():
    logits = torch.randn(7, 5)
    probs, w, sel = route(logits, 2)
    assert_close("probs", torch.softmax(logits.double(), -1).float(), probs)
    assert torch.equal(sel, logits.topk(2, -1).indices)
    assert_close("renormalised", probs.gather(-1, sel) / probs.gather(-1, sel).sum(-1, keepdim=True), w)
    assert_close("sum to one", torch.ones(7), w.sum(-1))


def test_dispatch_groups_by_memory_then_sequence_in_time_order_and_inverts():
    L, k, M, N = 12, 2, 3, 2
    selected = torch.stack([torch.randperm(M)[:k] for _ in range(L)])
    seq_ids = torch.tensor([0] * 5 + [1] * 7)
    d = dispatch(selected, seq_ids, N, M)
    slot_mem = selected.reshape(-1)
    expect = []
    for m in range(M):
        for n in range(N):
            toks = [t for t in range(L) if seq_ids[t] == n and m in selected[t].tolist()]
            expect.append(toks)
    assert d.token.tolist() == [t for toks in expect for t in toks]
    assert d.buckets.tolist() == [i for i, toks in enumerate(expect) if toks]
    assert d.cu_seqlens.tolist() == [0, *torch.tensor([len(t) for t in expect if t]).cumsum(0).tolist()]
    assert d.longest == max(len(t) for t in expect)
    assert d.memory_sizes == [sum(len(expect[m * N + n]) for n in range(N)) for m in range(M)]
    # slot (t, j) sits at position inverse[t * k + j] of the stream, which holds token t and memory j
    stream_mem = slot_mem[torch.argsort(d.inverse)]
    assert torch.equal(d.token[d.inverse], torch.arange(L).repeat_interleave(k))
    assert torch.equal(stream_mem[d.inverse], slot_mem)


def test_load_balancing_loss_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.25, 0.15, 0.6], [0.7, 0.2, 0.1]])
    # P = mean probs = [0.3875, 0.3125, 0.3]; top-1 picks [0, 1, 2, 0] -> f = [0.5, 0.25, 0.25]
    assert_close(
        "k=1",
        torch.tensor(3 * (0.5 * 0.3875 + 0.25 * 0.3125 + 0.25 * 0.3)),
        load_balancing_loss(probs, probs.topk(1, -1).indices),
    )
    # top-2 picks {0,1} {1,2} {2,0} {0,1} -> f = [0.75, 0.75, 0.5]
    assert_close("k=2", torch.tensor(2.025), load_balancing_loss(probs, probs.topk(2, -1).indices))
    # uniform routing gives k
    assert_close(
        "uniform",
        torch.tensor(2.0),
        load_balancing_loss(torch.full((6, 3), 1 / 3), torch.tensor([[0, 1], [1, 2], [2, 0]] * 2)),
    )


def test_mixer_sets_aux_loss_in_training_only():
    m = mom(aux_loss="per_layer", aux_loss_weight=0.1)
    x = torch.randn(2, 7, D, dtype=torch.float64)
    m.train()
    m(x)
    probs, _, selected = route(m.router(x).reshape(14, -1), m.topk)
    assert_close("aux", 0.1 * load_balancing_loss(probs, selected), m.aux_loss)
    m.aux_loss.backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
    m.eval()
    m(x)
    assert m.aux_loss is None


def test_pooled_load_balancing_loss_by_hand():
    """Two layers of 2 and 1 tokens, M = 3, k = 1: the pooled loss is the one-layer loss of the
    concatenated router outputs (the released code), not the sum of the per-layer losses."""
    p1 = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    p2 = torch.tensor([[0.2, 0.2, 0.6]], dtype=torch.float64)
    stats = [
        RouterStats(routing_fraction(p.topk(1, -1).indices, 3, p.dtype), p.mean(0), p.shape[0], 0.5)
        for p in (p1, p2)
    ]
    # all 3 tokens: P = [0.8, 1.1, 1.1] / 3, top-1 picks [0, 1, 2] -> f = [1, 1, 1] / 3
    expected = 0.5 * 3 * (1 / 3) * (0.8 + 1.1 + 1.1) / 3
    assert_close("pooled", torch.tensor(expected, dtype=torch.float64), pooled_load_balancing_loss(stats))
    with pytest.raises(ValueError, match="aux_loss=pooled needs one aux_loss_weight"):
        pooled_load_balancing_loss([stats[0], RouterStats(stats[1].frac, stats[1].mean_probs, 1, 0.1)])


@pytest.mark.parametrize("mode", ["pooled", "per_layer"])
def test_model_aux_loss_pooled_or_summed_over_layers(mode):
    torch.manual_seed(0)
    model = memnets.build_model(
        ModelConfig(
            vocab_size=11,
            d_model=D,
            n_layers=3,
            num_heads=H,
            mixer="mom",
            mixer_options={
                "mom": {"aux_loss": mode, "aux_loss_weight": 0.1, "backend": "chunked", "chunk_size": 8}
            },
        )
    ).double()
    ids = torch.randint(0, 11, (2, 9))
    model.train()
    model(ids)
    layers = [b.mixer for b in model.blocks]
    # recompute each layer's routing from its input: the router sees the block's normed input
    inputs = []
    hooks = [mx.router.register_forward_hook(lambda mod, a, out: inputs.append(out)) for mx in layers]
    model(ids)
    for h in hooks:
        h.remove()
    routed = [route(logits.reshape(18, -1), 2) for logits in inputs]
    if mode == "per_layer":
        expected = sum(0.1 * load_balancing_loss(p, s) for p, _, s in routed)
    else:
        probs = torch.cat([p for p, _, _ in routed])
        selected = torch.cat([s for _, _, s in routed])
        expected = 0.1 * load_balancing_loss(probs, selected)
    assert_close(mode, expected, model.aux_loss)
    model.aux_loss.backward()
    assert all(mx.router.weight.grad.abs().sum() > 0 for mx in layers)
    model.eval()
    model(ids)
    assert model.aux_loss is None


def test_mom_aux_loss_option_is_checked():
    with pytest.raises(ValueError, match="aux_loss"):
        mom(aux_loss="sum")


def dispatched_run(m: MoM):
    def run(x, state, cu_seqlens):
        o, st = m.memory_output(x, state, cu_seqlens)
        return o, Finals(st.routed.memory, st.shared.memory if st.shared else None)

    return run


def dense_run(m: MoM):
    def run(x, state, cu_seqlens):
        o, routed, shared = dense_memory_output(m, x, state, cu_seqlens)
        return o, Finals(routed, shared)

    return run


@pytest.mark.parametrize(
    ("T", "with_state", "shared_memory", "layout"),
    [
        (1, True, True, "packed"),
        (1, True, False, "padded"),
        (21, False, True, "padded"),
        (21, False, False, "packed"),
        (33, True, True, "packed"),
        (33, True, True, "padded"),
    ],
)
def test_dispatched_equals_dense_reference(T, with_state, shared_memory, layout):
    m = mom(num_memories=3, topk=2, shared_memory=shared_memory, bucket_layout=layout).eval()
    x = torch.randn(2, T, D, dtype=torch.float64)
    state = random_state(m, x) if with_state else None
    ref = forward_backward(m, x, state, run=dense_run(m))
    assert_all_close(ref, forward_backward(m, x, state, run=dispatched_run(m)))


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_dispatched_equals_dense_reference_packed(layout):
    m = mom(num_memories=4, topk=2, bucket_layout=layout).eval()
    cu = torch.tensor([0, 1, 20, 26])
    x = torch.randn(1, 26, D, dtype=torch.float64)
    state = random_state(m, x, cu)
    ref = forward_backward(m, x, state, cu, run=dense_run(m))
    assert_all_close(ref, forward_backward(m, x, state, cu, run=dispatched_run(m)))


def gdn_from_memory(m: MoM, j: int) -> torch.nn.Module:
    """A gated_deltanet layer with MoM's shared pieces and memory j's projections."""
    g = memnets.build_mixer(
        "gated_deltanet", d_model=D, num_heads=H, chunk_size=m.chunk_size, backend=m.backend
    ).double()
    core = {k: v for k, v in m.state_dict().items() if not k.startswith(("router", "memories", "shared"))}
    g.load_state_dict({**core, "write.proj.weight": m.memories[j].proj.weight})
    return g


def test_all_memories_with_equal_weights_is_the_plain_average():
    m = mom(num_memories=3, topk=3, shared_memory=False).eval()
    with torch.no_grad():
        m.router.weight.zero_()
    x = torch.randn(2, 11, D, dtype=torch.float64)
    o, _ = m.memory_output(x)
    mean = sum(gdn_from_memory(m, j).memory_output(x)[0] for j in range(3)) / 3
    assert_close("average", mean, o)


def test_one_memory_without_shared_is_gated_deltanet():
    m = mom(num_memories=1, topk=1, shared_memory=False).eval()
    g = gdn_from_memory(m, 0)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    ref = forward_backward(g, x)
    out = forward_backward(m, x, run=lambda x, s, cu: _as_gdn_state(*m(x, s, cu)))
    out = {k.replace("memories.0.", "write."): v for k, v in out.items() if not k.startswith("grad.router")}
    assert_all_close(ref, out)


def _as_gdn_state(y, st: MoMState):
    from memnets.mixers.gated_deltanet import GatedDeltaState, MemoryState

    r = st.routed
    return y, GatedDeltaState(st.conv_q, MemoryState(r.conv_k[:, 0], r.conv_v[:, 0], r.memory[:, 0]))


def test_padded_equals_packed():
    m = mom(num_memories=4, topk=2).eval()
    lens = [5, 1, 17]
    xs = [torch.randn(1, n, D, dtype=torch.float64) for n in lens]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    y, state = m(torch.cat(xs, 1), cu_seqlens=cu)
    # right-padded batch: causal, so each sequence's valid prefix must match
    padded = torch.zeros(3, max(lens), D, dtype=torch.float64)
    for i, x in enumerate(xs):
        padded[i, : lens[i]] = x[0]
    yp, _ = m(padded)
    ends = cu.tolist()
    for i, x in enumerate(xs):
        assert_close(f"padded y[{i}]", yp[i, : lens[i]], y[0, ends[i] : ends[i + 1]])
        yi, si = m(x)
        assert_close(f"y[{i}]", yi[0], y[0, ends[i] : ends[i + 1]])
        assert_close(f"routed[{i}]", si.routed.memory[0], state.routed.memory[i])
        assert_close(f"routed conv_v[{i}]", si.routed.conv_v[0], state.routed.conv_v[i])
        assert_close(f"shared[{i}]", si.shared.memory[0], state.shared.memory[i])


def test_decoding_equals_forward_and_split():
    m = mom(num_memories=4, topk=2).eval()
    x = torch.randn(2, 12, D, dtype=torch.float64)
    final, state, _ = check_decode_and_split("mom", m, x, 7)
    for name, a in [("routed", final.routed), ("shared", final.shared)]:
        b = getattr(state, name)
        for f in ("conv_k", "conv_v", "memory"):
            assert_close(f"decoded {name}.{f}", getattr(a, f), getattr(b, f))


def test_key_value_conv_sees_only_its_memory():
    """Changing a token changes no memory it was not routed to (nor their conv histories)."""
    m = mom(num_memories=4, topk=1, shared_memory=False).eval()
    x = torch.randn(1, 10, D, dtype=torch.float64)
    _, s1 = m(x)
    x2 = x.clone()
    x2[0, 4] += torch.randn(D, dtype=torch.float64) * 0.01  # small: keeps the routing of token 4
    _, s2 = m(x2)
    _, _, sel = route(m.router(x[0]), 1)
    assert sel[4, 0] == route(m.router(x2[0]), 1)[2][4, 0]
    for j in range(4):
        same = torch.equal(s1.routed.memory[0, j], s2.routed.memory[0, j])
        assert same == (j != int(sel[4, 0])), f"memory {j}"


def test_options_and_errors():
    m = memnets.build_mixer(
        "mom", d_model=24, num_heads=3, num_memories=3, topk=1, expand_v=2.0, backend="chunked"
    )
    y, state = m(torch.randn(2, 5, 24))
    assert y.shape == (2, 5, 24)
    assert state.routed.memory.shape == (2, 3, 3, 8, 16) and state.shared.memory.shape == (2, 3, 8, 16)
    assert m.state_size(10) == 4 * 3 * 8 * 16 + 3 * (24 + 4 * (24 + 48))
    with pytest.raises(ValueError, match="topk=5"):
        memnets.build_mixer("mom", d_model=24, num_heads=3, num_memories=4, topk=5)
    with pytest.raises(ValueError, match="num_memories must be >= 1"):
        memnets.build_mixer("mom", d_model=24, num_heads=3, num_memories=0)
    with pytest.raises(ValueError, match="state holds 2 sequences"):
        m(torch.randn(1, 5, 24), state)


def test_triton_packed_buckets_equal_chunked_float32():
    m = memnets.build_mixer("mom", d_model=D, num_heads=H, chunk_size=16, backend="chunked")
    x = torch.randn(2, 19, D)
    state = random_state(m, x)
    ref = forward_backward(m, x, state)
    m.backend = "triton"  # auto layout: packed buckets through the kernel's cu_seqlens
    assert_all_close(ref, forward_backward(m, x, state))


@pytest.mark.parametrize(
    ("name", "millions"), [("mom-380m", 512.4), ("mom-1.3b", 1553.0), ("mom-tiny", None)]
)
def test_lm_configs_load_and_match_released_sizes(name, millions):
    """The paper-size configs have the parameter counts of the authors' released configs
    (OpenSparseLLMs/MoM ``training/configs/mom_{340M,1.3B}.json``, counted by instantiating them)."""
    from pathlib import Path

    from memnets.config import load_config
    from memnets.model import LM

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / f"configs/lm/{name}.yaml", ["data.path=corpus.txt", "model.vocab_size=32000"])
    with torch.device("meta"):
        model = LM(cfg.model)
    if millions is not None:
        assert round(model.num_params() / 1e6, 1) == millions
    for mqar in ("gated_deltanet", "mom"):
        assert load_config(root / f"configs/mqar/{mqar}.yaml").model.mixer == mqar
