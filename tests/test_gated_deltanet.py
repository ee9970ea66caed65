import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend runs on CPU in the interpreter

import pytest
import torch
from mixer_checks import assert_all_close, check_decode_and_split, forward_backward, random_state

import memnets
from memnets.mixers.gated_deltanet import GatedDeltaNet, short_conv
from memnets.modules import ShortConv
from memnets.testing import assert_close

D, H = 16, 2


def gdn(**options) -> torch.nn.Module:
    return memnets.build_mixer("gated_deltanet", d_model=D, num_heads=H, **options).double()


@pytest.mark.parametrize("kernel_size", [1, 4])
def test_short_conv_packed_with_histories_equals_separate_calls(kernel_size):
    conv = ShortConv(6, kernel_size).double()
    lens = [1, 5, 2, 9]
    xs = [torch.randn(1, n, 6, dtype=torch.float64, requires_grad=True) for n in lens]
    hist = torch.randn(len(lens), kernel_size - 1, 6, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    y, new = short_conv(conv, torch.cat(xs, 1), hist, cu)
    refs = [conv(x, hist[i : i + 1]) for i, x in enumerate(xs)]
    assert_close("y", torch.cat([r[0] for r in refs], 1), y)
    assert_close("history", torch.cat([r[1] for r in refs]), new)
    cot = torch.randn_like(y), torch.randn_like(new)
    got = torch.autograd.grad((y * cot[0]).sum() + (new * cot[1]).sum(), [*xs, hist, conv.weight])
    ref_y, ref_new = torch.cat([r[0] for r in refs], 1), torch.cat([r[1] for r in refs])
    want = torch.autograd.grad((ref_y * cot[0]).sum() + (ref_new * cot[1]).sum(), [*xs, hist, conv.weight])
    for i, (a, b) in enumerate(zip(want, got)):
        assert_close(f"grad {i}", a, b)


@pytest.mark.parametrize("T", [1, 63, 65])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_reference_equals_chunked(T, chunk_size):
    mixer = gdn(chunk_size=chunk_size, backend="reference")
    x = torch.randn(2, T, D, dtype=torch.float64)
    state = random_state(mixer, x)
    ref = forward_backward(mixer, x, state)
    mixer.backend = "chunked"
    assert_all_close(ref, forward_backward(mixer, x, state))


@pytest.mark.parametrize("lens", [[1, 40, 24], [63, 2]])
def test_reference_equals_chunked_packed(lens):
    mixer = gdn(chunk_size=16, backend="reference")
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    x = torch.randn(1, sum(lens), D, dtype=torch.float64)
    state = random_state(mixer, x, cu)
    ref = forward_backward(mixer, x, state, cu)
    mixer.backend = "chunked"
    assert_all_close(ref, forward_backward(mixer, x, state, cu))


def test_packed_equals_separate_sequences():
    mixer = gdn(chunk_size=8, backend="chunked")
    lens = [3, 17, 10]
    xs = [torch.randn(1, n, D, dtype=torch.float64) for n in lens]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    y, state = mixer(torch.cat(xs, 1), cu_seqlens=cu)
    ends = cu.tolist()
    for i, x in enumerate(xs):
        yi, si = mixer(x)
        assert_close(f"y[{i}]", yi, y[:, ends[i] : ends[i + 1]])
        assert_close(f"memory[{i}]", si.mem.memory[0], state.mem.memory[i])
        assert_close(f"conv_k[{i}]", si.mem.conv_k[0], state.mem.conv_k[i])


def test_decoding_equals_forward_and_split():
    mixer = gdn(chunk_size=8, backend="chunked")
    x = torch.randn(2, 13, D, dtype=torch.float64)
    final, state, s = check_decode_and_split("gated_deltanet", mixer, x, 5)
    assert_close("decoded state", final.mem.memory, state.mem.memory)
    assert_close("split conv_q", final.conv_q, s.conv_q)


def test_options_and_errors():
    mixer = memnets.build_mixer(
        "gated_deltanet", d_model=24, num_heads=3, head_dim=4, expand_v=2.0, backend="chunked"
    )
    y, state = mixer(torch.randn(2, 5, 24))
    assert y.shape == (2, 5, 24) and state.mem.memory.shape == (2, 3, 4, 8)
    assert mixer.state_size(100) == 3 * 4 * 8 + 3 * (12 + 12 + 24)
    with pytest.raises(ValueError, match="num_heads=5"):
        memnets.build_mixer("gated_deltanet", d_model=24, num_heads=5)
    with pytest.raises(ValueError, match=r"expand_v=0\.3"):
        memnets.build_mixer("gated_deltanet", d_model=24, num_heads=3, expand_v=0.3)
    with pytest.raises(ValueError, match="state holds 2 sequences"):
        mixer(torch.randn(3, 5, 24), state)
    with pytest.raises(ValueError, match="cu_seqlens"):
        mixer(torch.randn(2, 5, 24), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="backend='bogus'"):
        GatedDeltaNet(24, 3, backend="bogus")(torch.randn(1, 2, 24))


@pytest.mark.parametrize("packed", [False, True])
def test_triton_equals_chunked_float32(packed):
    mixer = memnets.build_mixer("gated_deltanet", d_model=D, num_heads=H, chunk_size=16, backend="chunked")
    cu = torch.tensor([0, 7, 27]) if packed else None
    x = torch.randn(1 if packed else 2, 27 if packed else 20, D)
    state = random_state(mixer, x, cu)
    ref = forward_backward(mixer, x, state, cu)
    mixer.backend = "triton"
    assert_all_close(ref, forward_backward(mixer, x, state, cu))
