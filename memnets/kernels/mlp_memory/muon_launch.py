"""The entry of the Muon kernels (per chunk: :mod:`.muon_forward`, :mod:`.muon_backward`; per token:
:mod:`.token_muon_forward`, :mod:`.token_muon_backward`): what they cover (:func:`muon_supports`) and
the launches (:func:`muon_memory_chunked`, :func:`token_muon_memory_chunked`, through the custom ops of
:mod:`.muon_ops`, which hold the checkpoint plan and the autograd), plain tensors in and out."""

from __future__ import annotations

import torch
from torch import Tensor

from ..precision import DOT_PRECISIONS
from ..specs import NetSpec
from .config import ACTIVATIONS, block
from .launch import checkpoint_chunks
from .limits import MAX_TILE, supports_wide
from .muon_ops import MuonConfig, muon_memory_fwd, token_muon_memory_fwd

# the Gram matrices of NS (Dh × Dh for layer 1, D × D for layer 2) stay on chip in one tile
MAX_MUON_WIDTH = 64
# with one TF32 product per matmul the per-token backward at hidden width 64 needs 252 KiB of shared
# memory on sm_90 (over its 227 KiB; 140 KiB with half operands, 168 KiB with TF32x3: benchmarks/RESULTS.md
# §51), so that mode stops at 32
MAX_TOKEN_MUON_HIDDEN_TF32 = 32


def muon_supports(
    memory: NetSpec, chunk_size: int | None, prefix: int = 0, token: bool = False, dot_precision: str = "auto"
) -> str | None:
    """``None`` when the Muon kernels (once per chunk, or with ``token`` on every token) cover this memory
    at this chunk size with ``prefix`` more key rows per chunk (the Omega window's) and matmul operands
    ``dot_precision`` (``DOT_PRECISIONS`` or "auto"), else the reason."""
    if memory.depth != 2:
        return f"memory depth {memory.depth} (the Muon kernel covers the 2-layer memory)"
    if memory.activation not in ACTIVATIONS:
        return f"activation {memory.activation!r} (the Muon kernel covers {sorted(ACTIVATIONS)})"
    if memory.dtype != torch.float32:
        return f"a {memory.dtype} memory (the Muon kernel keeps its state in float32)"
    if block(memory.d_hidden) > MAX_MUON_WIDTH or block(memory.d_out) > MAX_MUON_WIDTH:
        return (
            f"hidden width {memory.d_hidden} and head dim {memory.d_out} (the Muon kernel keeps the Newton-"
            f"Schulz Gram matrices on chip: both <= {MAX_MUON_WIDTH})"
        )
    if token and dot_precision == "tf32" and block(memory.d_hidden) > MAX_TOKEN_MUON_HIDDEN_TF32:
        return (
            f"muon='token' with dot_precision='tf32' at hidden width {memory.d_hidden} (the per-token "
            f"backward's shared memory on sm_90 exceeds 227 KiB past hidden width {MAX_TOKEN_MUON_HIDDEN_TF32} "
            "with TF32 operands; 'tf32x3', the half types and 'auto' fit)"
        )
    if chunk_size is not None and chunk_size + prefix > MAX_TILE:
        return f"chunk_size {chunk_size} with {prefix} window rows (the Muon kernel takes <= {MAX_TILE} rows)"
    return supports_wide(memory.d_out, chunk_size, None, prefix)


def muon_memory_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    dc: Tensor,
    lc: Tensor,
    m_end: Tensor,
    s_coef: Tensor,
    w1: Tensor,
    w2: Tensor,
    s1: Tensor,
    s2: Tensor,
    o1: Tensor,
    o2: Tensor,
    *,
    memory: NetSpec,
    chunk_size: int,
    window: int = 1,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    ns_eps: float = 1e-7,
    checkpoint_every: int | None = None,
    dot_precision: str = "tf32x3",
) -> tuple[
    Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]
]:
    """The Omega rule with Muon once per chunk on a depth-2 MLP memory, from a chunk boundary of a dense
    batch, forward and (through autograd) backward.

    Args:
        q, k: ``[B, T, H, Dk]`` (k led by the window's P0 carried rows: ``[B, P0 + T, H, Dk]``);
            v ``[B, P0 + T, H, D]``.
        beta, dc, lc: the reads' coefficients ``[B, H, NC, L]`` (chunks of L = ``chunk_size`` tokens,
            the tail padded: :func:`memnets.memory.kernel_bridge.muon_coefficients`); m_end ``[B, H, NC]``,
            s_coef ``[B, H, NC, P + L]`` the momentum's; float32.
        w1, w2, s1, s2, o1, o2: the weights, momentum and Muon direction at the first token
            (``[B, H, Dk, Dh]`` / ``[B, H, Dh, D]``).
        memory: the memory network (:func:`muon_supports` must hold); ``ln_weight, ln_bias [H, D]``
            its LayerNorm's scale and shift.
        window: the Omega window c (P = c − 1 more key rows per chunk).
        ns_steps, ns_coefficients, ns_eps: Newton–Schulz (:func:`memnets.memory.muon.newton_schulz`).
        checkpoint_every: chunks per checkpoint segment of the backward (default: as the wide-state
            kernels', :func:`~.launch.checkpoint_chunks`).
        dot_precision: the matmuls' operands (``DOT_PRECISIONS``).

    Returns:
        ``y`` in q's dtype (with the residual's ``+ q[..., :D]``), the final (W1, W2), (S1, S2),
        (O1, O2), and the last chunk's start weights (float32).

    Example::

        y, W, S, O, anchor = muon_memory_chunked(
            q, k, v, *muon_coefficients(...), w1, w2, s1, s2, o1, o2, memory=memory, chunk_size=16,
        )
    """
    y, W1, W2, S1, S2, O1, O2, A1, A2 = _launch(
        muon_memory_fwd, "muon_memory_chunked", q, k, v, (beta, dc, lc, m_end, s_coef), (w1, w2, s1, s2, o1, o2),
        memory, chunk_size, window, ln_weight, ln_bias, ns_steps, ns_coefficients, ns_eps, checkpoint_every,
        dot_precision,
    )  # fmt: skip
    return y, (W1, W2), (S1, S2), (O1, O2), (A1, A2)


