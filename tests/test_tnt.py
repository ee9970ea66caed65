"""TNT: Q-K projection (Gram form == explicit Σ k kᵀ), global memory read at the chunk start, local
memories with resets (folded shards == per-shard loop; one shard == the shared engine), the mixer
(reference == chunked incl. every gradient, decoding == forward), two-stage training from configs."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the kernel test runs on CPU

import pytest
import torch
from helpers import ROOT, run_train
from mixer_checks import check_decode_and_split

import memnets
from memnets.memory import MemoryMLP, MemoryState, initial_state, memory_chunked
from memnets.memory.chunk_read import chunk_read_memory, chunk_read_memory_reference
from memnets.memory.qk_projection import qk_project, qk_project_reference
from memnets.memory.sharded import ShardState, sharded_memory
from memnets.testing import assert_close

F64 = torch.float64
H, D = 2, 4


def grads_of(outputs, inputs, seed=1):
    """Gradients of Σ <output, random cotangent> w.r.t. ``inputs`` (None where unused)."""
    g = torch.Generator().manual_seed(seed)
    # drawn in float64 and cast, so models in different dtypes get the same cotangents
    loss = sum(
        (o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in outputs
    )
    return torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=True)


def compare(name, ref, out):
    for i, (a, b) in enumerate(zip(ref, out)):
        if a is None and b is None:
            continue
        assert_close(f"{name}[{i}]", a, b)


def inputs(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.nn.functional.normalize(torch.randn(B, T, H, D, generator=g, dtype=F64), dim=-1) for _ in "qkv"
    )
    lr = 0.5 * torch.rand(B, T, H, generator=g, dtype=F64)
    return [t.requires_grad_() for t in (q, k, v, lr)]


def arch(seed=0):
    torch.manual_seed(seed)
    return MemoryMLP(H, D, depth=2, expansion=2.0).double()


# ---------------------------------------------------------------------------------------------------
# Q-K projection


@pytest.mark.parametrize("T", [1, 63, 65, 100])
@pytest.mark.parametrize("norm", ["none", "l2", "count"])
def test_gram_form_equals_explicit_sum_of_outer_products(T, norm):
    q, k, _, _ = inputs(2, T)
    gram0 = torch.randn(2, H, D, D, dtype=F64)
    gram0 = (gram0 @ gram0.transpose(-1, -2)).requires_grad_()  # Σ k kᵀ of earlier keys: PSD
    ref = qk_project_reference(q, k, gram0, 5, norm=norm)
    for block in (1, 16, 64):
        out = qk_project(q, k, gram0, 5, norm=norm, block_size=block)
        assert_close(f"projected q (block {block})", ref[0], out[0])
        assert_close(f"gram (block {block})", ref[1], out[1])
    compare("grads", grads_of(ref, (q, k, gram0)), grads_of(out, (q, k, gram0)))


# ---------------------------------------------------------------------------------------------------
# global memory: reads at its chunk-start state


@pytest.mark.parametrize("T,C", [(1, 4), (13, 4), (13, 5), (9, 16)])
def test_chunk_read_memory_equals_token_by_token(T, C):
    a = arch()
    q, k, v, lr = inputs(2, T)
    st0 = initial_state(a, 2, False, F64)
    w0 = tuple((w + 0.1 * torch.randn_like(w)).requires_grad_() for w in st0.weights)
    ref = chunk_read_memory_reference(a, q, k, v, lr, MemoryState(w0), chunk_size=C)
    out = chunk_read_memory(a, q, k, v, lr, MemoryState(w0), chunk_size=C)
    assert_close("y", ref[0], out[0])
    assert ref[1].offset == out[1].offset == T % C
    for w_ref, w_out in zip(ref[1].weights, out[1].weights):
        assert_close("final weights", w_ref, w_out)
    params = (q, k, v, lr, *w0, *a.parameters())
    outs_ref, outs = (ref[0], *ref[1].weights), (out[0], *out[1].weights)
    compare("grads", grads_of(outs_ref, params), grads_of(outs, params))


def test_chunk_read_memory_reads_only_the_chunk_start_state():
    """Changing the keys/values of a chunk's tokens changes no read inside that chunk."""
    a = arch()
    q, k, v, lr = (t.detach() for t in inputs(1, 12))
    y, _ = chunk_read_memory(a, q, k, v, lr, chunk_size=6)
    v2 = v.clone()
    v2[:, 2:6] = torch.randn_like(v2[:, 2:6])
    y2, _ = chunk_read_memory(a, q, k, v2, lr, chunk_size=6)
    assert_close("same chunk", y[:, :6], y2[:, :6])
    assert (y[:, 6:] - y2[:, 6:]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------
# local memory: resets, folding


def test_single_shard_without_projection_equals_the_engine():
    a = arch()
    q, k, v, lr = inputs(2, 23)
    ref = memory_chunked(a, q, k, v, lr, chunk_size=4)
    out = sharded_memory(a, q, k, v, lr, chunk_size=4, shard_size=23)  # the shard ends at T: reset state
    assert_close("y", ref[0], out[0])
    out = sharded_memory(a, q, k, v, lr, chunk_size=4, shard_size=64)
    assert_close("y", ref[0], out[0])
    assert out[1].pos == 23
    for w_ref, w_out in zip(ref[1].weights, out[1].memory.weights):
        assert_close("final weights", w_ref, w_out)
    params = (q, k, v, lr, *a.parameters())
    compare("grads", grads_of((ref[0],), params), grads_of((out[0],), params))


@pytest.mark.parametrize(
    "pos,T,S,C", [(0, 40, 8, 3), (5, 40, 8, 4), (3, 4, 8, 2), (0, 16, 8, 8), (7, 33, 8, 1)]
)
@pytest.mark.parametrize("projection", [None, "l2"])
def test_folded_shards_equal_a_per_shard_loop(pos, T, S, C, projection):
    a = arch()
    q, k, v, lr = inputs(2, T)
    state = ShardState()
    if pos:  # continue a shard: run its first `pos` tokens, keep the state differentiable
        pre = inputs(2, pos, seed=3)
        _, state = sharded_memory(a, *pre, chunk_size=C, shard_size=S, projection=projection)
    opts = {"chunk_size": C, "shard_size": S, "projection": projection}
    ref = sharded_memory(a, q, k, v, lr, state, fold=False, **opts)
    out = sharded_memory(a, q, k, v, lr, state, fold=True, **opts)
    assert_close("y", ref[0], out[0])
    assert ref[1].pos == out[1].pos == (pos + T) % S
    outs = [ref[0]], [out[0]]
    if ref[1].memory is not None:
        for o, st in zip(outs, (ref[1], out[1])):
            o.extend(st.memory.weights)
            if projection:
                o.append(st.gram)
    params = (q, k, v, lr, *a.parameters(), *(pre if pos else ()))
    compare("grads", grads_of(outs[0], params), grads_of(outs[1], params))


def test_local_memory_restarts_at_shard_boundaries():
    """Tokens after a shard boundary do not depend on anything before it."""
    a = arch()
    q, k, v, lr = (t.detach() for t in inputs(1, 24))
    y, _ = sharded_memory(a, q, k, v, lr, chunk_size=2, shard_size=8, projection="l2")
    k2 = k.clone()
    k2[:, :8] = torch.randn_like(k2[:, :8])
    y2, _ = sharded_memory(a, q, k2, v, lr, chunk_size=2, shard_size=8, projection="l2")
    assert_close("later shards", y[:, 8:], y2[:, 8:])
    assert (y[:, :8] - y2[:, :8]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------
# the mixer

TINY = {"chunk_size": [2, 3], "shard_size": [8, 6], "global_chunk_size": 5, "memory": {"expansion": 2.0}}


def tiny(**kw):
    return memnets.build_mixer("tnt", d_model=16, num_heads=2, **{**TINY, **kw}).double()


def test_mixer_with_one_local_memory_and_no_global_equals_the_engine():
    m = tiny(chunk_size=4, shard_size=64, global_memory=False, qk_projection=False)
    x = torch.randn(2, 19, 16, dtype=F64)
    y, _ = m(x)
    mem = m.local[0]
    q, k, v, lr, _ = mem(x, None)
    h, _ = memory_chunked(mem.memory, q, k, v, lr, chunk_size=4)
    gate = m.gate(x).view(2, 19, 2, 8)
    assert_close("y", m.out(m.norm(h, gate).reshape(2, 19, 16)), y)


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 1, "shard_size": 4, "qk_norm": "count"}])
def test_reference_backend_equals_chunked(kw):
    torch.manual_seed(0)
    chunked = tiny(**kw)
    reference = tiny(backend="reference", **kw)
    reference.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 13, 16, dtype=F64)
    grads = []
    for m in (reference, chunked):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        names, params = zip(*m.named_parameters())
        grads.append((y, *grads_of((y,), (xi, *params))))
    assert_close("y", grads[0][0], grads[1][0])
    assert_close("dx", grads[0][1], grads[1][1])
    for n, a, b in zip(names, grads[0][2:], grads[1][2:]):
        assert_close(f"d{n}", a, b)
    assert any("local.0.memory.init_weights" in n for n in names)  # the learnable initial states


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"chunk_size": 1, "shard_size": 4},
        {"global_memory": False, "qk_norm": "none"},
        {"qk_projection": False},
    ],
)
def test_decoding_equals_forward(kw):
    m = tiny(**kw)
    x = torch.randn(2, 19, 16, dtype=F64)
    final, _, s2 = check_decode_and_split("tnt", m, x, 7)
    assert_close("next", m.step(x[:, 3], final)[0], m.step(x[:, 3], s2)[0])


