"""The entry of the Muon-per-chunk kernels (:mod:`.muon_forward`, :mod:`.muon_backward`): what they cover
(:func:`muon_supports`) and the launch with its autograd (:func:`muon_memory_chunked`), plain tensors in
and out. Checkpoint segments bound the backward's memory as in the wide-state kernels
(:func:`~.launch.checkpoint_chunks`): the forward keeps the state (W, S, O) at every segment's start;
the backward walks the segments in reverse, recomputes each one's inner segment starts (where there
are several), then each inner segment's chunk start states (``STORE``) and walks it in reverse."""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from ..precision import DOT_PRECISIONS
from ..specs import NetSpec
from .config import ACTIVATIONS, block
from .forward import spans
from .launch import checkpoint_chunks
from .limits import MAX_TILE, supports_wide
from .muon_backward import _muon_backward_kernel
from .muon_forward import _muon_forward_kernel
from .wide_forward import key_block

# the Gram matrices of NS (Dh × Dh for layer 1, D × D for layer 2) stay on chip in one tile
MAX_MUON_WIDTH = 64
# warps per program: two warpgroups split the N of the [64, 64]-wide Newton–Schulz and key-block products
# (no replicated warps); in the static report at atlas-760m they cut the exposed latency per chunk 1.4×
# forward and 2.3× backward against one warpgroup, for more spill (benchmarks/RESULTS.md §37)
MUON_NUM_WARPS = 8


def muon_supports(memory: NetSpec, chunk_size: int | None, prefix: int = 0) -> str | None:
    """``None`` when the Muon-per-chunk kernels cover this memory at this chunk size with ``prefix``
    more key rows per chunk (the Omega window's), else the reason."""
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
    if chunk_size is not None and chunk_size + prefix > MAX_TILE:
        return f"chunk_size {chunk_size} with {prefix} window rows (the Muon kernel takes <= {MAX_TILE} rows)"
    return supports_wide(memory.d_out, chunk_size, None, prefix)


def ns_dot(dot: int) -> int:
    """The operand mode of the Newton–Schulz products: float32 (tf32x3) unless ``dot`` asks for one TF32
    product. Muon's quintic amplifies operand rounding in the momentum's small singular directions
    (slope a⁵ ≈ 490 at 0). In the interpreter with every product in float16, the directions O of a
    40-token test (benchmarks/RESULTS.md §37) were 3% off the float64 engine in relative RMS; with
    Newton–Schulz in float32 and the rest in float16, under 0.5% (bfloat16 rounds 8× coarser than
    float16, TF32 as float16). The kernels' half operand modes therefore stop short of Newton–Schulz, so
    that a Muon memory's backends agree, at three TF32 products per Newton–Schulz product."""
    return dot if dot == DOT_PRECISIONS["tf32"] else DOT_PRECISIONS["tf32x3"]


def _constants(q: Tensor, w1: Tensor, w2: Tensor, memory: NetSpec, L: int, P: int, dot: int, steps: int):
    D, DI, DH = w2.shape[-1], q.shape[3], w1.shape[-1]
    KB = key_block(DI, D)
    return dict(
        H=q.shape[2], D=D, DI=DI, DH=DH, L=L, BL=block(L), BD=block(D), KB=KB, NI=triton.cdiv(DI, KB),
        BHB=block(DH), P=P, BK=block(P + L), ACT=ACTIVATIONS[memory.activation], DOT=dot,
        LN=memory.layer_norm, RES=memory.residual, STEPS=steps, NSD=ns_dot(dot),
        num_warps=MUON_NUM_WARPS,
        num_stages=1,
    )  # fmt: skip


