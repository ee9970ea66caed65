"""The Muon kernels (per chunk: :mod:`.muon_forward`, :mod:`.muon_backward`; per token:
:mod:`.token_muon_forward`, :mod:`.token_muon_backward`) as ``torch.library`` custom ops with fake
implementations and ``register_autograd``, as the other MLP-memory kernels (:mod:`.ops`):
``memnets::muon_memory_fwd`` / ``_bwd`` and ``memnets::token_muon_memory_fwd`` / ``_bwd``. Each takes the tensors first and then the fields of
:class:`MuonConfig` as scalars.

Checkpoint segments bound the backward's memory as in the wide-state kernels
(:func:`~.launch.checkpoint_chunks`): the forward keeps the state (W, S, O) at every segment's start;
the backward walks the segments in reverse, recomputes each one's inner segment starts (where there
are several), then each inner segment's chunk start states (``STORE``) and walks it in reverse."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
from torch import Tensor

from .config import block, op_schema
from .forward import spans
from .muon_backward import _muon_backward_kernel
from .muon_forward import _muon_forward_kernel
from .token_muon_backward import _token_muon_backward_kernel
from .token_muon_forward import _token_muon_forward_kernel
from .wide_forward import key_block

# warps per program: two warpgroups split the N of the [64, 64]-wide Newton–Schulz and key-block products
# (no replicated warps); in the static report at atlas-760m they cut the exposed latency per chunk 1.4×
# forward and 2.3× backward against one warpgroup, for more spill (benchmarks/RESULTS.md §37)
MUON_NUM_WARPS = 8


class MuonConfig(NamedTuple):
    """Everything but the tensors that a launch of the Muon kernels needs."""

    chunk: int  # tokens per chunk (L)
    prefix: int  # the Omega window's key rows before each chunk (P = window − 1)
    every: int  # chunks per checkpoint segment
    inner: int  # chunks per inner segment of the backward's recompute
    dot_precision: int  # memnets.kernels.precision.DOT_PRECISIONS (the Newton–Schulz products: ns_dot)
    ns_steps: int
    na: float  # Newton–Schulz's (a, b, c)
    nb: float
    nc: float
    ns_eps: float
    activation: int  # ACTIVATIONS
    residual: bool  # M(k) = k[:, :D] + … on the key path
    ln_eps: float


def ns_dot(dot: int) -> int:
    """The operand mode of the Newton–Schulz products: float32 (tf32x3, code 0) unless ``dot`` asks for
    one TF32 product (code 1). Muon's quintic amplifies operand rounding in the momentum's small singular
    directions (slope a⁵ ≈ 490 at 0). In the interpreter with every product in float16, the directions O
    of a 40-token test (benchmarks/RESULTS.md §37) were 3% off the float64 engine in relative RMS; with
    Newton–Schulz in float32 and the rest in float16, under 0.5% (bfloat16 rounds 8× coarser than
    float16, TF32 as float16). The kernels' half operand modes therefore stop short of Newton–Schulz, so
    that a Muon memory's backends agree, at three TF32 products per Newton–Schulz product."""
    return 1 if dot == 1 else 0


def _constants(q: Tensor, w1: Tensor, w2: Tensor, ln_w: Tensor | None, c: MuonConfig) -> dict:
    D, DI, DH = w2.shape[-1], q.shape[3], w1.shape[-1]
    KB = key_block(DI, D)
    return dict(
        H=q.shape[2], D=D, DI=DI, DH=DH, L=c.chunk, BL=block(c.chunk), BD=block(D), KB=KB,
        NI=triton.cdiv(DI, KB), BHB=block(DH), P=c.prefix, BK=block(c.prefix + c.chunk), ACT=c.activation,
        DOT=c.dot_precision, LN=ln_w is not None, RES=c.residual, STEPS=c.ns_steps, NSD=ns_dot(c.dot_precision),
        num_warps=MUON_NUM_WARPS, num_stages=1,
    )  # fmt: skip


def _scalars(c: MuonConfig) -> tuple:
    return (c.ln_eps, c.na, c.nb, c.nc, c.ns_eps)


