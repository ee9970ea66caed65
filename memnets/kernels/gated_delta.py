"""Gated delta rule: the linear memory of Gated DeltaNet (used by the ``gated_deltanet`` and ``mom`` mixers).

Per head the memory is a matrix ``S`` in R^{K x V}. At each token t, with key ``k_t``, value ``v_t``,
query ``q_t``, log keep gate ``g_t <= 0`` and write strength ``beta_t`` in [0, 1]::

    S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T
        = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = scale * S_t^T q_t                                   (scale defaults to K**-0.5)

Names against the papers: ``exp(g_t)`` is the keep gate (``keep``; alpha_t in Gated DeltaNet eq. 10,
a_t in MoM Table 1), ``beta_t`` is the inner step size (``lr``; beta_t in DeltaNet / Gated DeltaNet).
The update is one step of online gradient descent on ``0.5 * ||S^T k - v||^2`` at the decayed state.

Three implementations of the same function, picked by ``backend``:

* ``"reference"``: :func:`naive_gated_delta_rule`, a token-by-token loop (obviously correct, slow).
* ``"chunked"``: :func:`chunk_gated_delta_rule`, the exact chunk-parallel form. Inside a chunk of C tokens
  starting from state ``S0``, write ``gam_t`` for the cumulative log gate since the chunk start and
  ``u_t = beta_t (v_t - exp(g_t) S_{t-1}^T k_t)`` for the corrected value actually written. Then
  ``S_t = exp(gam_t) S0 + sum_{s<=t} exp(gam_t - gam_s) k_s u_s^T`` and the ``u`` solve the unit lower
  triangular system ``(I + A) U = diag(beta) V - diag(beta exp(gam)) K S0`` with
  ``A[t, s] = beta_t exp(gam_t - gam_s) k_t . k_s`` for s < t. Writing ``T = (I + A)^-1`` (the UT/WY
  transform), ``U = T (beta V) - T (beta exp(gam) K) S0``: everything but the ``S0`` product is parallel
  over chunks; only the C-step-long state pass is sequential.
* ``"triton"``: the same chunk form as Triton kernels (:mod:`memnets.kernels.gated_delta_triton`).

Packed variable-length batches use ``cu_seqlens`` (B must be 1); each sequence starts from its own row
of ``initial_state`` (zeros when absent) and yields its own row of the final state.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("reference", "chunked", "triton")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64 so exact equivalences can be tested; half types accumulate in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    chunk_size: int,
    backend: str,
) -> int:
    """Validate the op's arguments; return the number of sequences N."""
    name = "gated_delta_rule"
    if backend not in BACKENDS:
        raise ValueError(f"{name}: backend={backend!r} is not one of {list(BACKENDS)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be an int >= 1, got {chunk_size!r}")
    for t_name, t, dims in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("g", g, 3), ("beta", beta, 3)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {t_name} must be a tensor, got {type(t).__name__}")
        if t.dim() != dims:
            layout = "[B, T, H, D]" if dims == 4 else "[B, T, H]"
            raise ValueError(f"{name}: {t_name} must be {layout}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {t_name} must be a floating tensor, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: {t_name} is on {t.device} but q is on {q.device}")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"{name}: k must have q's shape {tuple(q.shape)} [B, T, H, K], got {tuple(k.shape)}")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"{name}: v must be [B={B}, T={T}, H={H}, V], got {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{name}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for t_name, t in (("g", g), ("beta", beta)):
        if t.shape != (B, T, H):
            raise ValueError(f"{name}: {t_name} must be [B={B}, T={T}, H={H}], got {tuple(t.shape)}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"{name}: scale must be a float or None, got {type(scale).__name__}")
    N = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"{name}: cu_seqlens must be a 1-D tensor [N + 1] with N >= 1")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name}: cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if B != 1:
            raise ValueError(f"{name}: cu_seqlens needs a packed batch B=1, got q of shape {tuple(q.shape)}")
        bounds = cu_seqlens.tolist()
        if bounds[0] != 0 or bounds[-1] != T or any(b > a for a, b in zip(bounds[1:], bounds[:-1])):
            raise ValueError(
                f"{name}: cu_seqlens must start at 0, be non-decreasing and end at T={T}; got {bounds}"
            )
        N = len(bounds) - 1
    if initial_state is not None:
        V = v.shape[-1]
        if tuple(initial_state.shape) != (N, H, K, V):
            raise ValueError(
                f"{name}: initial_state must be [N={N}, H={H}, K={K}, V={V}], got {tuple(initial_state.shape)}"
            )
        if not initial_state.is_floating_point() or initial_state.device != q.device:
            raise TypeError(f"{name}: initial_state must be a floating tensor on {q.device}")
    return N


