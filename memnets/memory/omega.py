"""The Omega rule (sliding-window inner loss) with optional Muon momentum: the recurrence of OmegaNet
and Atlas (ATLAS arXiv 2505.23735 §3.2–3.3, §5, App. D.3–D.4).

Per token t and head (neutral names; ATLAS letters beside them)::

    u_t = Σ_{j=0..c−1} win_gate[t, j] · ∇_W ℓ(M(k_{t−j}; W_{t'}), v_{t−j})    Omega inner gradient, Eq. 9
    (c = ``window``; win_gate = γ_{t−j}^{(t)}; tokens before the sequence start are absent)

    rule without Muon (OmegaNet Eq. 10 / App. D.3 Eq. 56, Titans-style momentum optional):
        S_t = mom_t S_{t−1} − lr_t u_t,   W_t = keep_t W_{t−1} + S_t      (no mom: W_t = keep_t W_{t−1} − lr_t u_t)
    rule with Muon (Atlas Eq. 32–33; mom = θ_t, lr = η_t, keep = α_t):
        S_t = mom_t S_{t−1} − u_t,        W_t = keep_t W_{t−1} + lr_t · O_t
        muon="token": O_t = NS(S_t)                                          (Eq. 40, exact)
        muon="chunk": O_t = NS(S_t) at the last token of each chunk, else O_{t−1}   (cheap, see below)

    y_t = M(q_t; W_t)                                                       read after the write

W_{t'} is the memory at the start of t's chunk (chunks of ``chunk_size`` tokens counted from the
sequence start), as in the engine (:mod:`memnets.memory.engine`); ``chunk_size = 1`` is exact online
descent. With ``window = 1``, no win_gate and no Muon this is exactly the engine's Titans memory.

Choices where the paper is silent (the γ parameterisation, windows that cross a chunk boundary), decided
here:

* ``win_gate [B, T, H, window]``: token t owns c gates, one per window offset j (γ_{t−j}^{(t)}; "for
  each token we need a constant number of gates"). ``None`` = all ones.
* Windows that reach into earlier chunks (§3.3 does not say): the earlier tokens' gradients are
  recomputed at the current chunk-start weights, so every token's update is a gradient at one point.
  The last c − 1 keys and values travel in the state (:class:`OmegaState`), so sequences fed in
  pieces or token by token equal one call. Chunked form: the key path runs over the chunk plus that
  prefix and the engine's coefficient matrix G becomes G·Γ with the band matrix
  Γ[n, e] = win_gate[n, n − e] for 0 ≤ n − e < c (:func:`window_band`, Eq. 16's mask M_s with
  gates): cost linear in T, nothing per-token materialised.
* Muon: the step size lr sits outside Newton–Schulz (Eq. 32; a scale inside NS would be normalised
  away) and NS is odd, so the sign convention S = mom·S − u, W += lr·NS(S) equals Eq. 32's. NS is
  applied to each weight matrix of the memory separately.
* ``muon="token"`` orthogonalises every token's momentum inside a chunk (NS is non-linear, so the dual
  form does not apply; the paper's parallel form, §5.1 Eq. 39-41, computes all S_t of a chunk, then
  NS(S_t) for each). A token's momentum S_t = m_t S_0 − Σ_j Q[t, j] x_jᵀ δ_j lies in the span of the
  momentum at the chunk start and the chunk's gradient rows, so where a weight matrix's input is wider
  than that span (Atlas's polynomial features: 2,144 inputs against 64 + 23 columns at 760M) NS runs on
  each token's coordinates in it, an exact rewriting with C·(d_out + rows)·d_out numbers per chunk
  instead of C·|W| (:func:`_token_layer`); otherwise every S_t is materialised. Either way it is
  several times the rest of the update (benchmarks/RESULTS.md §49).
* ``muon="chunk"`` refreshes the orthogonalised direction once per chunk, from the momentum at the
  chunk's last token; the other tokens keep stepping along the previous direction (zero before the
  first refresh). It is causal, decodes exactly, costs one NS per chunk and matrix (C× fewer than
  "token"; reads are the cheap dual form against three matrices) and equals "token" when
  ``chunk_size = 1``. The price: a chunk's gradients steer the memory only from its last token on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from ..compiled import chunk_step
from .architecture import MemoryMLP
from .bias import AttentionalBias, L2Bias
from .engine import (
    KeyPath,
    MemoryState,
    Weights,
    _bhl,
    channel_units,
    check_gates,
    dual_layer,
    gate_units,
    initial_state,
    key_path,
    segment_end_state,
    token_gates,
)
from .gated import GatedMemoryMLP, Linear, gated_key_path
from .muon import MUON_COEFFICIENTS, newton_schulz, newton_schulz_in_basis
from .rule import (
    ChunkCoefficients,
    as_columns,
    as_rows,
    chunk_coefficients,
    segsum,
    token_sums,
    unit_major,
    unit_slice,
)
from .segments import segment_reads, segments

Muon = Literal["token", "chunk"]
MUON_MODES: tuple[str, ...] = ("token", "chunk")


@dataclass
class OmegaState:
    """Recurrent state of the Omega rule.

    ``memory``: the engine's :class:`MemoryState` (weights, momentum S, chunk-start anchor, offset).
    ``window_k [B, n, H, Dk]``, ``window_v [B, n, H, Dv]``: the last n ≤ window − 1 keys and values
    (their gradients re-enter the next tokens' windows). ``direction``: the orthogonalised momentum
    in use (``muon="chunk"`` only, else ``None``).
    """

    memory: MemoryState
    window_k: Tensor
    window_v: Tensor
    direction: Weights | None = None

    def detach(self) -> OmegaState:
        d = None if self.direction is None else tuple(w.detach() for w in self.direction)
        return OmegaState(self.memory.detach(), self.window_k.detach(), self.window_v.detach(), d)


def omega_initial_state(
    arch: MemoryMLP, batch: int, *, momentum: bool, muon: Muon | None, dtype: torch.dtype | None = None
) -> OmegaState:
    mem = initial_state(arch, batch, momentum, dtype)
    w = mem.weights[0]
    H = arch.num_heads
    empty_k = w.new_zeros(batch, 0, H, arch.shapes[0][0])
    empty_v = w.new_zeros(batch, 0, H, arch.dim)
    direction = tuple(torch.zeros_like(x) for x in mem.weights) if muon == "chunk" else None
    return OmegaState(mem, empty_k, empty_v, direction)


def window_band(win_gate: Tensor | None, prefix: int, length: int, window: int, like: Tensor) -> Tensor:
    """Γ ``[B, H, L, prefix + L]`` (or ``[L, prefix + L]`` without gates): Γ[n, e] is the weight of
    the gradient of extended token e (the ``prefix`` carried tokens, then the segment) in token n's
    Omega sum, ``win_gate[n, prefix + n − e]`` when that offset lies in [0, window)."""
    n = torch.arange(length, device=like.device)[:, None]
    e = torch.arange(prefix + length, device=like.device)[None, :]
    j = prefix + n - e
    valid = (j >= 0) & (j < window)
    if win_gate is None:
        return valid.to(like.dtype)
    idx = j.clamp(0, window - 1).expand(*win_gate.shape[:2], length, prefix + length)
    return torch.gather(win_gate, -1, idx) * valid.to(win_gate.dtype)


def _check(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
    win_gate: Tensor | None,
    state: OmegaState | None,
    window: int,
    chunk_size: int,
    muon: str | None,
) -> None:
    if chunk_size < 1:
        raise ValueError(f"omega: chunk_size must be >= 1, got {chunk_size}")
    if window < 1:
        raise ValueError(f"omega: window must be >= 1, got {window}")
    if muon is not None and muon not in MUON_MODES:
        raise ValueError(f"omega: muon={muon!r} is not one of {[None, *MUON_MODES]}")
    if muon is not None and mom is None:
        raise ValueError(
            "omega: muon needs the momentum gate mom (pass zeros to orthogonalise raw gradients)"
        )
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3] or v.dim() != 4:
        raise ValueError(
            "omega: q, k must be [B, T, H, Dk] and v [B, T, H, Dv]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, T, H, Dk = q.shape
    if arch.num_heads != H or arch.shapes[0][0] != Dk or arch.dim != v.shape[-1]:
        raise ValueError(
            f"omega: got H={H}, Dk={Dk}, Dv={v.shape[-1]} but the memory has H={arch.num_heads}, "
            f"input width {arch.shapes[0][0]}, output width {arch.dim}"
        )
    check_gates("omega", arch, B, T, H, lr=lr, mom=mom, keep=keep)
    if win_gate is not None and tuple(win_gate.shape) != (B, T, H, window):
        raise ValueError(
            f"omega: win_gate must have shape [B, T, H, window] = {[B, T, H, window]}, got {tuple(win_gate.shape)}"
        )
    if state is not None:
        mem = state.memory
        if (mem.momentum is None) != (mom is None):
            raise ValueError(
                f"omega: the state has momentum: {mem.momentum is not None}, but mom given: {mom is not None}"
            )
        if (state.direction is None) != (muon != "chunk"):
            raise ValueError("omega: state.direction must be given exactly when muon='chunk'")
        if not 0 <= mem.offset < chunk_size:
            raise ValueError(f"omega: state offset={mem.offset} must lie in [0, chunk_size={chunk_size})")
        if mem.offset > 0 and mem.anchor is None:
            raise ValueError(f"omega: state offset={mem.offset} > 0 needs an anchor")
        if state.window_k.shape[1] > window - 1:
            raise ValueError(
                f"omega: the state carries {state.window_k.shape[1]} window tokens, more than window - 1 = {window - 1}"
            )


def _tail(x: Tensor, n: int) -> Tensor:
    """The last ``n`` entries along dim 2 (n may be 0)."""
    return x[:, :, max(0, x.shape[2] - n) :] if n > 0 else x[:, :, :0]


# -------------------------------------------------------------------------------------------------
# token-by-token reference


def omega_reference(
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
    muon: Muon | None = None,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    bias: AttentionalBias | None = None,
) -> tuple[Tensor, OmegaState]:
    """Token-by-token loop; each token's windowed inner loss is differentiated with autograd. Slow,
    readable, exact: the ground truth for :func:`omega_chunked` (same arguments and results)."""
    _check(arch, q, k, v, lr, mom, keep, win_gate, state, window, chunk_size, muon)
    bias = bias or L2Bias()
    B, T, H, _ = q.shape
    dtype = arch.init_weights[0].dtype
    qh, kh, vh = (_bhl(t, dtype) for t in (q, k, v))
    lr_, mom_, keep_, gam = (_bhl(g, dtype) for g in (lr, mom, keep, win_gate))
    st = state or omega_initial_state(arch, B, momentum=mom is not None, muon=muon, dtype=dtype)
    W, S, anchor, offset = st.memory.weights, st.memory.momentum, st.memory.anchor, st.memory.offset
    direc = st.direction
    buf_k, buf_v = _bhl(st.window_k, dtype), _bhl(st.window_v, dtype)
    units = gate_units(arch)
    create_graph = torch.is_grad_enabled()
    ys = []
    with torch.enable_grad():
        for seg in segments(T, chunk_size, offset, most=1):
            if seg.offset == 0:
                anchor = W
            t = seg.span.start
            buf_k, buf_v = (torch.cat([buf, x[:, :, seg.span]], 2) for buf, x in ((buf_k, kh), (buf_v, vh)))
            n = buf_k.shape[2]  # tokens t − n + 1 .. t, oldest first
            weight = buf_k.new_ones(B, H, n) if gam is None else gam[:, :, t, :n].flip(-1)
            point = tuple(w.view_as(w) if w.requires_grad else w.detach().requires_grad_() for w in anchor)
            loss = (weight * bias.loss(arch.read(point, buf_k), buf_v, None)).sum()
            u = torch.autograd.grad(loss, point, create_graph=create_graph)
            a, m = token_gates(lr_, t, units), token_gates(mom_, t, units)
            if muon is None:
                if mom_ is not None:
                    S = tuple(mi * s - ai * g for mi, ai, s, g in zip(m, a, S, u))
                    step = S
                else:
                    step = tuple(-ai * g for ai, g in zip(a, u))
            else:
                S = tuple(mi * s - g for mi, s, g in zip(m, S, u))  # type: ignore[arg-type]
                if muon == "token" or seg.ends_chunk:
                    direc = tuple(newton_schulz(s, ns_steps, ns_coefficients) for s in S)
                step = tuple(ai * o for ai, o in zip(a, direc))  # type: ignore[arg-type]
            W = tuple(kp * w + s for kp, w, s in zip(token_gates(keep_, t, units), W, step))
            ys.append(arch.read(W, qh[:, :, seg.span]))
            buf_k, buf_v = _tail(buf_k, window - 1), _tail(buf_v, window - 1)
    offset = (offset + T) % chunk_size
    mem = MemoryState(W, S, anchor if offset else None, offset)
    out = OmegaState(mem, buf_k.transpose(1, 2), buf_v.transpose(1, 2), direc if muon == "chunk" else None)
    y = segment_reads(ys, vh, q.dtype)
    return (y, out) if create_graph else (y.detach(), out.detach())


# -------------------------------------------------------------------------------------------------
# chunked (parallel inside a chunk, sequential across chunks)


def _layers(arch: MemoryMLP, x: Tensor, linear: Linear) -> Tensor:
    """M(x) with ``linear(i, h)`` standing for ``h @ W^i`` (chain MLP or the gated memory)."""
    if isinstance(arch, GatedMemoryMLP):
        return arch.forward_layers(x, linear)
    h = x
    for i in range(arch.depth):
        z = linear(i, h)
        h = arch.act(z) if i < arch.depth - 1 else z
    return arch.output(h, x)


def _key_path(arch: MemoryMLP, weights: Weights, k: Tensor, v: Tensor, bias: AttentionalBias) -> KeyPath:
    if isinstance(arch, GatedMemoryMLP):
        return gated_key_path(arch, weights, k, v, bias)
    return key_path(arch, weights, k, v, bias, None)


def _dual_read(
    arch: MemoryMLP, q: Tensor, W0: Weights, S0: Weights | None, kp: KeyPath, c: ChunkCoefficients
) -> Tensor:
    """The engine's dual form (:func:`~memnets.memory.engine.dual_layer`) per weight matrix, through
    the chain MLP or the gated memory."""
    return _layers(arch, q, lambda i, h: dual_layer(h, i, W0, S0, kp, c))


def _read_combination(
    arch: MemoryMLP, x: Tensor, terms: list[tuple[Tensor, Weights]], units: tuple[int, ...] | None
) -> Tensor:
    """M(x_t; W_t) for W_t = Σ_terms coef[t] · W^term (coef ``[B, H, L]``, or per channel
    ``[B, H, N, L]`` scaling each matrix's columns), without forming W_t."""
    ch = units is not None

    def linear(i: int, h: Tensor) -> Tensor:
        return sum(as_rows(unit_slice(c, units, i), ch) * (h @ ws[i]) for c, ws in terms)  # type: ignore[return-value]

    return _layers(arch, x, linear)


def _segment_plain(
    arch: MemoryMLP,
    q: Tensor,
    W: Weights,
    S: Weights | None,
    kp: KeyPath,
    band: Tensor,
    lr: Tensor,
    log_keep: Tensor | None,
    log_mom: Tensor | None,
    units: tuple[int, ...] | None,
) -> tuple[Tensor, Weights, Weights | None]:
    """Omega rule without Muon: the engine's coefficients with G → G·Γ (and the momentum's s_coef)."""
    c = chunk_coefficients(lr, log_keep, log_mom, units)
    s_coef = None if c.s_coef is None else (c.s_coef[..., None, :] @ band)[..., 0, :]
    c = replace(c, G=c.G @ band, s_coef=s_coef)
    y = _dual_read(arch, q, W, S, kp, c)
    W, S = segment_end_state(W, S, kp, c)
    return y, W, S


def _decays(lr: Tensor, log_keep: Tensor | None, log_mom: Tensor, band: Tensor):
    """P[t, i] = β_t/β_i, β_t, and Q[t, e]: the coefficient of u_e in m_t S_0 − S_t (momentum without
    step size, window applied), m_t; gates given unit-major (:func:`~memnets.memory.rule.unit_major`)."""
    log_keep = torch.zeros_like(lr) if log_keep is None else log_keep
    return (
        segsum(log_keep).exp(),
        log_keep.cumsum(-1).exp(),
        segsum(log_mom).exp() @ band,
        log_mom.cumsum(-1).exp(),
    )


def _segment_muon_token(
    arch: MemoryMLP,
    q: Tensor,
    W: Weights,
    S: Weights,
    kp: KeyPath,
    band: Tensor,
    lr: Tensor,
    log_keep: Tensor | None,
    log_mom: Tensor,
    ns_steps: int,
    ns_coefficients: tuple[float, float, float],
    units: tuple[int, ...] | None,
) -> tuple[Tensor, Weights, Weights]:
    """Every token's momentum S_t = m_t S_0 − Σ_j Q[t, j] x_jᵀ δ_j, orthogonalised, and summed with decay
    into per-token weights W_t = β_t W_0 + Σ_{i≤t} (β_t/β_i) lr_i NS(S_i) (:func:`_token_layer`, one per
    weight matrix). Per-channel gates scale columns: of S before NS (mom), of NS(S) after it (lr) and of
    W (keep)."""
    lr, log_keep, log_mom = (unit_major(g, units) for g in (lr, log_keep, log_mom))  # type: ignore[assignment]
    P, beta, Q, m = _decays(lr, log_keep, log_mom, band)
    PL = P * lr[..., None, :]
    layers = []
    for i, (w, s, x, d) in enumerate(zip(W, S, kp.xs, kp.deltas)):
        gates = (unit_slice(m, units, i), unit_slice(beta, units, i))
        gates += (unit_slice(Q, units, i, 2), unit_slice(PL, units, i, 2))
        layers.append(_token_layer(w, s, x, d, *gates, units is not None, ns_steps, ns_coefficients))
    y = _layers(arch, q, lambda i, h: layers[i][0](h))
    return y, tuple(t[1] for t in layers), tuple(t[2] for t in layers)


def in_basis(d_in: int, rank: int) -> bool:
    """Whether per-token Muon runs on coordinates (:func:`_token_layer`): where the weight matrix's
    input width exceeds the rank of its momenta's basis."""
    return d_in > rank


def _token_layer(
    w: Tensor,
    s: Tensor,
    x: Tensor,
    d: Tensor,
    m: Tensor,
    beta: Tensor,
    Q: Tensor,
    PL: Tensor,
    ch: bool,
    ns_steps: int,
    ns_coefficients: tuple[float, float, float],
) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor]:
    """One weight matrix ``w [B, H, d_in, d_out]`` under per-token Muon (momentum ``s``, the gradient rows'
    inputs ``x [B, H, L_j, d_in]`` and output cotangents ``d [B, H, L_j, d_out]``; coefficients as
    :func:`_segment_muon_token`'s, this matrix's columns only): its per-token read h_t ↦ h_t W_t and the
    segment's last W_t and S_t.

    Each S_t = U C_t lies in the column space of U = [S_0 | xᵀ] (``[d_in, r]``, r = d_out + L_j), with
    C_t = [diag(m_t); −(Q[t, j] d_j)_j]. When d_in > r (a wide key path, such as Atlas's polynomial
    features) Newton–Schulz runs on the r × d_out coordinates C_t through Uᵀ U
    (:func:`~memnets.memory.muon.newton_schulz_in_basis`) and the reads take h_t U, so nothing of size
    L · d_in · d_out is formed; otherwise every S_t is materialised and orthogonalised as it is."""
    d_in, d_out = s.shape[-2:]
    rows = Q.shape[-1]
    cols = as_rows(m, ch)
    cols = cols.expand(*cols.shape[:-1], d_out)  # m_t per column
    # Σ_i PL[t, i] O_i, per column c when the coefficients are per channel
    sums = "bhcti,bhirc->bhtrc" if ch else "bhti,bhiry->bhtry"
    if not in_basis(d_in, d_out + rows):
        S_all = cols[..., None, :] * s[:, :, None] - token_sums(Q, x, d, ch)
        W_all = as_rows(beta, ch)[..., None, :] * w[:, :, None] + torch.einsum(
            sums, PL, newton_schulz(S_all, ns_steps, ns_coefficients)
        )
        return lambda h: torch.einsum("bhlx,bhlxy->bhly", h, W_all), W_all[:, :, -1], S_all[:, :, -1]
    # E[t, j] = Q[t, j] d_j (per channel E[t, j, c] = Q[c, t, j] d_j[c]): S_t = cols_t ⊙ S_0 − xᵀ E[t]
    E = (Q * d.transpose(-1, -2)[..., None, :]).permute(0, 1, 3, 4, 2) if ch else Q[..., None] * d[:, :, None]
    U = torch.cat([s, x.transpose(-1, -2)], -1)
    C = torch.cat([torch.diag_embed(cols), -E], -2)  # [B, H, L, r, d_out]
    N = newton_schulz_in_basis((U.transpose(-1, -2) @ U)[:, :, None], C, ns_steps, ns_coefficients)
    Z = torch.einsum(sums, PL, N)  # W_t = β_t W_0 + U Z_t

    def read(h: Tensor) -> Tensor:
        return as_rows(beta, ch) * (h @ w) + ((h @ U)[..., None, :] @ Z)[..., 0, :]

    end = as_columns(beta[..., -1], ch) * w + U @ Z[:, :, -1]
    return read, end, U @ C[:, :, -1]


def _segment_muon_chunk(
    arch: MemoryMLP,
    q: Tensor,
    W: Weights,
    S: Weights,
    direc: Weights,
    kp: KeyPath,
    band: Tensor,
    lr: Tensor,
    log_keep: Tensor | None,
    log_mom: Tensor,
    refresh: bool,
    ns_steps: int,
    ns_coefficients: tuple[float, float, float],
    units: tuple[int, ...] | None,
) -> tuple[Tensor, Weights, Weights, Weights]:
    """Tokens step along the current direction, W_t = β_t W_0 + (Σ_{i≤t} (β_t/β_i) lr_i) O; if the
    segment ends its chunk, the last token steps along O_new = NS(S_end) instead (per-channel gates:
    every coefficient per column)."""
    lr, log_keep, log_mom = (unit_major(g, units) for g in (lr, log_keep, log_mom))  # type: ignore[assignment]
    P, beta, Q, m = _decays(lr, log_keep, log_mom, band)
    ch = units is not None
    S = tuple(
        as_columns(unit_slice(m, units, i)[..., -1], ch) * s
        - x.transpose(-1, -2) @ (as_rows(unit_slice(Q, units, i, 2)[..., -1, :], ch) * d)
        for i, (s, x, d) in enumerate(zip(S, kp.xs, kp.deltas))
    )
    D = (P @ lr[..., None])[..., 0]
    terms = [(beta, W), (D, direc)]
    if refresh:
        O_new = tuple(newton_schulz(s, ns_steps, ns_coefficients) for s in S)
        last = torch.zeros_like(D)
        last[..., -1] = lr[..., -1]
        terms = [(beta, W), (D - last, direc), (last, O_new)]
    y = _read_combination(arch, q, terms, units)
    W = tuple(
        sum(as_columns(unit_slice(c, units, i)[..., -1], ch) * ws[i] for c, ws in terms)  # type: ignore[misc]
        for i in range(len(W))
    )
    return y, W, S, terms[-1][1]


@chunk_step
def omega_step(
    arch: MemoryMLP,
    bias: AttentionalBias,
    anchor: Weights,
    W: Weights,
    S: Weights | None,
    direc: Weights | None,
    q: Tensor,
    kx: Tensor,
    vx: Tensor,
    gam: Tensor | None,
    lr: Tensor,
    lk: Tensor | None,
    lm: Tensor | None,
    *,
    window: int,
    muon: Muon | None,
    refresh: bool,
    ns_steps: int,
    ns_coefficients: tuple[float, float, float],
    units: tuple[int, ...] | None = None,
) -> tuple[Tensor, Weights, Weights | None, Weights | None]:
    """One segment of :func:`omega_chunked` (``[B, H, L, ...]`` slices; ``kx``/``vx`` with the previous
    ``window − 1`` key/value rows in front): its reads and the state (W, S, Muon direction) after it,
    gradients taken at ``anchor``; ``units``: per-channel gates."""
    kp = _key_path(arch, anchor, kx, vx, bias)
    band = window_band(gam, kx.shape[2] - q.shape[2], q.shape[2], window, kx)
    if units is not None and band.dim() == 4:  # per-channel coefficients share Γ across their unit axis
        band = band[:, :, None]
    if muon is None:
        return (*_segment_plain(arch, q, W, S, kp, band, lr, lk, lm, units), direc)
    if muon == "token":
        return (
            *_segment_muon_token(arch, q, W, S, kp, band, lr, lk, lm, ns_steps, ns_coefficients, units),
            direc,
        )
    return _segment_muon_chunk(
        arch,
        q,
        W,
        S,
        direc,
        kp,
        band,
        lr,
        lk,
        lm,
        refresh,
        ns_steps,
        ns_coefficients,  # type: ignore[arg-type]
        units,
    )


def omega_chunked(
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
    muon: Muon | None = None,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
    bias: AttentionalBias | None = None,
) -> tuple[Tensor, OmegaState]:
    """Run the Omega rule over a sequence chunk by chunk.

    Args:
        arch: the memory (:class:`MemoryMLP`, :class:`~memnets.memory.features.FeatureMemoryMLP`
            when keys and queries are feature maps wider than the values, or the Atlas++ gated
            memory :class:`~memnets.memory.gated.GatedMemoryMLP`).
        q, k: ``[B, T, H, Dk]`` queries and keys (already through the feature map, if any).
        v: ``[B, T, H, Dv]`` values.
        lr, mom, keep: ``[B, T, H]`` gates (module docstring; ``mom``/``keep`` ``None`` = absent / 1),
            or all per channel ``[B, T, H, N]`` (one entry per output unit of each weight matrix,
            :func:`~memnets.memory.engine.gate_units`; with ``muon``, mom scales the momentum's
            columns before Newton–Schulz and lr the orthogonalised step's after it).
        win_gate: ``[B, T, H, window]``, ``win_gate[t, j]`` weighs token t − j in token t's loss.
        state: :class:`OmegaState` to continue from; ``None`` = the learnable initial weights.
        window: c, tokens in each inner loss (1 = online rule).
        chunk_size: tokens per chunk (gradients at the chunk-start weights).
        muon: ``None``, ``"token"`` or ``"chunk"`` (module docstring); ``ns_steps`` and
            ``ns_coefficients`` configure Newton–Schulz.
        bias: attentional bias (default ‖M(k) − v‖²).

    Returns ``y [B, T, H, Dv]`` in ``q``'s dtype and the state after the last token. Computes in the
    dtype of ``arch``'s parameters with autocast off.
    """
    _check(arch, q, k, v, lr, mom, keep, win_gate, state, window, chunk_size, muon)
    bias = bias or L2Bias()
    B, T = q.shape[:2]
    dtype = arch.init_weights[0].dtype
    with torch.autocast(q.device.type, enabled=False):
        qh, kh, vh = (_bhl(t, dtype) for t in (q, k, v))
        lr_, gam = _bhl(lr, dtype), _bhl(win_gate, dtype)
        log_mom, log_keep = (_bhl(g, dtype, log=True) for g in (mom, keep))
        st = state or omega_initial_state(arch, B, momentum=mom is not None, muon=muon, dtype=dtype)
        W, S, anchor, offset = st.memory.weights, st.memory.momentum, st.memory.anchor, st.memory.offset
        direc = st.direction
        buf_k, buf_v = _bhl(st.window_k, dtype), _bhl(st.window_v, dtype)
        units = channel_units(arch, lr)
        ys = []
        for seg in segments(T, chunk_size, offset):
            if seg.offset == 0:
                anchor = W
            kx, vx = (torch.cat([buf, x[:, :, seg.span]], 2) for buf, x in ((buf_k, kh), (buf_v, vh)))
            y_s, W, S, direc = omega_step(
                arch,
                bias,
                anchor,
                W,
                S,
                direc,
                qh[:, :, seg.span],
                kx,
                vx,
                *seg.take(gam, lr_, log_keep, log_mom),
                window=window,
                muon=muon,
                refresh=seg.ends_chunk,  # Muon per chunk: its last token refreshes
                ns_steps=ns_steps,
                ns_coefficients=ns_coefficients,
                units=units,
            )
            ys.append(y_s)
            buf_k, buf_v = _tail(kx, window - 1), _tail(vx, window - 1)
        y = segment_reads(ys, vh, q.dtype)
    offset = (offset + T) % chunk_size
    mem = MemoryState(W, S, anchor if offset else None, offset)
    out = OmegaState(mem, buf_k.transpose(1, 2), buf_v.transpose(1, 2), direc if muon == "chunk" else None)
    return y, out