def _launcher(kernel, inputs: tuple, y: Tensor, anchor: tuple, c: MuonConfig, consts: dict, NCT: int):
    """``launch(state, c0, nc, chunks=None)``: ``kernel`` over chunks c0 .. c0 + nc from ``state``
    (updated in place), its reads into ``y`` and the last chunk's start weights into ``anchor``; with
    ``chunks`` the STORE pass (every chunk's start state into them, no reads)."""
    q, k = inputs[:2]
    B, T, H = q.shape[:3]
    empty = q.new_empty(0, dtype=torch.float32)

    def launch(state: list[Tensor], c0: int, nc: int, chunks: list[Tensor] | None = None) -> None:
        kernel[(B * H,)](
            *inputs, empty if chunks else y, *state, *anchor, *(chunks or (empty,) * len(state)),
            T, k.shape[1] - T, c0, nc, NCT, *_scalars(c), STORE=chunks is not None, **consts,
        )  # fmt: skip

    return launch


def _ln_or_empty(q: Tensor, ln_w: Tensor | None, ln_b: Tensor | None) -> tuple[Tensor, Tensor]:
    empty = q.new_empty(0, dtype=torch.float32)
    return tuple(empty if t is None else t for t in (ln_w, ln_b))  # type: ignore[return-value]


def _run_forward(kernel, q, k, v, ln_w, ln_b, coefs: tuple, state: tuple, c: MuonConfig) -> tuple:
    """(y float32, the final state, the last chunk's start W1, W2, and the state at every checkpoint
    segment's start ``[NS, B, H, ...]``) of ``kernel`` from ``state`` (W1, W2, ...)."""
    w1, w2 = state[:2]
    NCT = coefs[0].shape[2]
    state = [t.float().clone(memory_format=torch.contiguous_format) for t in state]
    y = w1.new_empty(*q.shape[:3], w2.shape[-1])
    anchor = (w1.new_empty(w1.shape), w2.new_empty(w2.shape))
    consts = _constants(q, w1, w2, ln_w, c)
    launch = _launcher(kernel, (q, k, v, *_ln_or_empty(q, ln_w, ln_b), *coefs), y, anchor, c, consts, NCT)
    ckpts = []
    for c0, nc in spans(0, NCT, c.every):
        ckpts.append([t.clone() for t in state])
        launch(state, c0, nc)
    return (y, *state, *anchor, *(torch.stack(s) for s in zip(*ckpts)))


def _recompute(kernel, inputs: tuple, ckpts: tuple, c: MuonConfig, consts: dict, NCT: int):
    """The backward's recompute: :func:`_launcher` with the reads and anchors into scratch."""
    q, v = inputs[0], inputs[2]
    y_scratch = q.new_empty(*q.shape[:3], v.shape[-1], dtype=torch.float32)
    anchors = (torch.empty_like(ckpts[0][0]), torch.empty_like(ckpts[1][0]))
    return _launcher(kernel, inputs, y_scratch, anchors, c, consts, NCT)


def run_forward(q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef, w1, w2, s1, s2, o1, o2, c: MuonConfig):
    """(y float32, the final W1, W2, S1, S2, O1, O2, the last chunk's start W1, W2, and the state at
    every checkpoint segment's start ``[NS, B, H, ...]``)."""
    coefs, state = (beta, dc, lc, m_end, s_coef), (w1, w2, s1, s2, o1, o2)
    return _run_forward(_muon_forward_kernel, q, k, v, ln_w, ln_b, coefs, state, c)