def _sequences(cu_seqlens: Tensor | None, B: int, T: int) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of every sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    bounds = cu_seqlens.tolist()
    return [(0, s, e) for s, e in itertools.pairwise(bounds)]


def naive_gated_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float,
    initial_state: Tensor | None = None, output_final_state: bool = False, cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Token-by-token recurrence (the reference): inputs as in :func:`gated_delta_rule`, already checked."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, cdt = v.dtype, _compute_dtype(q.dtype)
    q, k, v, g, beta = (t.to(cdt) for t in (q, k, v, g, beta))
    outputs = []
    finals = []
    for n, (b, start, end) in enumerate(_sequences(cu_seqlens, B, T)):
        S = initial_state[n].to(cdt) if initial_state is not None else q.new_zeros(H, K, V)
        for t in range(start, end):
            keep = g[b, t].exp()[:, None, None]
            kt, vt, bt = k[b, t], v[b, t], beta[b, t][:, None]
            S = keep * S
            u = bt * (vt - torch.einsum("hkv,hk->hv", S, kt))
            S = S + kt[:, :, None] * u[:, None, :]
            outputs.append(scale * torch.einsum("hkv,hk->hv", S, q[b, t]))
        finals.append(S)
    o = (
        torch.stack(outputs).reshape(B, T, H, V).to(out_dtype)
        if outputs
        else v.new_zeros(B, T, H, V, dtype=out_dtype)
    )
    final = torch.stack(finals) if output_final_state else None
    return o, final


def _chunk_forward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float, S0: Tensor, C: int
) -> tuple[Tensor, Tensor]:
    """Chunked gated delta rule on equal-length sequences, T a multiple of C, float compute dtype.

    q, k: [N, T, H, K]; v: [N, T, H, V]; g, beta: [N, T, H]; S0: [N, H, K, V]. Returns (o, S_T)."""
    N, T, H, _ = q.shape
    V = v.shape[-1]
    nc = T // C
    # [N, H, nc, C, D]: one leading block per (sequence, head, chunk)
    q, k, v = (t.reshape(N, nc, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))
    g, beta = (t.reshape(N, nc, C, H).permute(0, 3, 1, 2) for t in (g, beta))
    gam = g.cumsum(-1)  # log decay from chunk start (before its first token) to t, inclusive
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = gam[..., :, None] - gam[..., None, :]
    # exp only where s <= t: above the diagonal the difference is positive and could overflow
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()
    kk = k @ k.transpose(-1, -2)
    A = (beta[..., :, None] * decay * kk).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    rhs = torch.cat([beta[..., None] * v, (beta * gam.exp())[..., None] * k], dim=-1)
    sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    u_base, w = sol[..., :V], sol[..., V:]  # U = u_base - w @ S0 for the chunk's start state S0
    qk = (q @ k.transpose(-1, -2)) * decay  # causal read of the in-chunk writes, diagonal included
    q_dec = q * gam.exp()[..., None]
    k_dec = k * (gam[..., -1:] - gam).exp()[..., None]  # decay from s to the chunk end
    g_end = gam[..., -1].exp()
    S = S0
    outs = []
    for c in range(nc):
        u = u_base[:, :, c] - w[:, :, c] @ S
        outs.append(q_dec[:, :, c] @ S + qk[:, :, c] @ u)
        S = g_end[:, :, c, None, None] * S + k_dec[:, :, c].transpose(-1, -2) @ u
    o = scale * torch.stack(outs, dim=2)  # [N, H, nc, C, V]
    return o.permute(0, 2, 3, 1, 4).reshape(N, T, H, V), S


