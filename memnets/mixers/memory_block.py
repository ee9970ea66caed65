"""Pieces the memory mixers (``titans``, ``moneta``/``yaad``/``memora``, ``omeganet``/``atlas``,
``tnt``) share: the q/k/v input block, the step-size/momentum/retention gates, their low-rank
projection and the ``gates`` option, the forward around one memory op (:class:`MemoryBlock`), running
packed sequences one at a time (mixers whose pieces are not all per-token: MAC's segments, TNT's
shards) and the kernels' matmul operand option.

``gates``: ``"head"`` (default) gives every gate (step size, momentum, retention) one scalar per token
and head; ``"channel"`` one value per token, head and unit of the memory: each output unit of every
weight matrix of the memory network (:func:`~memnets.memory.gate_units`) gets its own step size,
momentum and retention for its incoming weights. For the linear memory these are exactly Titans'
channel-wise gates diag(1 − α_t), diag(η_t), diag(θ_t) (arXiv 2501.00663 App. C) and Miras'
η_t, α_t ∈ R^d (arXiv 2504.13173 §5.4); for an MLP memory the same rule applied to each layer is the
one choice that treats every layer alike (the papers do not say which axis a "channel" of a hidden
layer is). Channel gates come from a low-rank projection x → R^``gate_rank`` → R^{H·N} per gate
(Miras §5.4, following RWKV-7; rank "usually 32 or 64", default 32), squashed as the scalar gates.
No Triton kernel takes them: ``auto`` runs the chunked PyTorch form (compiled on CUDA) and says why.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..dispatch import MemoryDispatch, log_once
from ..memory import MemoryMLP, gate_units
from ..modules import GatedRMSNorm, ShortConv, l2norm
from .base import OneTokenStep, check_cu_seqlens, last_sequence_conv


def check_packed(owner: str, x: Tensor, cu_seqlens: Tensor | None, state: object) -> None:
    """Packed sequences (if any) are well formed and start from a fresh state."""
    check_cu_seqlens(owner, x, cu_seqlens)
    if cu_seqlens is not None and state is not None:
        raise ValueError(f"{owner}: cu_seqlens cannot be combined with a recurrent state")


def run_packed_one_by_one(
    mixer: nn.Module, x: Tensor, cu_seqlens: Tensor, state: object
) -> tuple[Tensor, object]:
    """Run packed sequences one by one from a fresh state (the memory restarts per sequence)."""
    check_packed(type(mixer).__name__, x, cu_seqlens, state)
    bounds = cu_seqlens.tolist()
    ys, last = [], None
    for s, e in itertools.pairwise(bounds):
        y, last = mixer(x[:, s:e])
        ys.append(y)
    return torch.cat(ys, 1), last


GateLayout = Literal["head", "channel"]
GATE_LAYOUTS: tuple[str, ...] = ("head", "channel")


def gate_width(owner: str, gates: str, gate_rank: int, arch: MemoryMLP) -> int:
    """Entries per token and head of a step-size/momentum/retention gate: 1 for ``gates="head"``, the
    memory's units for ``"channel"`` (module docstring); checks the options."""
    if gates not in GATE_LAYOUTS:
        raise ValueError(f"{owner}: gates={gates!r} is not one of {list(GATE_LAYOUTS)}")
    if gate_rank < 1:
        raise ValueError(f"{owner}: gate_rank must be >= 1, got {gate_rank}")
    return 1 if gates == "head" else sum(gate_units(arch))