def run_backward(
    q, k, v, ln_w, ln_b, beta, dc, lc, m_end, s_coef, w1, w2, s1, s2, o1, o2, *rest, c: MuonConfig
) -> list[Tensor]:  # fmt: skip
    """Gradients of :func:`run_forward`'s inputs from its checkpoints (``rest[:6]``) and the cotangents
    (``rest[6:]``: y, the six final state tensors, the two anchors)."""
    ckpts = rest[:6]
    B, T, H = q.shape[:3]
    NCT, D = beta.shape[2], v.shape[-1]
    consts = _constants(q, w1, w2, ln_w, c)
    dy, dstate, danchor, dq, dk, dv = _backward_buffers(q, v, NCT, rest[6:], c)
    dbeta, ddc, dlc = (torch.empty_like(beta) for _ in range(3))
    dm, ds = torch.empty_like(m_end), torch.empty_like(s_coef)
    dln = q.new_zeros(2, B * H, D, dtype=torch.float32)
    xs = q.new_empty(B * H, c.ns_steps + 1, *w1.shape[-2:], dtype=torch.float32)
    dxs = q.new_empty(B * H, *w1.shape[-2:], dtype=torch.float32)
    inputs = (q, k, v, *_ln_or_empty(q, ln_w, ln_b), beta, dc, lc, m_end, s_coef)

    def backward(c0: int, nc: int, chunks: list[Tensor]) -> None:
        _muon_backward_kernel[(B * H,)](
            *inputs, dy, *chunks, xs, dxs, *dstate, *danchor,
            dq, dk, dv, dbeta, ddc, dlc, dm, ds, dln[0], dln[1],
            T, k.shape[1] - T, c0, nc, NCT, *_scalars(c), **consts,
        )  # fmt: skip

    walk_segments(ckpts, NCT, c, _recompute(_muon_forward_kernel, inputs, ckpts, c, consts, NCT), backward)
    return [*_input_grads(q, k, v, ln_w, dq, dk, dv, dln, c), dbeta, ddc, dlc, dm, ds, *dstate]


def _backward_buffers(q, v, NCT: int, cotangents: tuple, c: MuonConfig) -> tuple:
    """What both backwards start from: dy, the state's cotangents (copies, updated in place) and the
    anchors', and zeroed dq and the per-chunk key rows' dk, dv ``[B, H, NCT, P + L, ·]``, float32."""
    dy, *d_state = cotangents
    B, _, H = q.shape[:3]
    rows = c.prefix + c.chunk
    return (
        dy.float().contiguous(),
        [d.float().clone(memory_format=torch.contiguous_format) for d in d_state[:-2]],
        [d.float().contiguous() for d in d_state[-2:]],
        q.new_zeros(q.shape, dtype=torch.float32),
        q.new_zeros(B, H, NCT, rows, q.shape[3], dtype=torch.float32),
        q.new_zeros(B, H, NCT, rows, v.shape[-1], dtype=torch.float32),
    )


def walk_segments(ckpts, NCT: int, c: MuonConfig, forward, backward) -> None:
    """The backward's walk over checkpoint segments in reverse: each segment's inner checkpoints from its
    stored start (``forward(state, c0, nc, None)`` advances ``state`` in place), then each inner segment in
    reverse, its chunks' start states stored (``forward(state, c0, nc, chunks)``) and walked back
    (``backward(c0, nc, chunks)``)."""
    for n, (s0, ns0) in reversed(list(enumerate(spans(0, NCT, c.every)))):
        state, starts = [t[n].clone() for t in ckpts], []
        for c0, nc in spans(s0, ns0, c.inner):
            starts.append([t.clone() for t in state])
            if c0 + nc < s0 + ns0:  # the last inner segment's start is its STORE pass's
                forward(state, c0, nc, None)
        for (c0, nc), state in reversed(list(zip(spans(s0, ns0, c.inner), starts))):
            chunks = [t.new_empty(t.shape[0], t.shape[1], nc, *t.shape[2:]) for t in state]
            forward(state, c0, nc, chunks)
            backward(c0, nc, chunks)


def _input_grads(q, k, v, ln_w, dq, dk, dv, dln, c: MuonConfig) -> list[Tensor]:
    """dq, dk, dv (the per-chunk key rows folded) and the LayerNorm's (empty without it) in the inputs'
    dtypes."""
    B, T, H = q.shape[:3]
    D = v.shape[-1]
    if c.residual:  # M(φ(k)) = k + …: R = K[:, :D] + … − V
        dk[..., :D] -= dv
    dk_, dv_ = (_fold(x, k.shape[1], T, c.chunk, c.prefix) for x in (dk, dv))
    dln_w, dln_b = q.new_empty(0, dtype=torch.float32), q.new_empty(0, dtype=torch.float32)  # no aliasing
    if ln_w is not None:
        dln_w, dln_b = (x.view(B, H, D).sum(0) for x in dln)
    return [dq.to(q.dtype), dk_.to(k.dtype), dv_.to(v.dtype), dln_w, dln_b]


