"""Per-channel gates (``gates: channel``): one gate per output unit of every weight matrix (Titans
arXiv 2501.00663 App. C's diag gates; Miras arXiv 2504.13173 §5.4's channel-wise gates). Chunked ==
token-by-token reference (outputs, states, every gradient incl. the initial state), chunk size 1 ==
the exact online rule, decoding == one call; the dispatcher keeps them off the Triton kernels."""

import pytest
import torch
import torch.nn.functional as F
from test_memory_engine import compare, random_state, run_and_grad

from memnets.memory import MemoryMLP, gate_units, memory_chunked, memory_reference
from memnets.testing import assert_close

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
    state, ys = None, []
    for t in range(q.shape[1]):
        sl = slice(t, t + 1)
        yt, state = memory_chunked(
            arch, q[:, sl], k[:, sl], v[:, sl], lr[:, sl], mom[:, sl], keep[:, sl], state, chunk_size=C
        )
        ys.append(yt)
    assert_close("token by token", y, torch.cat(ys, 1))
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