def _launch(
    op, name: str, q: Tensor, k: Tensor, v: Tensor, coefs: tuple, state: tuple, memory: NetSpec,
    chunk_size: int, window: int, ln_weight: Tensor | None, ln_bias: Tensor | None, ns_steps: int,
    ns_coefficients: tuple[float, float, float], ns_eps: float, checkpoint_every: int | None,
    dot_precision: str,
) -> tuple[Tensor, ...]:  # fmt: skip
    """Either Muon op (``op``: the per-chunk one, or with 4 state tensors the per-token one) after the
    scope check: y in q's dtype with the residual, the final state and the anchors."""
    token = len(state) == 4
    reason = muon_supports(memory, chunk_size, window - 1, token=token, dot_precision=dot_precision)
    if reason is not None:
        raise ValueError(f"{name}: unsupported configuration: {reason}")
    config = MuonConfig(
        chunk_size, window - 1, *checkpoint_chunks(coefs[0].shape[2], checkpoint_every, wide=True),
        DOT_PRECISIONS[dot_precision], ns_steps, *ns_coefficients, ns_eps, ACTIVATIONS[memory.activation],
        memory.residual, memory.ln_eps,
    )  # fmt: skip
    ln_w = ln_b = None
    if memory.layer_norm:
        ln_w, ln_b = ln_weight.float().contiguous(), ln_bias.float().contiguous()  # type: ignore[union-attr]
    y, *rest = op(
        q.contiguous(), k.contiguous(), v.contiguous(), ln_w, ln_b, *(x.float().contiguous() for x in coefs),
        *(t.float().contiguous() for t in state), *config,
    )  # fmt: skip
    if memory.residual:
        y = y + q[..., : memory.d_out].float()
    return (y.to(q.dtype), *rest[: len(state) + 2])


def token_muon_memory_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    keep: Tensor,
    lr: Tensor,
    mom: Tensor,
    qm: Tensor,
    w1: Tensor,
    w2: Tensor,
    s1: Tensor,
    s2: Tensor,
    *,
    memory: NetSpec,
    chunk_size: int,
    window: int = 1,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    ns_steps: int = 5,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    ns_eps: float = 1e-7,
    checkpoint_every: int | None = None,
    dot_precision: str = "tf32x3",
) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """The Omega rule with Muon on every token on a depth-2 MLP memory, from a chunk boundary of a dense
    batch, forward and (through autograd) backward.

    Args:
        q, k, v: as :func:`muon_memory_chunked`'s.
        beta, keep, lr, mom: ``[B, H, NC, L]`` per token: β_t = Π_{i≤t} keep_i, keep_t, lr_t and
            m_t = Π_{i≤t} mom_i (chunks of L = ``chunk_size`` tokens, the tail padded with keep = mom = 1,
            lr = 0); qm ``[B, H, NC, L, P + L]`` the momentum's coefficients Q[t, j] of the key rows
            (:func:`memnets.memory.muon_kernel.token_muon_coefficients`); float32.
        w1, w2, s1, s2: the weights and momentum at the first token (``[B, H, Dk, Dh]`` / ``[B, H, Dh, D]``).
        memory, window, ln_weight, ln_bias, ns_steps, ns_coefficients, ns_eps, checkpoint_every,
            dot_precision: as :func:`muon_memory_chunked`'s.

    Returns:
        ``y`` in q's dtype (with the residual's ``+ q[..., :D]``), the final (W1, W2), (S1, S2) and the last
        chunk's start weights (float32).

    Example::

        y, W, S, anchor = token_muon_memory_chunked(
            q, k, v, *token_muon_coefficients(...), w1, w2, s1, s2, memory=memory, chunk_size=16,
        )
    """
    y, W1, W2, S1, S2, A1, A2 = _launch(
        token_muon_memory_fwd, "token_muon_memory_chunked", q, k, v, (beta, keep, lr, mom, qm), (w1, w2, s1, s2),
        memory, chunk_size, window, ln_weight, ln_bias, ns_steps, ns_coefficients, ns_eps, checkpoint_every,
        dot_precision,
    )  # fmt: skip
    return y, (W1, W2), (S1, S2), (A1, A2)
