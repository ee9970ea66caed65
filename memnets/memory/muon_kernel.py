"""The model side of the Muon kernels (Atlas, ATLAS arXiv 2505.23735 §5 Eq. 32–33):
:func:`omega_muon_chunked`, a drop-in for :func:`memnets.memory.omega.omega_chunked` with ``muon="chunk"``
(:mod:`memnets.kernels.mlp_memory.muon_forward`) or ``muon="token"`` (Eq. 40,
:mod:`memnets.kernels.mlp_memory.token_muon_forward`), forward and backward, and the per-chunk coefficients the kernels take (:func:`muon_coefficients`,
:func:`token_muon_coefficients`), computed here so that autograd carries their gradients to the gates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.mlp_memory.muon_launch import muon_memory_chunked, muon_supports, token_muon_memory_chunked
from ..kernels.packing import chunk_layout
from . import MemoryMLP, MemoryState, check_inputs
from .features import FeatureMemoryMLP
from .kernel_bridge import _bias_spec, _dot_precision, _net_spec, _tile_gate, tile_band
from .muon import MUON_COEFFICIENTS
from .omega import Muon, OmegaState, omega_chunked, omega_initial_state
from .rule import segsum
from .segments import split_started_chunk


def supports_muon(
    arch: MemoryMLP,
    bias: object,
    chunk_size: int,
    window: int,
    muon: Muon = "chunk",
    dot_precision: str = "auto",
) -> str | None:
    """``None`` when the Muon kernel of ``muon`` covers this memory, bias, chunk size, window and matmul
    operands (``dot_precision``), else the reason."""
    if type(arch) not in (MemoryMLP, FeatureMemoryMLP):
        return f"memory {type(arch).__name__} (the Muon kernel covers the chain MLP memory)"
    spec = _bias_spec(bias)
    if spec is None or spec.kind != "l2":
        return f"attentional bias {bias!r} (the Muon kernel covers L2Bias)"
    return muon_supports(_net_spec(arch), chunk_size, window - 1, muon == "token", dot_precision)


def muon_coefficients(
    lr: Tensor, log_keep: Tensor, log_mom: Tensor, valid: Tensor, band: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The Muon kernel's coefficients of chunks of L tokens (gates ``[..., L]``, the tail padded with lr
    0, keep = mom = 1 and ``valid`` 0; ``band [..., L, P + L]`` the Omega window's Γ): the reads'
    β_t = Π_{i≤t} keep_i, d_t = Σ_{i≤t} (β_t/β_i) lr_i − l_t and l_t = lr_t at the chunk's last slot
    (W_t = β_t W + d_t O + l_t NS(S')), the momentum's m_end = Π mom and s = (m_end/m_t)_t Γ
    (S' = m_end S − Σ_e s_e ∇ℓ_e; no step size, ATLAS Eq. 32), as in
    :func:`memnets.memory.omega.omega_chunked`."""
    L = lr.shape[-1]
    beta = log_keep.cumsum(-1).exp()
    D = (segsum(log_keep).exp() @ lr[..., None])[..., 0]
    last = F.pad(lr[..., -1:], (L - 1, 0))
    decay = segsum(log_mom).exp()[..., -1, :] * valid
    s = (decay[..., None, :] @ band)[..., 0, :]
    return beta, D - last, last, log_mom.sum(-1).exp(), s