def test_packed_sequences_and_generate():
    m = tiny()
    a, b = torch.randn(1, 5, 16, dtype=F64), torch.randn(1, 10, 16, dtype=F64)
    packed, _ = m(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 5, 15]))
    assert_close("second", m(b)[0], packed[:, 5:])
    cfg = memnets.ModelConfig(
        vocab_size=32, d_model=16, n_layers=2, num_heads=2, mixer="tnt", mixer_options={"tnt": TINY}
    )
    model = memnets.build_model(cfg).double().eval()
    out = model.generate(torch.randint(0, 32, (2, 4)), max_new_tokens=9)
    assert torch.equal(out[:, 4:], model(out[:, :-1])[:, 3:].argmax(-1))
    assert model.state_size(64) > 0


@pytest.mark.parametrize(
    "kw",
    [
        {"chunk_size": [4, 8], "shard_size": [8, 16]},
        {"memory": {"depth": 1, "norm": False}, "chunk_size": [16, 32]},
    ],
)
def test_triton_backend_equals_chunked(kw, monkeypatch):
    """backend='triton' (local memories in the Titans memory kernels, the 2-layer global memory in the
    chunk-start-read kernel, float32, under TRITON_INTERPRET=1) equals the chunked engine (float64):
    outputs, every gradient, the carried state (a call split mid-shard and mid global chunk). A small
    inner step (lr_max) keeps the problem well conditioned: with the default 1.0 the inner loop
    amplifies float32 rounding past float32's tolerance in either backend (see
    tests/test_mlp_memory.py)."""
    pytest.importorskip("triton")
    from memnets.memory import kernel_bridge

    calls = []
    kernel = kernel_bridge.chunk_read_mlp
    monkeypatch.setattr(kernel_bridge, "chunk_read_mlp", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    torch.manual_seed(0)
    kw = {"lr_max": 0.05, **kw}
    chunked = memnets.build_mixer("tnt", d_model=16, num_heads=2, **{**TINY, **kw}).double()
    triton = memnets.build_mixer("tnt", d_model=16, num_heads=2, backend="triton", **{**TINY, **kw})
    triton.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 29, 16, dtype=F64)
    outs = []
    for m in (chunked, triton):
        xi = x.clone().to(next(m.parameters()).dtype).requires_grad_()
        y1, s = m(xi[:, :11])
        y2, _ = m(xi[:, 11:], s)
        y = torch.cat([y1, y2], 1)
        names, params = zip(*m.named_parameters())
        outs.append((y, *grads_of((y,), (xi, *params))))
    assert_close("y", outs[0][0], outs[1][0])
    assert_close("dx", outs[0][1], outs[1][1])
    for n, a, b in zip(names, outs[0][2:], outs[1][2:]):
        assert_close(f"d{n}", a, b)
    assert len(calls) == (
        2 if kw.get("memory", {}).get("depth", 2) == 2 else 0
    )  # the global memory, both calls