def _fold(x: Tensor, rows: int, T: int, L: int, P: int) -> Tensor:
    """Sum the per-chunk key-row gradients ``[B, H, NCT, P + L, W]`` into ``[B, rows, H, W]`` (row g·L + e
    of the carried-and-sequence rows for chunk g's row e; the window's rows overlap)."""
    B, H, NCT, R, W = x.shape
    P0 = rows - T
    idx = P0 + torch.arange(NCT, device=x.device)[:, None] * L - P + torch.arange(R, device=x.device)[None, :]
    valid = (idx >= 0) & (idx < rows)
    out = x.new_zeros(B, H, rows, W)
    out.index_add_(2, idx[valid], x[:, :, valid])
    return out.transpose(1, 2).contiguous()


def run_token_forward(q, k, v, ln_w, ln_b, beta, keep, lr, mom, qm, w1, w2, s1, s2, c: MuonConfig):
    """(y float32, the final W1, W2, S1, S2, the last chunk's start W1, W2, and the state at every
    checkpoint segment's start ``[NS, B, H, ...]``) of the per-token kernel."""
    coefs, state = (beta, keep, lr, mom, qm), (w1, w2, s1, s2)
    return _run_forward(_token_muon_forward_kernel, q, k, v, ln_w, ln_b, coefs, state, c)


def run_token_backward(
    q, k, v, ln_w, ln_b, beta, keep, lr, mom, qm, w1, w2, s1, s2, *rest, c: MuonConfig
) -> list[Tensor]:  # fmt: skip
    """Gradients of :func:`run_token_forward`'s inputs from its checkpoints (``rest[:4]``) and the
    cotangents (``rest[4:]``: y, the four final state tensors, the two anchors)."""
    ckpts = rest[:4]
    B, T, H = q.shape[:3]
    NCT, D, L = beta.shape[2], v.shape[-1], c.chunk
    consts = _constants(q, w1, w2, ln_w, c)
    dy, dstate, danchor, dq, dk, dv = _backward_buffers(q, v, NCT, rest[4:], c)
    dbeta, dkeep, dlr, dmom = (torch.empty_like(beta) for _ in range(4))
    dqm = torch.empty_like(qm)
    dln = q.new_zeros(2, B * H, D, dtype=torch.float32)
    BHB, BK, BD = consts["BHB"], consts["BK"], consts["BD"]
    # per program: every token's N_t and Z_t, then the Newton–Schulz iterates of one token's layer 1
    per_token, iterate = BHB * BHB + BK * BHB + BHB * BD, BHB * BHB + BK * BHB
    scr = q.new_empty(B * H, L * 2 * per_token + c.ns_steps * iterate, dtype=torch.float32)
    inputs = (q, k, v, *_ln_or_empty(q, ln_w, ln_b), beta, keep, lr, mom, qm)

    def backward(c0: int, nc: int, chunks: list[Tensor]) -> None:
        _token_muon_backward_kernel[(B * H,)](
            *inputs, dy, *chunks, scr, *dstate, *danchor,
            dq, dk, dv, dbeta, dkeep, dlr, dmom, dqm, dln[0], dln[1],
            T, k.shape[1] - T, c0, nc, NCT, *_scalars(c), **consts,
        )  # fmt: skip

    forward = _recompute(_token_muon_forward_kernel, inputs, ckpts, c, consts, NCT)
    walk_segments(ckpts, NCT, c, forward, backward)
    return [*_input_grads(q, k, v, ln_w, dq, dk, dv, dln, c), dbeta, dkeep, dlr, dmom, dqm, *dstate]


def _split(inputs: tuple, n_tensors: int) -> tuple[tuple, MuonConfig]:
    return inputs[:n_tensors], MuonConfig(*inputs[n_tensors:])


