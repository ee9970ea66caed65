"""Miras pieces for the shared memory engine: attentional biases and retention maps (Miras §5.1-5.3,
arXiv 2504.13173).

**Attentional biases** (the :class:`~memnets.memory.AttentionalBias` interface; ``r = M(k) − v``). As
:class:`~memnets.memory.L2Bias` they carry no ½ (the factor is absorbed by the learned step size), so
each reduces to ``L2Bias`` in its quadratic limit:

* :class:`LpBias` — ‖r‖_p^p (Miras Eq. 10, Moneta). |x|^p is smoothed as (x² + ε)^{p/2} (Remark 5
  smooths |x| ≈ √(x² + ε)); its derivative p·x·(x² + ε)^{p/2−1} is p·Sign(x)|x|^{p−1} away from 0
  (Eq. 11/25) and is a true gradient, so the autograd reference and the hand-written chunked path
  agree. p = 2 is exactly ``L2Bias`` for any ε.
* :class:`HuberBias` — Yaad (Eq. 16/26), two forms: ``"norm"``: the switch compares the scalar
  ‖r‖₂ with a per-token, per-head δ_t: quadratic branch ‖r‖², otherwise 2δ_t·ℓ1 with the smooth
  Sign(x) ≈ tanh(s·x) of Remark 5 (loss 2δ_t Σ log cosh(s r)/s); ``"coord"``: coordinate-wise Huber
  of Eq. 13-14 with a channel-wise δ_t ∈ R^d (exact sign: the linear branch never meets 0). Both are
  2·H_δ, continuous in the coord form; δ → ∞ gives ``L2Bias`` exactly.
* :class:`KLBias` — KL(softmax(v) ‖ softmax(M(k))), the softmax/KL form (gradient
  softmax(M(k)) − softmax(v)).

**Retention maps** (the retention gate beyond the scalar ``keep``): every Miras model here keeps an
accumulator ``A`` that the engine's linear rule updates, A_t = keep_t A_{t−1} − lr_t ∇ℓ(W_ref), and
reads and differentiates the weights W = φ(A) (the FTRL / mirror-descent view, Miras §3 Prop. 3.2);
with momentum (``mom``) the step goes through S_t = mom_t S_{t−1} − lr_t ∇ℓ(W_ref) first and
A_t = keep_t A_{t−1} + S_t (the engine's rule, :mod:`~memnets.memory.rule`):

* ``None`` — φ = identity: plain L2 retention / weight decay (Yaad, Eq. 26; Titans' forget gate).
* :class:`LqNormalize` — Moneta (Eq. 24), W = s(A)·A with one scalar per weight matrix and head
  (entrywise ℓ_q): ``"paper"`` s = ‖A‖_q^{−(q−2)}, Eq. 24 taken literally; ``"unit"`` s = ‖A‖_q^{−1},
  the projection onto the unit L_q sphere (the "ball" of Miras §3's memory-architecture choice). The
  literal map is (3 − q)-homogeneous: for q = 4, ‖W‖₄ = 1/‖A‖₄, so a growing accumulator *shrinks*
  the weights and retention (keep < 1) *inflates* them; the unit map is scale-free. q = 2 is the
  identity for ``"paper"``. (The p-norm mirror map Sign(A)|A|^{q−1}/‖A‖_q^{q−2} of Miras' Variant 4
  was tried and dropped: cubing entries of size ~d^{-1/2} makes the pre-LayerNorm output tiny, and
  the LayerNorm backward then gives inner gradients that blew the weights up to ~10⁴ within 5 tokens.)
  Being scalar maps, both read through the engine's dual form with per-token scales; only the norms
  ‖A_t‖_q need each token's accumulator.
* :class:`SimplexSoftmax` — Memora (Eq. 21/27): W = c·Softmax(A) with ``A`` the logits. Eq. 27,
  W_t = Softmax(keep_t log W_{t−1} − lr_t ∇ℓ(W_{t−1})), is exactly linear in the logits, because
  log Softmax(A) = A − logsumexp(A) and the softmax ignores the per-slice constant keep·logsumexp:
  A_t = keep_t A_{t−1} − lr_t ∇ℓ(W_{t−1}). The simplex is per output unit: in the paper's column form
  M(k) = W k every row of W (one output's weights over the inputs) is on the c-scaled simplex; in our
  row form ``out = in @ W`` that is softmax over the input axis (dim −2). Every layer is constrained.

**Chunked semantics** (:func:`miras_chunked`; :func:`miras_reference` is the token loop): as in the
engine, tokens take their inner gradient at the weights of their chunk start, W_ref = φ(A_{t'}), and
token t reads y_t = M(q_t; φ(A_t)) after its own write, so ``chunk_size = 1`` is the exact online rule
and the gradient point is the only approximation. The paper applies Moneta's normalisation "at the end
of each chunk" only and reads inside a chunk from un-normalised values; we keep reads exact instead
(one rule, exact decoding at any chunk size) at the cost of materialising each token's weights inside
a chunk for Memora (O(C·|W|) per chunk, recomputed in the backward; identity retention keeps the
engine's dual form and materialises nothing, L_q normalisation materialises only for the norms).
:class:`ChunkEnd` gives the paper's form instead (normalise the state at chunk ends only, reads inside
a chunk from the linear accumulation), where the chunk size is part of the model. ``lag=True`` is
Memora's lag token (§5.3 Eq. 30-32): the first token of every chunk is an exact single-token step from
W_{t'}, and the rest of the chunk takes its gradients at the weights after it (one sequential
single-token step per chunk).
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..compiled import chunk_step
from .architecture import MemoryMLP
from .bias import AttentionalBias, L2Bias
from .engine import (
    MemoryState,
    _bhl,
    _inner_grad,
    channel_units,
    check_inputs,
    dual_read,
    gate_units,
    initial_state,
    key_path,
    segment_end_state,
    token_update,
)
from .rule import ChunkCoefficients, chunk_coefficients
from .segments import segment_reads, segments

Weights = tuple[Tensor, ...]

# -------------------------------------------------------------------------------------------------
# attentional biases


class LpBias:
    """ℓ_p attentional bias Σ_j |r_j|^p, smoothed as (r_j² + ε)^{p/2} (see the module docstring)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        if p < 1:
            raise ValueError(f"LpBias: p must be >= 1, got {p}")
        if eps <= 0:
            raise ValueError(f"LpBias: eps must be > 0, got {eps}")
        self.p, self.eps = p, eps

    def loss(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        return ((pred - target).pow(2) + self.eps).pow(self.p / 2).sum(-1)

    def grad(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        r = pred - target
        return self.p * r * (r.pow(2) + self.eps).pow(self.p / 2 - 1)

    def __repr__(self) -> str:
        return f"LpBias(p={self.p}, eps={self.eps})"


def _log_cosh(x: Tensor) -> Tensor:
    """log cosh(x) without overflow: |x| + log(1 + e^{−2|x|}) − log 2."""
    a = x.abs()
    return a + F.softplus(-2.0 * a) - 0.6931471805599453


class HuberBias:
    """Huber attentional bias of Yaad with a per-token threshold passed as ``params``:
    ``[B, H, L]`` (``mode="norm"``) or ``[B, H, L, d]`` (``mode="coord"``). See the module docstring."""

    def __init__(self, mode: Literal["norm", "coord"] = "norm", sharpness: float = 10.0) -> None:
        if mode not in ("norm", "coord"):
            raise ValueError(f"HuberBias: mode={mode!r} is not one of ['norm', 'coord']")
        if sharpness <= 0:
            raise ValueError(f"HuberBias: sharpness must be > 0, got {sharpness}")
        self.mode, self.sharpness = mode, sharpness

    def _delta(self, params: Tensor | None, r: Tensor) -> Tensor:
        if params is None:
            raise ValueError("HuberBias needs the threshold delta as bias_params")
        return params if self.mode == "coord" else params[..., None]

    def loss(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        r = pred - target
        delta = self._delta(params, r)
        if self.mode == "coord":
            small = r.abs() <= delta
            return torch.where(small, r.pow(2), 2 * delta * r.abs() - delta.pow(2)).sum(-1)
        small = r.pow(2).sum(-1) <= delta[..., 0].pow(2)
        lin = (2 * delta * _log_cosh(self.sharpness * r) / self.sharpness).sum(-1)
        return torch.where(small, r.pow(2).sum(-1), lin)

    def grad(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        r = pred - target
        delta = self._delta(params, r)
        if self.mode == "coord":
            return torch.where(r.abs() <= delta, 2 * r, 2 * delta * torch.sign(r))
        small = r.pow(2).sum(-1, keepdim=True) <= delta.pow(2)
        return torch.where(small, 2 * r, 2 * delta * torch.tanh(self.sharpness * r))

    def __repr__(self) -> str:
        return f"HuberBias(mode={self.mode!r}, sharpness={self.sharpness})"


class KLBias:
    """KL(softmax(v) ‖ softmax(M(k))) over the feature axis."""

    def loss(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        p = torch.softmax(target, -1)
        return (p * (torch.log_softmax(target, -1) - torch.log_softmax(pred, -1))).sum(-1)

    def grad(self, pred: Tensor, target: Tensor, params: Tensor | None = None) -> Tensor:
        return torch.softmax(pred, -1) - torch.softmax(target, -1)

    def __repr__(self) -> str:
        return "KLBias()"


# -------------------------------------------------------------------------------------------------
# retention maps W = φ(A)


class Retention(Protocol):
    def __call__(self, acc: Tensor) -> Tensor:
        """Weights from one layer's accumulator ``[..., d_in, d_out]`` (any leading dims)."""
        ...


class LqNormalize:
    """Moneta's L_q retention, W = s(A)·A with one scalar per weight matrix and head (see the module
    docstring): ``map="paper"`` s = max(‖A‖_q, ``floor``)^{−(q−2)} (Eq. 24 literally when ``floor`` = 0),
    ``"unit"`` s = ‖A‖_q^{−1}. The floor keeps the literal map bounded when the accumulator collapses
    (keep ≈ 0): without it ‖W‖_q = 1/‖A‖_q grows without limit, and at T = 4096 with extreme gates
    every one of 8 seeds went non-finite; with 0.1 none did (tests/test_miras.py)."""

    def __init__(self, q: float = 4.0, map: Literal["paper", "unit"] = "paper", floor: float = 0.0) -> None:
        if q < 2:
            raise ValueError(f"LqNormalize: q must be >= 2, got {q}")
        if map not in ("paper", "unit"):
            raise ValueError(f"LqNormalize: map={map!r} is not one of ['paper', 'unit']")
        if floor < 0:
            raise ValueError(f"LqNormalize: floor must be >= 0, got {floor}")
        self.q, self.map, self.floor = q, map, floor

    def scale(self, acc: Tensor) -> Tensor:
        """s(A) for accumulators ``[..., d_in, d_out]`` -> ``[...]``."""
        # |A|^q as (A²)^{q/2}: no abs, and pow's fast square path for the default q = 4 (cheaper
        # forward+backward on the per-token accumulators Moneta materialises); 1e-30 only guards an
        # all-zero accumulator
        power = acc.square().pow(self.q / 2).sum((-2, -1))
        if self.map == "paper":
            return power.clamp_min(max(self.floor**self.q, 1e-30)).pow(-(self.q - 2) / self.q)
        return power.clamp_min(1e-30).pow(-1.0 / self.q)

    def __call__(self, acc: Tensor) -> Tensor:
        return acc * self.scale(acc)[..., None, None]

    def __repr__(self) -> str:
        return f"LqNormalize(q={self.q}, map={self.map!r}, floor={self.floor})"


class SimplexSoftmax:
    """Memora's KL retention: W = scale·Softmax(A) over the input axis (each output unit's weights)."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"SimplexSoftmax: scale must be > 0, got {scale}")
        self.scale = scale

    def __call__(self, acc: Tensor) -> Tensor:
        return self.scale * torch.softmax(acc, -2)

    def __repr__(self) -> str:
        return f"SimplexSoftmax(scale={self.scale})"


class ChunkEnd:
    """Apply ``retention`` to the state at chunk ends only: Miras §5.3 ("Parallelizable Training")
    applies Moneta's q ≠ 2 normalisation "at the end of each chunk", not inside it. Inside a chunk
    the memory is the plain linear accumulation W_t = β_t W_{t'} − Σ_{i≤t} lr_i (β_t/β_i) ∇ℓ(W_{t'}; k_i, v_i)
    from the chunk-start weights W_{t'} (Miras Eq. 28), every token of the chunk reads that
    accumulation (the last one included), and the state after the chunk's last token is mapped to
    W = φ(W_t), the next chunk's start. The learnable initial weights are W_0 itself (φ is not applied
    to them: the literal map is not idempotent).

    The state is the weights themselves (no separate accumulator), so at chunk size 1 this is
    projected online descent W_t = φ(α_t W_{t−1} − η_t ∇ℓ(W_{t−1}; k_t, v_t)) with token t reading the
    un-normalised α_t W_{t−1} − η_t ∇ℓ(W_{t−1}) — not Eq. 24's follow-the-regularised-leader form
    A_t = α_t A_{t−1} − η_t ∇ℓ(W_{t−1}), W_t = φ(A_t) that the plain map gives. The two forms differ at
    every chunk size; the chunk size is part of the model here."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention

    def __call__(self, acc: Tensor) -> Tensor:
        return self.retention(acc)

    def __repr__(self) -> str:
        return f"ChunkEnd({self.retention!r})"


def _split(retention: Retention | None) -> tuple[Retention | None, Retention | None]:
    """(the map inside a chunk, the map applied to the state at chunk ends)."""
    if isinstance(retention, ChunkEnd):
        return None, retention
    return retention, None


def read_map(retention: Retention | None) -> Retention | None:
    """The map a read applies to the state: ``retention`` itself, none for :class:`ChunkEnd` (its map
    acts on the state at chunk ends, and never on the initial weights)."""
    return _split(retention)[0]


def retained_weights(acc: Weights, retention: Retention | None) -> Weights:
    """W = φ(A) layer by layer (the accumulator itself without a retention map)."""
    return acc if retention is None else tuple(retention(a) for a in acc)


# -------------------------------------------------------------------------------------------------
# token-by-token reference and chunked form


def _refresh(offset: int, lag: bool) -> bool:
    """Whether the gradient point moves here: at a chunk start, and after a chunk's lag token."""
    return offset == 0 or (lag and offset == 1)


def miras_reference(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 16,
    bias: AttentionalBias | None = None,
    bias_params: Tensor | None = None,
    retention: Retention | None = None,
    lag: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Token-by-token loop (autograd inner gradient) with the chunked semantics of the module
    docstring: the ground truth for :func:`miras_chunked`. Arguments as there."""
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size)
    bias = bias or L2Bias()
    B, T = q.shape[:2]
    dtype = arch.init_weights[0].dtype
    qh, kh, vh = (_bhl(t, dtype) for t in (q, k, v))
    lr_, mom_, keep_, bp = (_bhl(t, dtype) for t in (lr, mom, keep, bias_params))
    st = state or initial_state(arch, B, mom is not None, dtype)
    A, S, anchor, offset = st.weights, st.momentum, st.anchor, st.offset
    inner, at_end = _split(retention)
    units = gate_units(arch)
    create_graph = torch.is_grad_enabled()
    ys = []
    with torch.enable_grad():
        for seg in segments(T, chunk_size, offset, most=1):
            if _refresh(seg.offset, lag):
                anchor = retained_weights(A, inner)
            u = _inner_grad(arch, bias, anchor, *seg.take(kh, vh, bp), create_graph)  # type: ignore[arg-type]
            A, S = token_update(A, S, u, seg.span.start, units, lr_, mom_, keep_)
            ys.append(arch.read(retained_weights(A, inner), qh[:, :, seg.span]))
            if at_end is not None and seg.ends_chunk:
                A = retained_weights(A, at_end)
    offset = (offset + T) % chunk_size
    y, out = segment_reads(ys, vh, q.dtype), MemoryState(A, S, anchor if offset else None, offset)
    return (y, out) if create_graph else (y.detach(), out.detach())


class _TokenAccumulators:
    """A_t = β_t A_0 + f_t S_0 − Σ_j G[t, j] x_jᵀ δ_j for every token of a segment,
    ``[B, H, L, d_in, d_out]`` per layer (:meth:`~memnets.memory.rule.ChunkCoefficients.token_weights`;
    ``units``: per-channel gates). Called with flat tensors (β, G, f, then per layer A_0, S_0 with
    momentum, the key path's x and δ) so that the checkpointed callers below recompute from them."""

    def __init__(self, depth: int, momentum: bool, units: tuple[int, ...] | None) -> None:
        self.depth, self.momentum, self.units = depth, momentum, units

    def accumulators(self, beta: Tensor, G: Tensor, f: Tensor | None, *tensors: Tensor) -> Weights:
        n = self.depth
        A, rest = tensors[:n], tensors[n:]
        S: tuple[Tensor | None, ...] = rest[:n] if self.momentum else (None,) * n
        xs, deltas = rest[-2 * n : -n], rest[-n:]
        c = ChunkCoefficients(beta, G, f, None, None, self.units)
        return tuple(
            c.layer(i).token_weights(a, x, d, s) for i, (a, s, x, d) in enumerate(zip(A, S, xs, deltas))
        )


class _TokenScales(_TokenAccumulators):
    """Per-token scales s(A_t) of an :class:`LqNormalize` map, one ``[B, H, L]`` per layer."""

    def __init__(
        self, retention: LqNormalize, depth: int, momentum: bool, units: tuple[int, ...] | None
    ) -> None:
        super().__init__(depth, momentum, units)
        self.retention = retention

    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.retention.scale(a) for a in self.accumulators(*tensors))


class _RetainedRead(_TokenAccumulators):
    """Read every token of a segment with its own weights φ(A_t) (materialised: φ is not linear, so the
    engine's dual form does not apply)."""

    def __init__(
        self, arch: MemoryMLP, retention: Retention, momentum: bool, units: tuple[int, ...] | None
    ) -> None:
        super().__init__(arch.depth, momentum, units)
        self.arch, self.retention = arch, retention

    def __call__(self, q: Tensor, *tensors: Tensor) -> Tensor:
        return self.arch.read(retained_weights(self.accumulators(*tensors), self.retention), q)


@chunk_step
def miras_step(
    arch: MemoryMLP,
    bias: AttentionalBias,
    retention: Retention | None,
    anchor: Weights,
    A: Weights,
    S: Weights | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bp: Tensor | None,
    lr: Tensor,
    log_keep: Tensor | None,
    log_mom: Tensor | None,
    units: tuple[int, ...] | None = None,
) -> tuple[Tensor, Weights, Weights | None]:
    """One segment of :func:`miras_chunked` (``[B, H, L, ...]`` slices): every token's read of its
    retained weights φ(A_t) and the accumulator A (and momentum S) after the segment, gradients taken
    at ``anchor``; ``units``: per-channel gates."""
    kp = key_path(arch, anchor, k, v, bias, bp)
    c = chunk_coefficients(lr, log_keep, log_mom, units)
    momentum = S is not None
    per_token = (c.beta, c.G, c.f, *A, *(S or ()), *kp.xs, *kp.deltas)
    if retention is None:
        y = dual_read(arch, q, A, S, kp, c)
    elif isinstance(retention, LqNormalize):
        # a scalar map: the dual form reads s_t A_t; only the norms need each token's A_t
        norms = _TokenScales(retention, arch.depth, momentum, units)
        grad = torch.is_grad_enabled()
        scales = checkpoint(norms, *per_token, use_reentrant=False) if grad else norms(*per_token)
        y = dual_read(arch, q, A, S, kp, c, scales)
    else:
        read = _RetainedRead(arch, retention, momentum, units)
        # the per-token weights are the big tensors: recompute them in the backward
        grad = torch.is_grad_enabled()
        y = checkpoint(read, q, *per_token, use_reentrant=False) if grad else read(q, *per_token)
    return (y, *segment_end_state(A, S, kp, c))


def miras_chunked(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None = None,
    keep: Tensor | None = None,
    state: MemoryState | None = None,
    *,
    chunk_size: int = 16,
    bias: AttentionalBias | None = None,
    bias_params: Tensor | None = None,
    retention: Retention | None = None,
    lag: bool = False,
) -> tuple[Tensor, MemoryState]:
    """Run a Miras memory chunk by chunk (parallel inside a chunk, sequential across chunks).

    Args:
        arch: the memory network; its learnable initial weights are the initial accumulator A_0.
        q, k, v: ``[B, T, H, D]``; lr: step size η_t ``[B, T, H]``; keep: retention α_t ``[B, T, H]``
            (``None`` = 1); or both per channel ``[B, T, H, N]``, the channel-wise η_t, α_t of Miras
            §5.4 (one entry per output unit of each weight matrix,
            :func:`~memnets.memory.engine.gate_units`).
        mom: momentum coefficient ``[B, T, H]`` (or per channel), ``None`` = plain gradient descent as
            in Miras §5.3; given, the accumulator takes momentum steps, S_t = mom_t S_{t−1} − lr_t u_t,
            A_t = keep_t A_{t−1} + S_t (Titans Eq. 13-14; "GD with momentum" is one of Miras §3's
            memory learning algorithms).
        state: :class:`~memnets.memory.MemoryState` whose ``weights`` are the accumulator A, whose
            ``momentum`` is S (with ``mom``) and whose ``anchor`` is the current gradient point
            φ(A_{t'}); ``None`` = start of sequence.
        bias, bias_params: attentional bias and its per-token parameters ``[B, T, H, ...]``.
        retention: the map φ (``None`` = identity, the engine's dual form; :class:`ChunkEnd` applies
            it to the state at chunk ends only).
        lag: Memora's lag token (module docstring).

    Returns ``y [B, T, H, D]`` and the state after the last token. Computes in the dtype of
    ``arch``'s parameters with autocast off, like the engine.
    """
    check_inputs(arch, q, k, v, lr, mom, keep, state, chunk_size)
    bias = bias or L2Bias()
    B, T = q.shape[:2]
    dtype = arch.init_weights[0].dtype
    with torch.autocast(q.device.type, enabled=False):
        qh, kh, vh = (_bhl(t, dtype) for t in (q, k, v))
        lr_, bp = _bhl(lr, dtype), _bhl(bias_params, dtype)
        log_keep, log_mom = (_bhl(g, dtype, log=True) for g in (keep, mom))
        st = state or initial_state(arch, B, mom is not None, dtype)
        A, S, anchor, offset = st.weights, st.momentum, st.anchor, st.offset
        retention, at_end = _split(retention)
        units = channel_units(arch, lr)
        ys = []
        for seg in segments(T, chunk_size, offset, first_alone=lag):
            if _refresh(seg.offset, lag):
                anchor = retained_weights(A, retention)
            y, A, S = miras_step(
                arch, bias, retention, anchor, A, S, *seg.take(qh, kh, vh, bp, lr_, log_keep, log_mom), units
            )
            ys.append(y)
            if at_end is not None and seg.ends_chunk:
                A = retained_weights(A, at_end)
        y = segment_reads(ys, vh, q.dtype)
    offset = (offset + T) % chunk_size
    return y, MemoryState(A, S, anchor if offset else None, offset)