class _MuonMemory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef, w1, w2, s1, s2, o1, o2, meta):
        memory, L, P, (every, _), dot, steps, ns = meta
        B, T, H = q.shape[:3]
        NCT = beta.shape[2]
        consts = _constants(q, w1, w2, memory, L, P, dot, steps)
        state = [t.float().clone(memory_format=torch.contiguous_format) for t in (w1, w2, s1, s2, o1, o2)]
        y = w1.new_empty(B, T, H, w2.shape[-1])
        anchor = (w1.new_empty(w1.shape), w2.new_empty(w2.shape))
        empty = w1.new_empty(0)
        lnw = ln_w if ln_w is not None else empty
        lnb = ln_b if ln_b is not None else empty
        ckpts = []
        for c0 in range(0, NCT, every):
            ckpts.append([t.clone() for t in state])
            _muon_forward_kernel[(B * H,)](
                q, k, v, lnw, lnb, beta, dc, lc, m_end, s_coef, y, *state, *anchor, *(empty,) * 6,
                T, k.shape[1] - T, c0, min(every, NCT - c0), NCT, memory.ln_eps, *ns, STORE=False, **consts,
            )  # fmt: skip
        ctx.save_for_backward(
            q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef, *(torch.stack(c) for c in zip(*ckpts))
        )
        ctx.meta = meta
        return (y, *state, *anchor)

    @staticmethod
    def backward(ctx, dy, *d_state):
        memory, L, P, (every, inner), dot, steps, ns = ctx.meta
        q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef, *ckpts = ctx.saved_tensors
        B, T, H = q.shape[:3]
        NCT = beta.shape[2]
        D = v.shape[-1]
        consts = _constants(q, ckpts[0][0], ckpts[1][0], memory, L, P, dot, steps)
        like = [c[0] for c in ckpts] + [ckpts[0][0], ckpts[1][0]]
        d_state = [
            torch.zeros_like(w) if d is None else d.float().clone(memory_format=torch.contiguous_format)
            for d, w in zip(d_state, like)
        ]
        dstate, danchor = d_state[:6], d_state[6:]
        dy = torch.zeros_like(q[..., :D], dtype=torch.float32) if dy is None else dy.float().contiguous()
        empty = q.new_empty(0, dtype=torch.float32)
        lnw = ln_w if ln_w is not None else empty
        lnb = ln_b if ln_b is not None else empty
        dq = q.new_zeros(q.shape, dtype=torch.float32)
        dk = q.new_zeros(B, H, NCT, P + L, q.shape[3], dtype=torch.float32)
        dv = q.new_zeros(B, H, NCT, P + L, D, dtype=torch.float32)
        dbeta, ddc, dlc = (torch.empty_like(beta) for _ in range(3))
        dm, ds = torch.empty_like(m_end), torch.empty_like(s_coef)
        dln = q.new_zeros(2, B * H, D, dtype=torch.float32)
        xs = q.new_empty(B * H, steps + 1, *ckpts[0].shape[-2:], dtype=torch.float32)
        dxs = q.new_empty(B * H, *ckpts[0].shape[-2:], dtype=torch.float32)
        inputs = (q, k, v, lnw, lnb, beta, dc, lc, m_end, s_coef)
        y_scratch = q.new_empty(*q.shape[:3], D, dtype=torch.float32)  # the inner checkpoints' pass
        scratch = (torch.empty_like(ckpts[0][0]), torch.empty_like(ckpts[1][0]))  # their anchors
        for n, (s0, ns0) in reversed(list(enumerate(spans(0, NCT, every)))):
            # the segment's inner checkpoints (the last inner segment's start is its STORE pass's)
            state, starts = [c[n].clone() for c in ckpts], []
            for c0, nc in spans(s0, ns0, inner):
                starts.append([t.clone() for t in state])
                if c0 + nc < s0 + ns0:
                    _muon_forward_kernel[(B * H,)](
                        *inputs, y_scratch, *state, *scratch, *(empty,) * 6,
                        T, k.shape[1] - T, c0, nc, NCT, memory.ln_eps, *ns, STORE=False, **consts,
                    )  # fmt: skip
            for (c0, nc), state in reversed(list(zip(spans(s0, ns0, inner), starts))):
                chunks = [q.new_empty(B, H, nc, *t.shape[2:], dtype=torch.float32) for t in state]
                _muon_forward_kernel[(B * H,)](
                    *inputs, empty, *state, *scratch, *chunks,
                    T, k.shape[1] - T, c0, nc, NCT, memory.ln_eps, *ns, STORE=True, **consts,
                )  # fmt: skip
                _muon_backward_kernel[(B * H,)](
                    q, k, v, lnw, lnb, beta, dc, lc, m_end, s_coef, dy, *chunks, xs, dxs, *dstate, *danchor,
                    dq, dk, dv, dbeta, ddc, dlc, dm, ds, dln[0], dln[1],
                    T, k.shape[1] - T, c0, nc, NCT, memory.ln_eps, *ns, **consts,
                )  # fmt: skip
        if memory.residual:  # M(φ(k)) = k + …: R = K[:, :D] + … − V
            dk[..., :D] -= dv
        dk_, dv_ = (_fold(x, k.shape[1], T, L, P) for x in (dk, dv))
        dln_w = dln_b = None
        if memory.layer_norm:
            dln_w, dln_b = (x.view(B, H, D).sum(0) for x in dln)
        return (
            dq.to(q.dtype), dk_.to(k.dtype), dv_.to(v.dtype), dln_w, dln_b, dbeta, ddc, dlc, dm, ds,
            *dstate, None,
        )  # fmt: skip


def _fold(x: Tensor, rows: int, T: int, L: int, P: int) -> Tensor:
    """Sum the per-chunk key-row gradients ``[B, H, NCT, P + L, W]`` into ``[B, rows, H, W]`` (row g·L + e
    of the carried-and-sequence rows for chunk g's row e; the window's rows overlap)."""
    B, H, NCT, R, W = x.shape
    P0 = rows - T
    idx = P0 + torch.arange(NCT, device=x.device)[:, None] * L - P + torch.arange(R, device=x.device)[None, :]
    valid = (idx >= 0) & (idx < rows)
    out = x.new_zeros(B, H, rows, W)
    out.index_add_(2, idx[valid], x[:, :, valid])
    return out.transpose(1, 2)


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
    reason = muon_supports(memory, chunk_size, window - 1)
    if reason is not None:
        raise ValueError(f"muon_memory_chunked: unsupported configuration: {reason}")
    segments = checkpoint_chunks(beta.shape[2], checkpoint_every, wide=True)
    meta = (
        memory, chunk_size, window - 1, segments, DOT_PRECISIONS[dot_precision], ns_steps,
        (*ns_coefficients, ns_eps),
    )  # fmt: skip
    ln_w = ln_b = None
    if memory.layer_norm:
        ln_w, ln_b = ln_weight.float().contiguous(), ln_bias.float().contiguous()  # type: ignore[union-attr]
    coefs = (x.float().contiguous() for x in (beta, dc, lc, m_end, s_coef))
    y, *rest = _MuonMemory.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), ln_w, ln_b, *coefs, w1, w2, s1, s2, o1, o2, meta
    )
    if memory.residual:
        y = y + q[..., : memory.d_out].float()
    W1, W2, S1, S2, O1, O2, A1, A2 = rest
    return y.to(q.dtype), (W1, W2), (S1, S2), (O1, O2), (A1, A2)
