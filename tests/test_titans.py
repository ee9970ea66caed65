"""Titans mixers (LMM, MAC, MAG, MAL): decoding equals the parallel forward, reference backend equals
chunked (outputs and every parameter gradient), causality, packed sequences, bf16 stability."""

import pytest
import torch
from mixer_checks import (
    check_bf16_long_sequence_finite,
    check_decode_and_split,
    check_generate_matches_forward,
    check_packed_equals_separate,
    check_same_outputs_and_grads,
)

import memnets
from memnets.memory import MemorySpec
from memnets.mixers.titans import Titans
from memnets.testing import assert_close

F64 = torch.float64
NAMES = ["titans", "titans_mac", "titans_mag", "titans_mal"]


def tiny(name, **kw):
    opts = {"chunk_size": 4, "memory": {"expansion": 2.0}}
    if name == "titans_mac":
        opts["segment_size"] = 8
    elif name != "titans":
        opts["window"] = 5
    opts.update(kw)
    return memnets.build_mixer(name, d_model=16, num_heads=2, **opts).double()


@pytest.mark.parametrize("name", NAMES)
def test_step_equals_forward(name):
    mixer = tiny(name)
    x = torch.randn(2, 19, 16, dtype=F64)
    # split inside a chunk and inside a segment, then continue
    final, state, s2 = check_decode_and_split(name, mixer, x, 7)
    # the final states agree: one more token gives the same output from either
    assert_close(f"{name} next", mixer.step(x[:, 3], final)[0], mixer.step(x[:, 3], s2)[0])
    assert_close(f"{name} next (decoded)", mixer.step(x[:, 3], final)[0], mixer.step(x[:, 3], state)[0])


@pytest.mark.parametrize("name", NAMES)
def test_reference_backend_equals_chunked(name):
    torch.manual_seed(0)
    chunked = tiny(name)
    reference = tiny(name, backend="reference")
    reference.load_state_dict(chunked.state_dict())
    x = torch.randn(1, 13, 16, dtype=F64)
    cot = torch.randn(1, 13, 16, dtype=F64)
    check_same_outputs_and_grads(reference, chunked, x, cot)


@pytest.mark.parametrize("name", NAMES)
def test_causal(name):
    mixer = tiny(name)
    x = torch.randn(1, 20, 16, dtype=F64)
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, 11:] = torch.randn(1, 9, 16, dtype=F64)
    y2, _ = mixer(x2)
    assert_close("prefix unchanged", y[:, :11], y2[:, :11])
    assert (y[:, 11:] - y2[:, 11:]).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["titans", "titans_mac"])
def test_packed_equals_separate(name):
    check_packed_equals_separate(tiny(name))


def test_backend_and_option_errors():
    with pytest.raises(ValueError, match="backend='triton' does not support memory depth 3"):
        memnets.build_mixer("titans", d_model=16, num_heads=2, memory={"depth": 3}, backend="triton")
    with pytest.raises(ValueError, match="segment_size=6 must be a multiple of chunk_size=4"):
        memnets.build_mixer("titans_mac", d_model=16, num_heads=2, segment_size=6, chunk_size=4)
    with pytest.raises(ValueError, match="lr_max"):
        memnets.build_mixer("titans", d_model=16, num_heads=2, lr_max=-1.0)


def test_frozen_memory_keeps_initial_weights():
    """lr_max = 0 without forgetting: the memory never moves from its learned initial weights."""
    mixer = tiny("titans", lr_max=0.0, forget=False)
    _, st = mixer(torch.randn(2, 9, 16, dtype=F64))
    for w, w0 in zip(st.memory.weights, mixer.memory.init_weights):
        assert_close("frozen", w0.expand_as(w), w)


def test_bf16_autocast_long_sequence_extreme_gates_is_finite():
    """T = 4096 under bf16 autocast, lr at its max, mom ≈ 1, keep ≈ 0 (head 0) and keep ≈ 1 (head 1):
    outputs, final state and gradients stay finite."""
    mixer = Titans(8, 2, head_dim=4, chunk_size=128, memory=MemorySpec(expansion=2.0))
    with torch.no_grad():
        mixer.gates.proj.bias[:2] = 12.0  # lr = lr_max
        mixer.gates.proj.bias[2:4] = 12.0  # mom ≈ 1
        mixer.gates.proj.bias[4:] = torch.tensor([-12.0, 12.0])  # keep ≈ 0, keep ≈ 1
    check_bf16_long_sequence_finite(mixer, 8)


@pytest.mark.parametrize("name", NAMES)
def test_lm_generate_matches_forward(name):
    opts = {"chunk_size": 4, "memory": {"expansion": 2.0}}
    if name == "titans_mac":
        opts["segment_size"] = 8
    elif name != "titans":
        opts["window"] = 6
    check_generate_matches_forward(name, opts, 8)


def test_memory_learns_under_inference_mode():
    """Serving stacks decode under inference_mode: the chunked memory needs no autograd, so test-time
    learning still happens there (and equals the training-mode forward)."""
    mixer = tiny("titans")
    x = torch.randn(1, 10, 16, dtype=F64)
    y, _ = mixer(x)
    with torch.inference_mode():
        yi, st = mixer(x)
    assert_close("inference mode", y, yi)
    assert not torch.equal(st.memory.weights[0], mixer.memory.init_weights[0].expand_as(st.memory.weights[0]))


@pytest.mark.parametrize("write_norm", [False, True])
@pytest.mark.parametrize("write_input", ["attention", "residual"])
def test_mac_write_input(write_norm, write_input):
    """The MAC memory's input: y (Eq. 24) or x + y (``write_input="residual"``), through RMSNorm with
    ``write_norm`` (rms 1 whatever y's scale); the reference backend still equals the chunked one
    (outputs and every gradient)."""
    torch.manual_seed(0)
    opts = {"write_norm": write_norm, "write_input": write_input}
    chunked = tiny("titans_mac", **opts)
    reference = tiny("titans_mac", backend="reference", **opts)
    reference.load_state_dict(chunked.state_dict())
    seen, ys = [], []
    chunked.write.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    chunked.attention.out.register_forward_hook(lambda mod, args, out: ys.append(out))
    x = torch.randn(1, 13, 16, dtype=F64)
    outs = []
    for m in (reference, chunked):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.sum().backward()
        outs.append((y.detach(), xi.grad, {n: p.grad for n, p in m.named_parameters()}))
    assert_close("y", outs[0][0], outs[1][0])
    assert_close("dx", outs[0][1], outs[1][1])
    for n, g in outs[0][2].items():
        assert_close(f"d{n}", g, outs[1][2][n])
    written, attended = torch.cat(seen, 1).detach(), torch.cat(ys, 1).detach()
    expected = attended + x if write_input == "residual" else attended
    if write_norm:
        expected = chunked.write_norm(expected).detach()
        rms = written.pow(2).mean(-1).sqrt()
        assert_close("rms", torch.ones_like(rms), rms, ratio=1e-3)  # eps 1e-6 vs mean(w²) >= 3e-3
    assert_close("memory input", expected, written)


def test_mac_write_input_is_checked():
    with pytest.raises(
        ValueError, match=r"write_input='x' is not allowed; choose one of \['attention', 'residual'\]"
    ):
        tiny("titans_mac", write_input="x")
