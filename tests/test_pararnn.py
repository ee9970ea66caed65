"""ParaRNN: the Newton solver equals the sequential loop (states and every gradient), the analytic
Jacobians equal autograd's, a non-converging cell falls back visibly, and the paragru/paralstm mixers
decode, continue states and pack sequences exactly like their parallel forward."""

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from memnets.config import load_config
from memnets.mixers.pararnn import ParaGRUCell, ParaLSTMCell, ParaRNNState
from memnets.model import LM, ModelConfig
from memnets.newton import (
    Cell,
    NewtonDivergenceError,
    NewtonOptions,
    NewtonStats,
    NewtonWarning,
    newton_solve,
    sequential_solve,
)
from memnets.registry import build_mixer
from memnets.testing import assert_close


class TanhCell(Cell):
    """A cell written only as f and its Jacobian: h' = tanh(w h + u_0) * sigmoid(u_1)."""

    structure = "diag"

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(d) * 0.8)

    def f(self, h_prev: Tensor, u: Tensor) -> Tensor:
        return torch.tanh(self.w * h_prev + u[..., 0, :]) * torch.sigmoid(u[..., 1, :])

    def jacobian(self, h_prev: Tensor, u: Tensor) -> Tensor:
        t = torch.tanh(self.w * h_prev + u[..., 0, :])
        return (1 - t * t) * self.w * torch.sigmoid(u[..., 1, :])


class LogisticCell(Cell):
    """The chaotic logistic map: Newton cannot converge in a few steps over a long sequence."""

    structure = "diag"

    def f(self, h_prev: Tensor, u: Tensor) -> Tensor:
        h = 0.98 * h_prev + 0.01 * torch.sigmoid(u[..., 0, :])  # stays in [0, 1)
        return 3.99 * h * (1 - h)

    def jacobian(self, h_prev: Tensor, u: Tensor) -> Tensor:
        h = 0.98 * h_prev + 0.01 * torch.sigmoid(u[..., 0, :])
        return 3.99 * 0.98 * (1 - 2 * h)


def _cell(kind: str, d: int, dtype: torch.dtype) -> tuple[Cell, int]:
    """The cell and its number of input projections per channel."""
    if kind == "gru":
        cell, g = ParaGRUCell(d), 3
    elif kind == "lstm":
        cell, g = ParaLSTMCell(d), 3
    else:
        cell, g = TanhCell(d), 2
    with torch.no_grad():  # recurrent weights spread over and beyond the clip, to exercise it
        for p in cell.parameters():
            p.uniform_(-0.7, 0.7)
    return cell.to(dtype), g


@pytest.mark.parametrize("kind", ["gru", "lstm", "tanh"])
def test_jacobian_matches_autograd(kind):
    cell, g = _cell(kind, 5, torch.float64)
    u = torch.randn(3, g, 5, dtype=torch.float64)
    h = cell.zero_state(u).normal_()
    J = cell.jacobian(h, u)
    _, J2 = cell.f_and_jacobian(h, u)
    assert_close("f_and_jacobian", J, J2)
    for b in range(u.shape[0]):
        full = torch.autograd.functional.jacobian(lambda hb, b=b: cell.f(hb, u[b]), h[b])
        if cell.structure == "diag":  # [5] -> [5]: diagonal
            expect = torch.diag_embed(J[b])
        else:  # [2, 5] -> [2, 5]: a 2x2 block per channel
            expect = torch.zeros(2, 5, 2, 5, dtype=torch.float64)
            for d in range(5):
                expect[:, d, :, d] = J[b, :, :, d]
        assert_close(f"jacobian[{b}]", full, expect, atol=1e-14)


def _solve_and_grads(cell, u, h0, cot, parallel, options=None, reset=None):
    leaves = [u, h0, *cell.parameters()]
    if parallel:
        stats = NewtonStats()
        H = newton_solve(cell, u, h0, reset, options, stats)
    else:
        H, stats = sequential_solve(cell, u, h0, reset), None
    grads = torch.autograd.grad(H, leaves, cot)
    return H, grads, stats