def _register(name: str, inputs: str, state: tuple[str, ...], forward, backward):
    """The pair of custom ops ``memnets::{name}_fwd`` / ``_bwd`` over ``forward`` (returns y, the final
    ``state`` tensors, the two anchors and the checkpoints of ``state``) and ``backward`` (the gradients of
    the ``inputs``), their fake implementations and the autograd registration. The state tensors are the
    last inputs; the inputs' 4th and 5th are the optional LayerNorm parameters."""
    n_in, n = inputs.count("Tensor"), len(state)
    first = n_in - n  # the state's first input
    checkpoints = ", ".join(f"Tensor ckpt_{s}" for s in state)
    cotangents = ", ".join(f"Tensor d{s}" for s in ("y", *state, "a1", "a2"))
    outputs = "(" + ", ".join(["Tensor"] * (3 + 2 * n)) + ")"

    def fwd_impl(*args) -> tuple[Tensor, ...]:
        tensors, config = _split(args, n_in)
        return forward(*tensors, config)

    def bwd_impl(*args) -> list[Tensor]:
        tensors, config = _split(args, n_in + n + n + 3)
        return backward(*tensors, c=config)

    fwd_op = torch.library.custom_op(
        f"memnets::{name}_fwd", fwd_impl, mutates_args=(), schema=op_schema(inputs, outputs, MuonConfig)
    )
    bwd_op = torch.library.custom_op(
        f"memnets::{name}_bwd",
        bwd_impl,
        mutates_args=(),
        schema=op_schema(f"{inputs}, {checkpoints}, {cotangents}", "Tensor[]", MuonConfig),
    )

    @fwd_op.register_fake
    def _(*args):
        tensors, config = _split(args, n_in)
        q, v, beta, st = tensors[0], tensors[2], tensors[5], tensors[first:]
        ns = len(spans(0, beta.shape[2], config.every))
        y = st[0].new_empty(*q.shape[:3], v.shape[-1])
        return (
            y, *(torch.empty_like(t) for t in st), *(torch.empty_like(t) for t in st[:2]),
            *(t.new_empty(ns, *t.shape) for t in st),
        )  # fmt: skip

    @bwd_op.register_fake
    def _(*args):
        q = args[0]
        return [
            q.new_empty(0, dtype=torch.float32) if t is None else torch.empty_like(t) for t in args[:n_in]
        ]

    def setup_context(ctx, inputs, output) -> None:
        tensors, ctx.config = _split(inputs, n_in)
        ctx.has_ln = tensors[3] is not None
        ctx.save_for_backward(*tensors, *output[3 + n :])

    def grads(ctx, *cots) -> tuple:
        saved = ctx.saved_tensors
        tensors, ckpts = saved[:n_in], saved[n_in:]
        likes = (
            tensors[0].new_empty(*tensors[0].shape[:3], tensors[2].shape[-1]),
            *tensors[first:],
            *tensors[first : first + 2],
        )
        cots = [
            torch.zeros_like(like) if c is None else c.contiguous() for c, like in zip(cots[: n + 3], likes)
        ]
        out = bwd_op(*tensors, *ckpts, *cots, *ctx.config)
        if not ctx.has_ln:
            out[3] = out[4] = None
        return *out, *(None,) * len(ctx.config)

    torch.library.register_autograd(f"memnets::{name}_fwd", grads, setup_context=setup_context)
    return fwd_op, bwd_op


# q [B, T, H, Dk], k [B, P0 + T, H, Dk], v [B, P0 + T, H, D]; ln_w, ln_b [H, D]; the state float32: w1, s1(,
# o1) [B, H, Dk, Dh], w2, s2(, o2) [B, H, Dh, D]. The coefficients of chunks of L tokens, float32: per chunk
# beta, dc, lc [B, H, NC, L], m_end [B, H, NC], s_coef [B, H, NC, P + L]; per token beta, keep, lr, mom
# [B, H, NC, L], qm [B, H, NC, L, P + L]
muon_memory_fwd, muon_memory_bwd = _register(
    "muon_memory",
    "Tensor q, Tensor k, Tensor v, Tensor? ln_w, Tensor? ln_b, Tensor beta, Tensor dc, Tensor lc, "
    "Tensor m_end, Tensor s_coef, Tensor w1, Tensor w2, Tensor s1, Tensor s2, Tensor o1, Tensor o2",
    ("w1", "w2", "s1", "s2", "o1", "o2"),
    run_forward,
    run_backward,
)
token_muon_memory_fwd, token_muon_memory_bwd = _register(
    "token_muon_memory",
    "Tensor q, Tensor k, Tensor v, Tensor? ln_w, Tensor? ln_b, Tensor beta, Tensor keep, Tensor lr, "
    "Tensor mom, Tensor qm, Tensor w1, Tensor w2, Tensor s1, Tensor s2",
    ("w1", "w2", "s1", "s2"),
    run_token_forward,
    run_token_backward,
)