class LowRankGates(nn.Module):
    """Per-token gates from one low-rank projection x → R^rank → R^{H·width} per gate (Miras
    arXiv 2504.13173 §5.4). ``gates``: name → (width, initial bias). Raw (pre-squashing) values in
    float32, or the input's wider dtype (float64 models stay exact)."""

    def __init__(self, d_model: int, num_heads: int, rank: int, gates: dict[str, tuple[int, float]]) -> None:
        super().__init__()
        self.num_heads, self.gates = num_heads, gates
        total = sum(width for width, _ in gates.values()) * num_heads
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Linear(rank, total)
        with torch.no_grad():
            self.up.weight.normal_(std=0.1 * rank**-0.5)
            self.up.bias.copy_(
                torch.cat([torch.full((w * num_heads,), b) for w, b in gates.values()]).to(self.up.bias)
            )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Raw gates: ``[B, T, H]`` for width 1, else ``[B, T, H, width]``."""
        B, T, _ = x.shape
        raw = self.up(self.down(x)).to(torch.promote_types(x.dtype, torch.float32))
        out, i = {}, 0
        for name, (width, _) in self.gates.items():
            g = raw[..., i : i + width * self.num_heads].view(B, T, self.num_heads, width)
            out[name] = g[..., 0] if width == 1 else g
            i += width * self.num_heads
        return out


# initial gate biases (the papers make the gates functions of x_t but give no parameterisation; our
# choice): lr = lr_max/2, mom = sigmoid(2.2) ≈ 0.9, keep = sigmoid(4.6) ≈ 0.99
GATE_INIT = {"lr": 0.0, "mom": 2.2, "keep": 4.6}


def gate_projection(
    d_model: int, num_heads: int, gates: dict[str, tuple[int, float]], rank: int | None
) -> nn.Module:
    """The projection behind named per-token gates (name → (entries per head, initial bias)): with
    ``rank`` a :class:`LowRankGates`; without, one linear map of x laid out name by name, each
    ``[entries, H]``, its weights drawn small so that every gate starts near its bias."""
    if rank is not None:
        return LowRankGates(d_model, num_heads, rank, gates)
    proj = nn.Linear(d_model, sum(width for width, _ in gates.values()) * num_heads)
    bias = [b for width, b in gates.values() for _ in range(width)]
    with torch.no_grad():
        proj.weight.normal_(std=0.1 * d_model**-0.5)
        proj.bias.copy_(torch.tensor(bias).repeat_interleave(num_heads))
    return proj


class StepGates(nn.Module):
    """Per-token gates of a memory's update: lr = lr_max·sigmoid(·) (step size; Titans θ_t, ATLAS η_t),
    mom = sigmoid(·) (momentum, with ``momentum``), keep = sigmoid(·) (retention 1 − α_t, with
    ``forget``). ``width`` 1: one scalar per head from a linear map of x; else ``width`` values per head
    (the memory's units, ``gates: channel``) from a rank-``rank`` projection. Computed in at least
    float32 (float64 models stay float64, so decoding matches the parallel forward to float64
    precision). ``extra`` gates (name → (entries per head, initial bias)) share the projection; a
    subclass that adds them reads them in its own ``forward``."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        lr_max: float,
        momentum: bool,
        forget: bool,
        width: int = 1,
        rank: int = 32,
        extra: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.lr_max, self.momentum, self.forget = num_heads, lr_max, momentum, forget
        self.names = ("lr",) + (("mom",) if momentum else ()) + (("keep",) if forget else ())
        self.extra = extra or {}
        gates = {n: (width, GATE_INIT[n]) for n in self.names} | self.extra
        self.proj = gate_projection(d_model, num_heads, gates, rank if width > 1 else None)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        if isinstance(self.proj, LowRankGates):
            raw = self.proj(x)
        else:
            B, T, _ = x.shape
            per_head = self.proj(x).to(torch.promote_types(x.dtype, torch.float32))
            raw = dict(zip(self.names, per_head.view(B, T, len(self.names), self.num_heads).unbind(2)))
        return {
            "lr": self.lr_max * torch.sigmoid(raw["lr"]),
            "mom": torch.sigmoid(raw["mom"]) if self.momentum else None,
            "keep": torch.sigmoid(raw["keep"]) if self.forget else None,
        }


class MemoryProjections(nn.Module):
    """x → per-head q, k, v (Linear → causal depthwise conv → SiLU; l2-norm on q and k)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        conv_size: int,
        names: tuple[str, ...] = ("q", "k", "v"),
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.names = num_heads, head_dim, names
        inner = num_heads * head_dim
        self.proj = nn.ModuleDict({n: nn.Linear(d_model, inner, bias=False) for n in names})
        self.conv = nn.ModuleDict({n: ShortConv(inner, conv_size) for n in names})

    def forward(
        self, x: Tensor, conv_state: dict[str, Tensor] | None, cu_seqlens: Tensor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``q, k, v [B, T, H, D]`` and the conv states (with ``cu_seqlens``: the last sequence's)."""
        B, T, _ = x.shape
        conv_state = conv_state or {}
        out, new_conv = {}, {}
        for n in self.names:
            h, new_conv[n] = self.conv[n](self.proj[n](x), conv_state.get(n), cu_seqlens)
            h = h.view(B, T, self.num_heads, self.head_dim)
            out[n] = l2norm(h) if n in ("q", "k") else h
        return out, new_conv if cu_seqlens is None else last_sequence_conv(new_conv, cu_seqlens)

    def state_size(self) -> int:
        return sum((c.kernel_size - 1) * c.weight.shape[0] for c in self.conv.values())


class GatedOutput(nn.Module):
    """The memory mixers' output: ``out(GatedRMSNorm(y, gate(x)))`` per head. Subclasses call
    :meth:`init_output` in ``__init__`` (the parameters keep the names ``gate``, ``norm``, ``out``)."""

    def init_output(self, d_model: int, num_heads: int, head_dim: int) -> None:
        self.gate = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.norm = GatedRMSNorm(head_dim)
        self.out = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def output(self, y: Tensor, x: Tensor) -> Tensor:
        """``y [B, T, H, D]`` (the memory's read) gated by the block input ``x [B, T, d_model]``."""
        B, T, H, D = y.shape
        return self.out(self.norm(y, self.gate(x).view(B, T, H, D)).reshape(B, T, H * D))


@dataclass
class MemoryBlockState:
    """A :class:`MemoryBlock`'s state: the q/k/v short-conv histories and its memory op's state."""

    conv: dict[str, Tensor]
    memory: Any


def check_grad_horizon(
    owner: str, grad_horizon: int | None, unit: int, unit_name: str = "chunk_size"
) -> None:
    """``grad_horizon`` is ``None`` or a positive multiple of ``unit`` (the option ``unit_name``: the
    chunk size, or MAC's segment size), so pieces start where the memory's steps do and the forward is
    the same with or without it."""
    if grad_horizon is not None and (grad_horizon < 1 or grad_horizon % unit):
        raise ValueError(
            f"{owner}: grad_horizon={grad_horizon} must be None or a positive multiple of {unit_name}={unit}"
        )


def announce_horizon(owner: str, horizon: int) -> None:
    """Say once in the log that ``owner`` cuts the outer gradient every ``horizon`` tokens."""
    log_once("%s: the outer gradient stops every %d tokens of the memory (grad_horizon)", owner, horizon)


class MemoryBlock(GatedOutput, OneTokenStep):
    """The forward that ``titans``, the Miras mixers and the Omega mixers share: q/k/v inputs, one
    memory op fed by :meth:`memory_args`, gated output. Subclasses set ``name``, ``backend``,
    ``inputs`` (:class:`MemoryProjections`) and ``op`` and call :meth:`init_output`.

    ``grad_horizon`` (the mixers' option, tokens, a multiple of the chunk size; default ``None``):
    under autograd a longer sequence runs through the memory op in pieces of that many tokens, each
    starting from the previous piece's final state *detached*, so the outer gradient follows the
    memory's recurrence back at most that far (truncated backpropagation through time; Transformer-XL,
    arXiv 1901.02860 §3.2, stops gradients into its cached segment the same way). The forward, the
    state and decoding are unchanged. Why a deep memory may need it: its inner loop amplifies a change
    of its state by orders of magnitude over thousands of tokens, so the exact gradient at T = 4096
    can be 1e6-1e29 times the one at T = 512 (benchmarks/RESULTS.md section 24). Each layer cuts its
    own recurrence: the next layer's short convolution still reaches 3 tokens back across a cut, so in
    a stack a gradient can cross at most one cut per layer (section 55 measured what that adds)."""

    name: str
    backend: str
    inputs: MemoryProjections
    op: MemoryDispatch
    grad_horizon: int | None = None

    def memory_args(self, x: Tensor, qkv: dict[str, Tensor]) -> tuple[list[Tensor | None], dict[str, Any]]:
        """The op's inputs before the state (queries, keys, values, gates) and its extra keywords."""
        raise NotImplementedError

    def forward(
        self, x: Tensor, state: MemoryBlockState | None = None, cu_seqlens: Tensor | None = None
    ) -> tuple[Tensor, MemoryBlockState]:
        check_packed(self.name, x, cu_seqlens, state)
        qkv, conv = self.inputs(x, None if state is None else state.conv, cu_seqlens)
        args, options = self.memory_args(x, qkv)
        prev = None if state is None else state.memory
        horizon = self.grad_horizon
        if horizon is None or x.shape[1] <= horizon or not torch.is_grad_enabled():
            y, mem = self.op(self.backend, *args, prev, cu_seqlens=cu_seqlens, **options)
        elif cu_seqlens is not None:
            raise ValueError(
                f"{self.name}: grad_horizon={horizon} does not apply to packed sequences (cu_seqlens)"
            )
        else:
            y, mem = self._truncated(args, options, prev, horizon)
        return self.output(y, x), MemoryBlockState(conv, mem)

    def _truncated(
        self, args: list[Tensor | None], options: dict[str, Any], prev: Any, horizon: int
    ) -> tuple[Tensor, Any]:
        """The memory op over pieces of ``horizon`` tokens, each from the previous one's state detached
        (the per-token inputs, ``[B, T, ...]``, are sliced; everything else is passed as it is)."""
        B, T = args[0].shape[:2]  # type: ignore[union-attr]
        announce_horizon(self.name, horizon)

        def piece(t: Any, span: slice) -> Any:
            return t[:, span] if isinstance(t, Tensor) and t.shape[:2] == (B, T) else t

        ys, mem = [], prev
        for start in range(0, T, horizon):
            span = slice(start, start + horizon)
            start_state = mem.detach() if start and mem is not None else mem
            y, mem = self.op(
                self.backend,
                *(piece(a, span) for a in args),
                start_state,
                **{k: piece(v, span) for k, v in options.items()},
            )
            ys.append(y)
        return torch.cat(ys, 1), mem


# operands of the MLP memory kernels' matmuls (memnets.memory.kernel_bridge.DOT_PRECISIONS, which a
# test keeps equal): float32, TF32 or half operands (float32 accumulation, as fla's kernels) trade
# accuracy for tensor-core rate; "auto" (the mixers' default) follows the inputs' dtype or autocast's
DOT_PRECISIONS = ("tf32x3", "tf32", "float16", "bfloat16")


def check_dot_precision(owner: str, dot_precision: str, arch: MemoryMLP) -> None:
    """``dot_precision`` is "auto" or one of ``DOT_PRECISIONS``, and not a named mode where no kernel
    reads it (the memory kernels cover depths 1 and 2)."""
    if dot_precision != "auto" and dot_precision not in DOT_PRECISIONS:
        allowed = ["auto", *DOT_PRECISIONS]
        raise ValueError(f"{owner}: dot_precision={dot_precision!r} is not one of {allowed}")
    if dot_precision not in ("auto", "tf32x3") and arch.depth > 2:
        raise ValueError(
            f"{owner}: dot_precision={dot_precision!r} needs memory.depth 1 or 2 (the memory kernels); "
            f"memory.depth {arch.depth} runs the PyTorch engine"
        )