@pytest.mark.parametrize("kind", ["gru", "lstm", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 63, 1000, 4096])
def test_newton_equals_sequential(kind, dtype, T):
    cell, g = _cell(kind, 3, dtype)
    u = torch.randn(2, T, g, 3, dtype=dtype, requires_grad=True)
    h0 = cell.zero_state(u[:, 0]).normal_().requires_grad_()
    cot = torch.randn_like(cell.zero_state(u))
    # float64 runs to machine precision; float32 uses the paper's 3 iterations and the default tolerance
    chunk_size = {1: 8, 63: 4, 1000: 16, 4096: 8}[T]
    if dtype == torch.float64:
        options = NewtonOptions(max_iters=6, chunk_size=chunk_size)
    else:
        options = NewtonOptions(chunk_size=chunk_size)
    ref, ref_grads, _ = _solve_and_grads(cell, u, h0, cot, parallel=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NewtonWarning)
        out, grads, stats = _solve_and_grads(cell, u, h0, cot, parallel=True, options=options)
    assert stats.converged and not stats.fallback and stats.iters <= options.max_iters
    assert_close("H", ref, out)
    names = ["u", "h0"] + [n for n, _ in cell.named_parameters()]
    for name, r, o in zip(names, ref_grads, grads):
        assert_close(f"grad {name}", r, o)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_newton_with_resets(kind):
    """Packed sequences: the state is zeroed where ``reset`` is True (and h0 only reaches t = 0)."""
    cell, g = _cell(kind, 3, torch.float64)
    u = torch.randn(2, 100, g, 3, dtype=torch.float64, requires_grad=True)
    h0 = cell.zero_state(u[:, 0]).normal_().requires_grad_()
    reset = torch.zeros(2, 100, dtype=torch.bool)
    reset[0, [17, 18, 60]] = True
    reset[1, [0, 99]] = True
    cot = torch.randn_like(cell.zero_state(u))
    options = NewtonOptions(max_iters=6)
    ref, ref_grads, _ = _solve_and_grads(cell, u, h0, cot, False, reset=reset)
    out, grads, stats = _solve_and_grads(cell, u, h0, cot, True, options, reset=reset)
    assert stats.converged
    assert_close("H", ref, out)
    for r, o in zip(ref_grads, grads):
        assert_close("grad", r, o)
    with torch.no_grad():  # each segment starts from a zero state
        assert_close("segment", sequential_solve(cell, u[:1, 18:60]), out[:1, 18:60])
        assert_close("row reset at 0", sequential_solve(cell, u[1:, :99]), out[1:, :99])


def test_nonconvergent_cell_falls_back_with_warning():
    cell = LogisticCell()
    u = torch.randn(2, 64, 1, 4, dtype=torch.float64, requires_grad=True)
    stats = NewtonStats()
    with pytest.warns(NewtonWarning, match="residual"):
        H = newton_solve(cell, u, stats=stats)
    assert stats.fallback and not stats.converged and stats.iters == 3
    assert math.isnan(stats.residual) or stats.residual > 1e-3  # Newton overflows on this map
    ref = sequential_solve(cell, u)
    assert_close("fallback H", ref, H)
    cot = torch.randn_like(H)
    assert_close("fallback grad", torch.autograd.grad(ref, u, cot)[0], torch.autograd.grad(H, u, cot)[0])
    with pytest.warns(NewtonWarning, match="fallback #2 of this cell"):
        newton_solve(cell, u)
    with warnings.catch_warnings():  # the third fallback is counted, not announced
        warnings.simplefilter("error", NewtonWarning)
        newton_solve(cell, u)
    assert cell.newton_fallbacks == 3
    with pytest.raises(NewtonDivergenceError, match="residual"):
        newton_solve(cell, u, options=NewtonOptions(on_fail="raise"))


def test_nan_never_passes_silently():
    cell, g = _cell("gru", 3, torch.float32)
    u = torch.randn(1, 20, g, 3)
    u[0, 7, 0, 1] = float("nan")
    with (
        pytest.warns(NewtonWarning, match="nan"),
        pytest.raises(FloatingPointError, match="inputs finite: False"),
    ):
        newton_solve(cell, u)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_norm_clip_rescales_each_vector(kind):
    """``clip_mode="norm"``: every recurrent/peephole vector the cell uses has Euclidean norm <= clip and
    the direction of its parameter; one under the clip is used as is; the gradient flows to entries
    beyond the clip, where the elementwise clamp (``"value"``) gives none."""
    d, clip = 6, 0.5
    cls = ParaGRUCell if kind == "gru" else ParaLSTMCell
    cells = {mode: cls(d, clip=clip, clip_mode=mode).double() for mode in ("value", "norm")}
    with torch.no_grad():
        for cell in cells.values():
            for p in cell.parameters():
                p.copy_(torch.linspace(-0.8, 0.8, d, dtype=torch.float64))
            cell.a[0] *= 0.1  # one vector under the clip: ‖·‖₂ ≈ 0.12
    h = torch.randn(2, d, dtype=torch.float64) if kind == "gru" else torch.randn(2, 2, d, dtype=torch.float64)
    u = torch.randn(2, 3, d, dtype=torch.float64)
    gates = cells["norm"]._gates(h, u)
    used = gates[:3] if kind == "gru" else gates[0]
    params = [*cells["norm"].a] + ([] if kind == "gru" else [*cells["norm"].p])
    for w, p in zip(used, params):
        assert w.norm() <= clip + 1e-12
        assert_close("direction", p / p.norm(), w / w.norm())
    assert_close("under the clip", cells["norm"].a[0], used[0])
    for mode, cell in cells.items():
        (g,) = torch.autograd.grad(cell.f(h, u).sum(), cell.a)
        beyond = cell.a[1:].abs() > clip
        assert beyond.any()
        assert (g[1:][beyond] == 0).all() if mode == "value" else (g[1:][beyond] != 0).all()


# ----------------------------------------------------------------------------------------------------
# mixers


def _mixer(name: str, **kw):
    torch.manual_seed(1)
    return build_mixer(name, d_model=8, num_heads=2, **kw).double()


