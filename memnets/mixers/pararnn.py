"""ParaRNN mixers ``paragru`` and ``paralstm`` (Danieli et al., "ParaRNN: Unlocking Parallel Training of
Nonlinear RNNs for Large Language Models", arXiv 2510.21450, ICLR 2026; sections and equations below are
those of arXiv v2).

Cells (paper §3, eqs. 3.1-3.2): GRU and CIFG-LSTM whose recurrent and peephole matrices are diagonal
vectors, so the exact Jacobian ``d h_t / d h_{t-1}`` is diagonal (ParaGRU) or one 2x2 block per channel
(ParaLSTM, channel state ``(c, h)``). Training runs the trajectory in parallel by Newton iterations, each a
linear scan (``memnets.newton``); decoding runs the cell one token at a time.

ParaGRU, with ``u = B x + b`` (rows z, r, c) and ``a_z, a_r, a_c`` the diagonal recurrent weights:
    z = sigmoid(a_z h + u_z),  r = sigmoid(a_r h + u_r),  c = tanh(a_c (h r) + u_c),  h' = (1 - z) h + z c
ParaLSTM (CIFG with peepholes ``p_f, p_o``; the paper's ``c_f, c_o``), ``u`` rows f, z, o:
    f = sigmoid(a_f h + p_f c + u_f),  z = tanh(a_z h + u_z),  c' = f c + (1 - f) z,
    o = sigmoid(a_o h + p_o c' + u_o),  h' = o tanh(c')

Block (paper Fig. 9, whose wiring is only drawn; decided here): ``in_proj`` -> (x, gate); x -> causal
short conv + SiLU -> multi-head block-diagonal input projection ``B`` (one ``[d_h/H, 3, d_h/H]`` block
per head, App. C.1) -> cell -> ``h + skip * x`` (the figure's learnable "Scale" of the input, read as a
Mamba-style per-channel D skip, initialised to 1) -> gated RMSNorm with SiLU(gate) -> ``out_proj``.

Choices where the paper is open:
* ``clip`` (default 0.5, App. C.1: "clip the norm of a⋆ and c⋆ to a maximum of 0.5"; the paper used
  0.9 on synthetic tasks and none for Parity; ``None`` disables it) bounds the Jacobians and keeps
  Newton convergent, applied in the forward pass to each recurrent and peephole vector. ``clip_mode``
  says how: ``"value"`` (default, kept from earlier versions) clamps each entry to [-clip, clip], which
  has zero gradient outside; ``"norm"`` is the paper's wording read literally: each vector is rescaled
  to Euclidean norm at most ``clip`` (w·min(1, clip/‖w‖₂)), keeping its direction and its gradient.
  The norm clip is far tighter: the paper's init gives ‖w‖₂ ≈ 1, so a clip of 0.5 halves the vectors
  at init and every entry stays below clip. The paper does not say which norm; its Jacobian argument
  (eigenvalues bounded as in Mamba) would also fit the max-norm, which the clamp bounds.
* ``init="paper"`` (default, what the paper trained with, App. C.1): ``B`` Kaiming-uniform
  U(+-sqrt(3 / fan_in)), recurrent/peephole vectors truncated N(0, 1/d_h) clipped to +-0.9, biases 0.
  ``init="code"`` = Apple's released defaults: vectors N(0, (2 / sqrt(5 d_h))^2), ``B`` Xavier-uniform,
  first gate bias (z for GRU, f for LSTM) = -linspace(0, 1, d_h).
* Newton: at most ``newton_iters`` (default 3, as in the paper) steps with the residual check and
  sequential fallback of ``memnets.newton``; the last solve's ``NewtonStats`` is in ``last_stats``.
* ``cu_seqlens``: the state is zeroed at every sequence start (the Jacobian there is 0).

Backends: ``reference`` = the sequential loop (autograd through time); ``chunked`` = Newton + the PyTorch
associative scan with the implicit backward; ``triton`` = the same Newton iterations and implicit
backward with every linear scan (forward solves and the reverse adjoint scan) in the Triton kernel
:mod:`memnets.kernels.scan_triton` (diagonal and 2x2 block layouts), while the cell, its Jacobian and
the residual stay in PyTorch. The kernel needs CUDA tensors (or ``TRITON_INTERPRET=1`` on CPU) and
raises otherwise; ``auto`` picks ``triton`` on CUDA, else ``chunked``. Decoding (``step``) runs the cell
one token at a time whatever the backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..dispatch import Backend, MemoryDispatch
from ..modules import GatedRMSNorm, ShortConv
from ..newton import Cell, NewtonOptions, NewtonStats
from ..ops import PARARNN
from ..registry import register_mixer
from .base import check_cu_seqlens, last_sequence_conv

Init = Literal["paper", "code"]
ClipMode = Literal["value", "norm"]


def _clip(w: Tensor, clip: float | None, mode: ClipMode) -> Tensor:
    """The recurrent/peephole vectors (rows of ``w``) as the cell uses them (module docstring, ``clip``)."""
    if clip is None:
        return w
    if mode == "value":
        return w.clamp(-clip, clip)
    # w·min(1, clip/‖w‖): the direction is kept and the gradient flows at any norm
    return w * (clip / w.norm(dim=-1, keepdim=True).clamp_min(clip))


def _init_vectors(w: Tensor, init: Init) -> None:
    d_h = w.shape[-1]
    if init == "paper":
        nn.init.trunc_normal_(w, std=d_h**-0.5, a=-0.9, b=0.9)
    else:
        nn.init.normal_(w, std=2 / math.sqrt(5 * d_h))


class ParaGRUCell(Cell):
    """Diagonal GRU (eq. 3.1a with diagonal A). ``u [..., 3, D]`` rows (z, r, c); state ``[..., D]``."""

    structure = "diag"

    def __init__(
        self, d_h: int, clip: float | None = 0.5, init: Init = "paper", clip_mode: ClipMode = "value"
    ) -> None:
        super().__init__()
        self.clip, self.clip_mode = clip, clip_mode
        self.a = nn.Parameter(torch.empty(3, d_h))  # a_z, a_r, a_c
        _init_vectors(self.a, init)

    def _gates(self, h: Tensor, u: Tensor):
        a_z, a_r, a_c = _clip(self.a, self.clip, self.clip_mode).to(u.dtype).unbind(0)
        u_z, u_r, u_c = u.unbind(-2)
        z = torch.sigmoid(a_z * h + u_z)
        r = torch.sigmoid(a_r * h + u_r)
        c = torch.tanh(a_c * (h * r) + u_c)
        return a_z, a_r, a_c, z, r, c

    def f(self, h_prev: Tensor, u: Tensor) -> Tensor:
        _, _, _, z, _, c = self._gates(h_prev, u)
        return h_prev + z * (c - h_prev)

    def f_and_jacobian(self, h_prev: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        a_z, a_r, a_c, z, r, c = self._gates(h_prev, u)
        d = c - h_prev
        # eq. 3.2a: d/dh of (1 - z) h + z c through z(h), r(h) and c(h, r(h))
        J = (1 - z) * (1 + d * z * a_z) + z * (1 - c * c) * a_c * (r + h_prev * r * (1 - r) * a_r)
        return h_prev + z * d, J

    def jacobian(self, h_prev: Tensor, u: Tensor) -> Tensor:
        return self.f_and_jacobian(h_prev, u)[1]


class ParaLSTMCell(Cell):
    """Diagonal CIFG-LSTM with peepholes (eq. 3.1b). ``u [..., 3, D]`` rows (f, z, o); state
    ``[..., 2, D]`` = (c, h); the Jacobian is ``[..., 2, 2, D]`` (rows c', h'; columns c, h)."""

    structure = "block2"

    def __init__(
        self, d_h: int, clip: float | None = 0.5, init: Init = "paper", clip_mode: ClipMode = "value"
    ) -> None:
        super().__init__()
        self.clip, self.clip_mode = clip, clip_mode
        self.a = nn.Parameter(torch.empty(3, d_h))  # a_f, a_z, a_o
        self.p = nn.Parameter(torch.empty(2, d_h))  # peepholes p_f, p_o (the paper's c_f, c_o)
        _init_vectors(self.a, init)
        _init_vectors(self.p, init)

    def _gates(self, s: Tensor, u: Tensor):
        a_f, a_z, a_o = _clip(self.a, self.clip, self.clip_mode).to(u.dtype).unbind(0)
        p_f, p_o = _clip(self.p, self.clip, self.clip_mode).to(u.dtype).unbind(0)
        u_f, u_z, u_o = u.unbind(-2)
        c, h = s.unbind(-2)
        f = torch.sigmoid(a_f * h + p_f * c + u_f)
        z = torch.tanh(a_z * h + u_z)
        c_new = f * c + (1 - f) * z
        o = torch.sigmoid(a_o * h + p_o * c_new + u_o)
        tc = torch.tanh(c_new)
        return (a_f, a_z, a_o, p_f, p_o), (c, h, f, z, c_new, o, tc)

    def f(self, h_prev: Tensor, u: Tensor) -> Tensor:
        _, (_, _, _, _, c_new, o, tc) = self._gates(h_prev, u)
        return torch.stack([c_new, o * tc], -2)

    def f_and_jacobian(self, h_prev: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        (a_f, a_z, a_o, p_f, p_o), (c, _, f, z, c_new, o, tc) = self._gates(h_prev, u)
        # eq. 3.2b
        g = (c - z) * (f * (1 - f))
        j_cc = f + g * p_f
        j_ch = g * a_f + (1 - f) * (1 - z * z) * a_z
        t_do = tc * (o * (1 - o))
        dh_dc = t_do * p_o + o * (1 - tc * tc)  # d h' / d c' (through o and tanh)
        j_hc = dh_dc * j_cc
        j_hh = t_do * a_o + dh_dc * j_ch
        J = torch.stack([j_cc, j_ch, j_hc, j_hh], -2).unflatten(-2, (2, 2))
        return torch.stack([c_new, o * tc], -2), J

    def jacobian(self, h_prev: Tensor, u: Tensor) -> Tensor:
        return self.f_and_jacobian(h_prev, u)[1]

    def output(self, s: Tensor) -> Tensor:
        return s[..., 1, :]


@dataclass
class ParaRNNState:
    conv: Tensor | None  # ShortConv window [B, conv_size - 1, d_h]
    h: Tensor  # cell state [B, d_h] (GRU) or [B, 2, d_h] = (c, h) (LSTM)


class _ParaRNN(nn.Module):
    name = ""
    cell_class: type[Cell] = Cell

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        expand: int = 1,
        conv_size: int = 4,
        clip: float | None = 0.5,
        clip_mode: ClipMode = "value",
        init: Init = "paper",
        skip: bool = True,
        newton_iters: int = 3,
        newton_tol: float | None = None,
        on_fail: Literal["fallback", "raise"] = "fallback",
        chunk_size: int = 8,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        d_h = expand * d_model
        for key, value, lo in (
            ("expand", expand, 1),
            ("conv_size", conv_size, 0),
            ("chunk_size", chunk_size, 2),
            ("newton_iters", newton_iters, 0),
        ):
            if value < lo:
                raise ValueError(f"{self.name}: {key}={value} must be >= {lo}")
        if d_h % num_heads:
            raise ValueError(
                f"{self.name}: expand * d_model = {d_h} is not divisible by num_heads={num_heads}"
            )
        if clip is not None and clip <= 0:
            raise ValueError(f"{self.name}: clip={clip} must be > 0 or null (no clip)")
        if init not in ("paper", "code"):
            raise ValueError(f"{self.name}: init={init!r} is not one of ['paper', 'code']")
        if clip_mode not in ("value", "norm"):
            raise ValueError(f"{self.name}: clip_mode={clip_mode!r} is not one of ['value', 'norm']")
        self.d_h, self.num_heads, self.backend = d_h, num_heads, backend
        self.options = NewtonOptions(
            max_iters=newton_iters, tol=newton_tol, on_fail=on_fail, chunk_size=chunk_size
        )
        self.solve = MemoryDispatch(self.name, PARARNN)  # token loop, or Newton + chunked/Triton scan
        self.solve.check(backend)
        self.in_proj = nn.Linear(d_model, 2 * d_h, bias=False)
        self.conv = ShortConv(d_h, conv_size) if conv_size > 0 else None
        head = d_h // num_heads
        # block-diagonal input projection: head i maps its d_h/H inputs to the 3 gates of its d_h/H channels
        self.B = nn.Parameter(torch.empty(num_heads, head, 3, head))
        self.bias = nn.Parameter(torch.zeros(3, d_h))
        if init == "paper":
            nn.init.uniform_(self.B, -math.sqrt(3 / head), math.sqrt(3 / head))
        else:
            bound = math.sqrt(6 / (2 * head))
            nn.init.uniform_(self.B, -bound, bound)
            with torch.no_grad():
                self.bias[0] = -torch.linspace(0, 1, d_h)
        self.cell = self.cell_class(d_h, clip=clip, init=init, clip_mode=clip_mode)
        self.skip = nn.Parameter(torch.ones(d_h)) if skip else None
        self.norm = GatedRMSNorm(d_h)
        self.out_proj = nn.Linear(d_h, d_model, bias=False)
        self.last_stats = NewtonStats()

    def _project(self, x: Tensor) -> Tensor:
        """``x [..., d_h] -> u [..., 3, d_h]`` = block-diagonal ``B x + b``."""
        H = self.num_heads
        xh = x.unflatten(-1, (H, self.d_h // H))
        u = torch.einsum("...hi,higj->...ghj", xh, self.B.to(x.dtype)).flatten(-2)
        return u + self.bias.to(u.dtype)

    def _out(self, h: Tensor, x: Tensor, gate: Tensor) -> Tensor:
        if self.skip is not None:
            h = h + self.skip * x
        return self.out_proj(self.norm(h.to(x.dtype), gate))

    def forward(
        self, x: Tensor, state: ParaRNNState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, ParaRNNState]:
        check_cu_seqlens(self.name, x, cu_seqlens)
        if cu_seqlens is not None and state is not None:
            raise ValueError(f"{self.name}: cu_seqlens cannot be combined with a recurrent state")
        xc, gate = self.in_proj(x).chunk(2, -1)
        conv_state = None
        if self.conv is not None:
            xc, conv_state = self.conv(xc, None if state is None else state.conv, cu_seqlens)
        u = self._project(xc)
        reset = None
        if cu_seqlens is not None:
            reset = torch.zeros(1, x.shape[1], dtype=torch.bool, device=x.device)
            starts = cu_seqlens[:-1].long()
            reset[0, starts[starts < x.shape[1]]] = True  # an empty last sequence starts at T
        h0 = None if state is None else state.h
        S = self.solve(self.backend, self.cell, u, h0, reset, options=self.options, stats=self.last_stats)
        last = S[:, -1]
        if cu_seqlens is not None:  # the last packed sequence's own state (what running it alone leaves)
            if conv_state is not None:
                conv_state = last_sequence_conv({"x": conv_state}, cu_seqlens)["x"]
            if int(cu_seqlens[-1]) == int(cu_seqlens[-2]):
                last = torch.zeros_like(last)
        return self._out(self.cell.output(S), xc, gate), ParaRNNState(conv_state, last)

    def step(self, x: Tensor, state: ParaRNNState | None) -> tuple[Tensor, ParaRNNState]:
        xc, gate = self.in_proj(x).chunk(2, -1)
        conv_state = None
        if self.conv is not None:
            xc, conv_state = self.conv.step(xc, None if state is None else state.conv)
        u = self._project(xc)
        h = self.cell.zero_state(u) if state is None else state.h
        h = self.cell.f(h.to(torch.promote_types(h.dtype, u.dtype)), u)
        return self._out(self.cell.output(h), xc, gate), ParaRNNState(conv_state, h)

    def state_size(self, seq_len: int) -> int:
        per_channel = 2 if self.cell.structure == "block2" else 1
        conv = (self.conv.kernel_size - 1) if self.conv is not None else 0
        return self.d_h * (per_channel + conv)


@register_mixer("paragru")
class ParaGRU(_ParaRNN):
    """ParaGRU mixer: diagonal GRU cell trained by Newton + parallel scan (options: module docstring)."""

    name = "paragru"
    cell_class = ParaGRUCell


@register_mixer("paralstm")
class ParaLSTM(_ParaRNN):
    """ParaLSTM mixer: diagonal CIFG-LSTM cell with peepholes (2x2 Jacobian per channel)."""

    name = "paralstm"
    cell_class = ParaLSTMCell
