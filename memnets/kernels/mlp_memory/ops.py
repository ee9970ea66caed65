"""The MLP-memory kernels as ``torch.library`` custom ops, with fake (meta) implementations for
``torch.compile`` and ``register_autograd`` tying the forward to its backward: ``memnets::mlp_memory_fwd``
/ ``_bwd``, whole-state or (``LaunchConfig.hidden_block`` > 0) wide-state kernels. Both take the same
tensors first and then the fields of :class:`~memnets.kernels.mlp_memory.config.LaunchConfig` as
scalars; this module is the one place that flattens it (``*config``) and rebuilds it
(``LaunchConfig(*scalars)``)."""

from __future__ import annotations

import torch
from torch import Tensor

from .backward import run_backward
from .config import LaunchConfig, op_schema
from .forward import run_forward, segments

# q, k [B, T, H, Dk], v [B, T, H, D] (Dk > D: feature keys, wide-state kernels only; k, v lead with
# the Omega window's P0 carried rows); bias_params the Huber threshold [B, T, H] (norm) or [B, T, H, D]
# (coord); ln_w, ln_b [H, D] the memory LayerNorm's scale and shift; the coefficients of tiles of L
# tokens [B, H, NT, L(, P + L)] float32 (f, m_end, s_coef empty without momentum); the state w1, s1
# [B, H, Dk, Dh], w2, s2 [B, H, Dh, D] float32; packed sequences' cu_seqlens and first tiles [N + 1]
_INPUTS = (
    "Tensor q, Tensor k, Tensor v, Tensor? bias_params, Tensor? ln_w, Tensor? ln_b, Tensor beta, "
    "Tensor f, Tensor G, Tensor m_end, Tensor s_coef, Tensor w1, Tensor w2, Tensor? s1, Tensor? s2, "
    "Tensor? cu_seqlens, Tensor? tile_offsets"
)
_N_INPUTS = _INPUTS.count("Tensor")
_BETA, _W1, _W2, _S1 = 6, 11, 12, 13  # positions of β and the state in the inputs
# the cotangents of (y, W1, W2, S1, S2 final, W1, W2 anchor)
_COTANGENTS = "Tensor dy, Tensor dw1_final, Tensor dw2_final, Tensor ds1_final, Tensor ds2_final, "
_COTANGENTS += "Tensor dw1_anchor, Tensor dw2_anchor"
# the backward's checkpoints, and Moneta's per-token power sums P1_t, P2_t [B, H, NT, L] (empty without its
# map)
_CHECKPOINTS = "Tensor ckpt_w1, Tensor ckpt_w2, Tensor ckpt_s1, Tensor ckpt_s2, Tensor tok_p1, Tensor tok_p2"
_STATE_OUT = "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor"  # y, final state, anchor


def _split(inputs: tuple, n_tensors: int) -> tuple[tuple, LaunchConfig]:
    return inputs[:n_tensors], LaunchConfig(*inputs[n_tensors:])


@torch.library.custom_op(
    "memnets::mlp_memory_fwd",
    mutates_args=(),
    schema=op_schema(_INPUTS, f"({_STATE_OUT}, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"),
)
def mlp_memory_fwd(*inputs) -> tuple[Tensor, ...]:
    """(y float32, W1, W2, S1, S2 final (S empty without momentum), W1, W2 at the last chunk's start,
    the state at every checkpoint segment's start ``[NS, B, H, ...]`` and Moneta's per-token power
    sums)."""
    tensors, config = _split(inputs, _N_INPUTS)
    return run_forward(*tensors, config)


@torch.library.custom_op(
    "memnets::mlp_memory_bwd",
    mutates_args=(),
    schema=op_schema(f"{_INPUTS}, {_CHECKPOINTS}, {_COTANGENTS}", "Tensor[]"),
)
def mlp_memory_bwd(*inputs) -> list[Tensor]:
    """Gradients (q, k, v, bias_params, ln_w, ln_b, beta, f, G, m_end, s_coef, w1, w2, s1, s2) of
    :func:`mlp_memory_fwd` (empty for absent inputs)."""
    tensors, config = _split(inputs, _N_INPUTS + 6 + 7)
    return run_backward(*tensors, config)


@mlp_memory_fwd.register_fake
def _(*inputs):
    """y, the final state, the anchor, the checkpoints (empty momenta without momentum) and the per-token
    power sums (empty without Moneta's map)."""
    q, w1, w2, s1 = inputs[0], inputs[_W1], inputs[_W2], inputs[_S1]
    config = _split(inputs, _N_INPUTS)[1]
    ns = len(segments(config))
    beta = inputs[_BETA]
    mom = (w1, w2) if s1 is not None else (None, None)

    def like(w: Tensor | None, *lead: int) -> Tensor:
        return w1.new_empty(0) if w is None else w.new_empty(*lead, *w.shape)

    return (
        w1.new_empty(*q.shape[:3], w2.shape[-1]),
        *(like(w) for w in (w1, w2, *mom, w1, w2)),
        *(like(w, ns) for w in (w1, w2, *mom)),
        *(torch.empty_like(beta) if config.token_map else beta.new_empty(0) for _ in range(2)),
    )


def _fake_grads(*inputs) -> list[Tensor]:
    """The backward op's meta gradients for the forward inputs (q .. s2): empty where an input is
    absent."""
    w1, s1 = inputs[_W1], inputs[_S1]
    return [w1.new_empty(0) if t is None else torch.empty_like(t) for t in inputs[:_S1]] + [
        torch.empty_like(w) if s1 is not None else w1.new_empty(0) for w in inputs[_W1:_S1]
    ]


mlp_memory_bwd.register_fake(_fake_grads)


def _setup_context(ctx, inputs, output) -> None:
    """Save the forward's tensors, its checkpoints and its config."""
    tensors, ctx.config = _split(inputs, _N_INPUTS)
    ctx.absent = [t is None for t in tensors]
    ctx.save_for_backward(*tensors, *output[7:])


def _cotangents(tensors: tuple, outputs: tuple) -> tuple:
    """The backward op's cotangents of (y, W1, W2, S1, S2 final, W1, W2 anchor): zeros for unused
    outputs, empty momenta without momentum."""
    q, w1, w2, s1 = tensors[0], tensors[_W1], tensors[_W2], tensors[_S1]
    likes = (w1.new_empty(*q.shape[:3], w2.shape[-1]), w1, w2, w1, w2, w1, w2)
    has_mom = s1 is not None
    return tuple(
        w1.new_zeros(0)
        if i in (3, 4) and not has_mom
        else torch.zeros_like(like)
        if t is None
        else t.contiguous()
        for i, (t, like) in enumerate(zip(outputs, likes))
    )


def _backward(ctx, *cotangents) -> tuple:
    """The forward inputs' gradients as autograd wants them: ``None`` for absent inputs, for the
    momentum coefficients' empty placeholders, for the packing and for the config."""
    saved = ctx.saved_tensors
    tensors, ckpt = saved[:_N_INPUTS], saved[_N_INPUTS:]
    grads = mlp_memory_bwd(*tensors, *ckpt, *_cotangents(tensors, cotangents[:7]), *ctx.config)
    grads = [None if absent else g for g, absent in zip(grads, ctx.absent)]
    if ctx.absent[_S1]:  # no momentum: f, m_end, s_coef are empty placeholders
        grads[7] = grads[9] = grads[10] = None
    return *grads, None, None, *(None,) * len(ctx.config)  # none for cu_seqlens, tile_offsets


torch.library.register_autograd("memnets::mlp_memory_fwd", _backward, setup_context=_setup_context)