def test_option_errors():
    with pytest.raises(ValueError, match="backend='triton' does not support local memory 0: memory depth 3"):
        tiny(backend="triton", memory={"depth": 3})
    with pytest.raises(ValueError, match="shard_size"):
        tiny(chunk_size=[2, 4, 8], shard_size=[8, 8])
    with pytest.raises(ValueError, match="chunk_size"):
        tiny(chunk_size=0)


def test_bf16_autocast_is_finite():
    m = memnets.build_mixer(
        "tnt", d_model=16, num_heads=2, chunk_size=8, shard_size=64, global_chunk_size=128
    )
    x = torch.randn(2, 300, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------------------------------------------
# two-stage training from the configs

SMALL = [
    "model.d_model=16",
    "model.n_layers=1",
    "model.num_heads=2",
    "data.seq_len=24",
    "train.batch_size=2",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.eval_every=1000",
    "train.eval_batches=1",
    "train.checkpoint_every=1000",
    "model.mixer_options.tnt.shard_size=8",
    "model.mixer_options.tnt.global_chunk_size=16",
]


def test_stage_two_from_a_stage_one_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from memnets.config import load_config

    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    common = [*SMALL, f"data.path={text}"]
    r = run_train([str(ROOT / "configs/lm/tnt-stage1-tiny.yaml"), *common, "train.steps=2", f"run.dir={s1}"])
    assert r.returncode == 0, r.stderr
    stage2 = [
        str(ROOT / "configs/lm/tnt-stage2-tiny.yaml"),
        *common,
        f"train.init_from={s1}",
        f"run.dir={s2}",
    ]
    r = run_train([*stage2, "train.steps=2"])
    assert r.returncode == 0, r.stderr
    logged = r.stdout + r.stderr  # stage 2 says what it loaded and how much of the model trains
    assert "train.init_from: loaded all" in logged and f"{s1 / 'checkpoints'}" in logged, logged
    cfg1, cfg2 = load_config(s1 / "config.yaml"), load_config(s2 / "config.yaml")
    assert cfg1.model.mixer_options["tnt"]["chunk_size"] != cfg2.model.mixer_options["tnt"]["chunk_size"]
    assert cfg2.model.mixer_options["tnt"]["chunk_size"] == 1
    w1, w2 = load_file(s1 / "model.safetensors"), load_file(s2 / "model.safetensors")
    assert w1.keys() == w2.keys()
    trained = {n for n in w1 if ".mixer.local." in n}
    assert trained, "no local-memory parameters"
    n_trained, n_all = sum(w1[n].numel() for n in trained), sum(w.numel() for w in w1.values())
    assert f"{n_trained:,} of {n_all:,} parameters train" in logged, logged
    for n in w1:
        if n in trained:
            continue
        assert torch.equal(w1[n], w2[n]), f"{n} is frozen in stage 2 but changed"
    assert any(not torch.equal(w1[n], w2[n]) for n in trained), "stage 2 trained nothing"
    # stage 2 resumes like any run
    r = run_train([*stage2, "train.steps=3", "--resume"])
    assert r.returncode == 0, r.stderr
    w3 = load_file(s2 / "model.safetensors")
    assert all(torch.equal(w1[n], w3[n]) for n in w1 if n not in trained)
    assert any(not torch.equal(w2[n], w3[n]) for n in trained)


def test_configs_load_and_150m_is_near_the_paper_size():
    from memnets.config import load_config

    for name in ("mqar/tnt.yaml", "lm/tnt-stage1-tiny.yaml", "lm/tnt-stage2-tiny.yaml"):
        load_config(ROOT / "configs" / name, ["data.path=x.txt"] if "lm/" in name else [])
    cfg = load_config(ROOT / "configs/lm/tnt-150m.yaml", ["data.path=x.bin"])
    with torch.device("meta"):
        n = sum(p.numel() for p in memnets.build_model(cfg.model).parameters())
    assert 140e6 < n < 160e6, n