def chunk_gated_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float,
    initial_state: Tensor | None = None, output_final_state: bool = False, cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """Chunk-parallel PyTorch form (exact): inputs as in :func:`gated_delta_rule`, already checked.

    Sequences are right-padded to a multiple of ``chunk_size`` with ``g = 0, beta = 0, k = 0``, which
    leaves the state untouched, so the final state is exact. Packed sequences are unpacked into a padded
    batch, run together, and packed again."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt = _compute_dtype(q.dtype)
    seqs = _sequences(cu_seqlens, B, T)
    N = len(seqs)
    L = max((e - s for _, s, e in seqs), default=0)
    Lp = max(chunk_size, -(-L // chunk_size) * chunk_size)
    S0 = (
        initial_state.to(cdt)
        if initial_state is not None
        else torch.zeros(N, H, K, V, dtype=cdt, device=q.device)
    )

    def batch(t: Tensor) -> Tensor:
        t = t.to(cdt)
        if cu_seqlens is None:
            pad = [0, 0] * (t.dim() - 2) + [0, Lp - T]
            return F.pad(t, pad)
        rows = [F.pad(t[0, s:e], [0, 0] * (t.dim() - 2) + [0, Lp - (e - s)]) for _, s, e in seqs]
        return torch.stack(rows)

    o, S = _chunk_forward(*(batch(t) for t in (q, k, v, g, beta)), scale, S0, chunk_size)
    if cu_seqlens is None:
        o = o[:, :T]
    else:
        o = torch.cat([o[n, : e - s] for n, (_, s, e) in enumerate(seqs)])[None]
    return o.to(v.dtype), (S if output_final_state else None)


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
    backend: str = "chunked",
    dot_precision: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule over a batch of sequences (see the module docstring for the recurrence).

    Args:
        q, k: [B, T, H, K] queries and keys (normalise keys, e.g. L2, for a stable update).
        v: [B, T, H, V] values; q, k, v share one dtype.
        g: [B, T, H] log of the keep gate (<= 0).
        beta: [B, T, H] write strength in [0, 1].
        scale: output scale, default ``K ** -0.5``.
        initial_state: [N, H, K, V] state before the first token (zeros if None); N = B, or the number
            of sequences when ``cu_seqlens`` is given.
        output_final_state: also return the state after the last token.
        cu_seqlens: [N + 1] int offsets of packed sequences in a B = 1 batch.
        chunk_size: tokens per chunk for ``chunked`` (any >= 1) and ``triton`` (power of two >= 16).
        backend: ``"reference"``, ``"chunked"`` or ``"triton"`` (CUDA, or TRITON_INTERPRET=1 on CPU).
        dot_precision: ``triton``'s matmul operands (:mod:`memnets.kernels.precision`): ``"auto"``
            follows the inputs (half for half inputs or under autocast, else ``"tf32x3"``); state and
            accumulation stay float32. The PyTorch backends compute in the inputs' type.

    Returns:
        ``(o, final_state)``: o is [B, T, H, V] in v's dtype; final_state is [N, H, K, V] in float32
        (float64 for float64 inputs), or None unless ``output_final_state``.

    Example:
        >>> B, T, H, K, V = 2, 100, 4, 32, 32
        >>> q, k = (F.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(2))
        >>> v = torch.randn(B, T, H, V)
        >>> g = F.logsigmoid(torch.randn(B, T, H))
        >>> beta = torch.rand(B, T, H)
        >>> o, S = gated_delta_rule(q, k, v, g, beta, output_final_state=True, chunk_size=32)
    """
    _check_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, chunk_size, backend)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "reference":
        return naive_gated_delta_rule(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens)
    if backend == "chunked":
        return chunk_gated_delta_rule(
            q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size
        )
    from .gated_delta_triton import triton_gated_delta_rule

    return triton_gated_delta_rule(
        q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, chunk_size, dot_precision
    )