def _all_grads(m, inputs, y, state, cots):
    loss = (y * cots[0]).sum() + (state.h * cots[1]).sum() + (state.conv * cots[2]).sum()
    return torch.autograd.grad(loss, [*inputs, *m.parameters()])


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
@pytest.mark.parametrize("T", [1, 65])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("clip_mode", ["value", "norm"])
def test_mixer_parallel_equals_reference(name, T, with_state, clip_mode):
    """Outputs, final state and the gradients of x, the initial state (cell and conv) and every parameter."""
    m = _mixer(name, newton_iters=6, clip_mode=clip_mode)
    x = torch.randn(2, T, 8, dtype=torch.float64, requires_grad=True)
    inputs = [x]
    state = None
    if with_state:
        _, s0 = m(torch.randn(2, 5, 8, dtype=torch.float64))
        state = ParaRNNState(s0.conv.detach().requires_grad_(), s0.h.detach().requires_grad_())
        inputs += [state.conv, state.h]
    m.backend = "reference"
    y_ref, s_ref = m(x, state)
    cots = [torch.randn_like(t) for t in (y_ref, s_ref.h, s_ref.conv)]
    g_ref = _all_grads(m, inputs, y_ref, s_ref, cots)
    m.backend = "chunked"
    y, s = m(x, state)
    assert m.last_stats.converged and not m.last_stats.fallback
    assert_close("y", y_ref, y)
    assert_close("state", s_ref.h, s.h)
    assert_close("conv state", s_ref.conv, s.conv)
    names = ["x", "conv0", "h0"][: len(inputs)] + [n for n, _ in m.named_parameters()]
    for n, r, o in zip(names, g_ref, _all_grads(m, inputs, y, s, cots)):
        assert_close(f"grad {n}", r, o)


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_decoding_and_state_continuation(name):
    m = _mixer(name, newton_iters=6)
    x = torch.randn(2, 23, 8, dtype=torch.float64)
    y, state = m(x)
    # token by token through step
    s, outs = None, []
    for t in range(23):
        yt, s = m.step(x[:, t], s)
        outs.append(yt)
    assert_close("step y", y, torch.stack(outs, 1))
    assert_close("step state", state.h, s.h)
    assert_close("step conv state", state.conv, s.conv)
    # prefill 10 tokens, continue with forward
    y1, s1 = m(x[:, :10])
    y2, s2 = m(x[:, 10:], s1)
    assert_close("continued y", y, torch.cat([y1, y2], 1))
    assert_close("continued state", state.h, s2.h)
    assert isinstance(s2, ParaRNNState)


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_packed_sequences(name):
    m = _mixer(name, newton_iters=6)
    lens = [5, 17, 1, 30]
    xs = [torch.randn(1, n, 8, dtype=torch.float64) for n in lens]
    cu = torch.tensor([0, 5, 22, 23, 53])
    y, _ = m(torch.cat(xs, 1), cu_seqlens=cu)
    assert_close("packed", torch.cat([m(x)[0] for x in xs], 1), y)


def test_mixer_bad_options_and_backend():
    with pytest.raises(
        ValueError,
        match=r"backend='cuda' is not allowed; choose one of \['auto', 'reference', 'chunked', 'compiled', 'triton'\]",
    ):
        _mixer("paragru", backend="cuda")(torch.randn(1, 4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="clip"):
        _mixer("paralstm", clip=0.0)
    with pytest.raises(ValueError, match=r"clip_mode='l2' is not allowed; choose one of \['value', 'norm'\]"):
        _mixer("paragru", clip_mode="l2")
    with pytest.raises(ValueError, match="num_heads"):
        build_mixer("paragru", d_model=6, num_heads=4)


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_lm_trains_and_generates(name):
    cfg = ModelConfig(vocab_size=32, d_model=16, n_layers=2, num_heads=2, mixer=name)
    model = LM(cfg)
    ids = torch.randint(0, 32, (2, 40))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    out = model.generate(ids[:, :5], max_new_tokens=6)
    full = model(out[:, :-1]).argmax(-1)[:, 4:]  # greedy decoding equals the parallel forward's argmax
    assert torch.equal(out[:, 5:], full)


@pytest.mark.parametrize(
    "path",
    [
        "mqar/paragru",
        "mqar/paralstm",
        "lm/paragru-tiny",
        "lm/paralstm-tiny",
        "lm/paragru-400m",
        "lm/paralstm-400m",
    ],
)
def test_configs_load(path):
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        root / f"configs/{path}.yaml", ["data.path=corpus.bin"] if path.startswith("lm/") else []
    )
    assert cfg.model.mixer in ("paragru", "paralstm")
    if path.endswith("400m"):  # the paper's 400M models have 406M parameters (Table 3)
        with torch.device("meta"):
            n = LM(cfg.model).num_params()
        assert abs(n - 406e6) / 406e6 < 0.02, n


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bfloat16_inputs_solve_in_float32(kind):
    cell, g = _cell(kind, 4, torch.float32)
    u = torch.randn(2, 200, g, 4)
    ref = sequential_solve(cell, u.bfloat16().float())
    out = newton_solve(cell, u.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_close("H", ref, out.float(), ratio=2e-2)