def token_muon_coefficients(
    lr: Tensor, log_keep: Tensor, log_mom: Tensor, valid: Tensor, band: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The per-token Muon kernel's coefficients of chunks of L tokens (gates as :func:`muon_coefficients`'
    take them): β_t = Π_{i≤t} keep_i, keep_t, lr_t, m_t = Π_{i≤t} mom_i ``[..., L]`` and
    Q ``[..., L, P + L]``, the coefficient of key row e's gradient in m_t S − S_t (the momentum's decays
    m_t/m_i over the chunk's valid tokens i, times the window's band), as
    :func:`memnets.memory.omega._decays`."""
    Q = (segsum(log_mom).exp() * valid[..., None, :]) @ band
    return log_keep.cumsum(-1).exp(), log_keep.exp(), lr, log_mom.cumsum(-1).exp(), Q


def omega_muon_chunked(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    win_gate: Tensor | None = None,
    state: OmegaState | None = None,
    *,
    window: int = 1,
    chunk_size: int = 16,
    bias: object = None,
    muon: Muon = "chunk",
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    checkpoint_every: int | None = None,
    dot_precision: str = "auto",
) -> tuple[Tensor, OmegaState]:
    """Drop-in for :func:`memnets.memory.omega.omega_chunked` with ``muon`` on a depth-2 chain MLP memory
    (:func:`supports_muon`), dense batches: the kernel from the first chunk boundary, a started chunk
    (decoding) finished in PyTorch first."""
    name = "omega_muon_chunked"
    dot_precision = _dot_precision(name, dot_precision, q)
    if muon not in ("chunk", "token"):
        raise ValueError(f"{name}: muon={muon!r} is not one of ['chunk', 'token']")
    reason = supports_muon(arch, bias, chunk_size, window, muon, dot_precision)
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    if mom is None:
        raise ValueError(f"{name}: muon needs the momentum gate mom")
    check_inputs(arch, q, k, v, lr, mom, keep, None if state is None else state.memory, chunk_size, name)
    B, T = q.shape[:2]
    y0 = None
    if state is not None and state.memory.offset > 0:
        head, rest = split_started_chunk(state.memory.offset, chunk_size, q, k, v, lr, mom, keep, win_gate)
        y0, state = omega_chunked(
            arch, *head, state, window=window, chunk_size=chunk_size, bias=bias, muon=muon,  # type: ignore[arg-type]
            ns_steps=ns_steps, ns_coefficients=ns_coefficients,
        )  # fmt: skip
        if rest[0].shape[1] == 0:  # type: ignore[union-attr]
            return y0, state
        q, k, v, lr, mom, keep, win_gate = rest  # type: ignore[assignment]
        T = q.shape[1]
    st = state or omega_initial_state(arch, B, momentum=True, muon=muon)
    if st.memory.momentum is None or (st.direction is None) != (muon == "token"):
        want = "the momentum" + (" and the Muon direction" if muon == "chunk" else " and no direction")
        raise ValueError(f"{name}: with muon={muon!r} the state must carry {want}")
    L, P = chunk_size, window - 1
    kx, vx = (torch.cat([w.float(), x.float()], 1) for w, x in ((st.window_k, k), (st.window_v, v)))
    with torch.autocast(q.device.type, enabled=False):
        _, _, index = chunk_layout([T], L, q.device)

        def gate(x: Tensor | None, log: bool) -> Tensor:  # [B, T, H] -> [B, H, NC, L]
            x = torch.ones_like(lr) if x is None else x
            return _tile_gate(x.transpose(1, 2), index, log)

        # the window's band (at window 1 the one gate scales each token's gradient)
        band = tile_band(win_gate, index, P, window, q.float())
        gates = (gate(lr, False), gate(keep, True), gate(mom, True), gate(None, False), band)
        memory = st.memory.weights + st.memory.momentum + (st.direction or ())
        ws = [x.expand(B, *x.shape[-3:]) if x.dim() == 3 else x for x in memory]
        options = dict(
            memory=_net_spec(arch), chunk_size=L, window=window, ln_weight=getattr(arch, "norm_weight", None),
            ln_bias=getattr(arch, "norm_bias", None), ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients),
            dot_precision=dot_precision,
        )  # fmt: skip
        direction = None
        if muon == "chunk":
            y, W, S, direction, anchor = muon_memory_chunked(
                q, kx, vx, *muon_coefficients(*gates), *ws, checkpoint_every=checkpoint_every, **options
            )
        else:
            y, W, S, anchor = token_muon_memory_chunked(
                q, kx, vx, *token_muon_coefficients(*gates), *ws, checkpoint_every=checkpoint_every, **options
            )
    offset = T % chunk_size
    mem = MemoryState(W, S, anchor if offset else None, offset)
    rows = kx.shape[1]
    tail_k, tail_v = (x[:, max(0, rows - P) :] for x in (kx, vx))
    y = y if y0 is None else torch.cat([y0, y], 1)
    return y, OmegaState(mem, tail_k, tail_v, direction)
