"""Miras (Behrouz, Razaviyayn, Zhong, Mirrokni, "It's All Connected", arXiv 2504.13173 v1): Moneta,
Yaad and Memora as compositions of the shared memory engine. Sections and equations below are the paper's.

Registered mixers (update rules Miras §5.3, Eq. 24–27; neutral names: ``lr`` = η_t, ``keep`` = α_t
(the retention multiplier on the old memory), ``delta`` = δ_t; r = M(k_t) − v_t)::

    moneta:  A_t = keep_t A_{t−1} − lr_t ∇ℓ_p(W_ref; k_t, v_t),  W_t = A_t/‖A_t‖_q^{q−2}    (Eq. 24-25)
    yaad:    W_t = keep_t W_{t−1} − lr_t ∇[‖r‖² if ‖r‖₂ ≤ δ_t else 2δ_t‖r‖₁](W_ref)            (Eq. 26)
    memora:  W_t = Softmax(keep_t log W_{t−1} − lr_t ∇‖r‖²(W_ref))                          (Eq. 27)

all plain gradient descent (no momentum) by default, W_ref = the weights at the start of the token's chunk
(``chunk_size``; 1 = exact online), and token t reads y_t = M(q_t; W_t) after its own write. The
biases and retention maps live in :mod:`memnets.memory.miras`; its docstring explains the chunked
semantics, Memora's lag token and the ℓ_p/Huber smoothing.

Block (§5.4, Fig. 2): q/k/v projections → depthwise causal conv (``conv_size`` 4) → SiLU, l2-norm of
q and k per head; gates from low-rank projections x → R^``gate_rank`` → R^H (RWKV-7 style, rank "32
or 64"); memory M(x) = x + LN(W₁ σ(W₂ x)) (2 layers, expansion 4, GELU, per-head outer LayerNorm
affine, learnable initial weights; Memora without the LayerNorm by default, below); output RMSNorm
gated by a linear layer, then the output projection. ``lr = lr_max·sigmoid(·)`` (init ``lr_max``/2, or
``lr_init``: the cap and the starting step set apart), ``keep = sigmoid(·)`` (init ≈ 0.99), ``delta =
softplus(·)`` (init ``delta_init``: 2√d for the norm switch, 1 per channel for the coordinate form).

``momentum`` (default off, the paper's plain descent) puts the step through momentum first, the
Titans rule (arXiv 2501.00663 Eq. 13-14) on the accumulator: S_t = mom_t S_{t−1} − lr_t ∇ℓ(W_ref),
A_t = keep_t A_{t−1} + S_t, then W_t = φ(A_t) as above (Memora: A the logits), with ``mom`` =
sigmoid(·) starting at ≈ 0.9. Miras §3 lists "GD with momentum" among the memory learning
algorithms its framework composes (Titans is that choice with the ℓ2 bias and L2 retention); §5
builds its three models with plain GD. With identity retention (Yaad; Moneta ``normalize="none"``)
the rule is exactly Titans' and runs in the same kernel.

Choices where the paper is silent or ambiguous (§5.3–5.4 leave open the gates' channel axis, the norm
Moneta applies to an MLP, Yaad's δ shape, Memora's softmax axis and scale):

* ``gates``: ``"head"`` (default) gives η_t and α_t one scalar per head, multiplying whole fast-weight
  matrices; ``"channel"`` gives them the channel-wise form of §5.4, η_t, α_t ∈ R^d, as one value per
  output unit of every weight matrix of the memory (the paper does not say which axis of which layer
  of an MLP memory a "channel" is; this choice gates each unit's incoming weights alike at every
  layer, and is the paper's R^d for a linear memory; :mod:`memnets.mixers.memory_block`). For Memora
  an output unit's weights are one simplex (softmax over its inputs), so each simplex gets its own
  η_t, α_t; Moneta's ℓ_q map still normalises whole matrices. Both layouts keep the paper's low-rank
  form. Yaad's δ_t is a scalar per token and head for the switch of Eq. 26
  (which compares the scalar ‖r‖₂) under either layout; ``huber="coord"`` gives the coordinate-wise
  Huber of Eq. 14 with a channel-wise δ_t ∈ R^d (over the residual's channels).
* Loss scale: no ½ anywhere (Titans Eq. 12 convention, absorbed by ``lr``); Yaad's ℓ1 branch is
  2δ_t‖r‖₁ so that it continues ‖r‖² like 2·Huber. Smooth Sign ≈ tanh(``sign_sharpness``·x) (Remark 5;
  α unspecified, default 10) in Yaad's norm form; Moneta's |x|^p ≈ (x² + ε)^{p/2}, ε = 1e-6 (§5.4).
* Moneta's normalisation is per weight matrix and head (entrywise ℓ_q). Taken literally (Eq. 24,
  ``normalize="paper"``) W = A/‖A‖_q^{q−2} has ‖W‖₄ = 1/‖A‖₄ at q = 4: the accumulator grows with every
  write, so the weights shrink toward 0, and retention keep < 1 inflates them instead of forgetting.
  ``normalize="unit"`` is the stabilised variant W = A/‖A‖_q (scale-free: the unit L_q sphere);
  ``"none"`` is plain L2 retention (weight decay). Default ``"paper"``, chosen by MQAR runs
  (``benchmarks/RESULTS.md`` section 7, "Miras runs"): the literal rule learned faster in both (with the
  LayerNorm inside the memory the last layer's scale does not matter). The literal map is unstable:
  with extreme gates (keep ≈ 0 collapses the accumulator, and W = A/‖A‖₄² grows without limit) the bf16
  stress test at T = 4096 (``tests/test_miras.py``) went non-finite without a floor.
  ``norm_floor`` (default 0.1; 0 = Eq. 24 exactly) stabilises it:
  W = A/max(‖A‖_q, floor)^{q−2}, which changes nothing while ‖A‖_q >= 0.1 (the initial accumulator has
  ‖A‖₄ ≈ 1.9 and 0.9 for the two layers at head dim 32, hidden 128) and bounds ‖W‖₄ by 1/floor at q = 4,
  and the stress test stays finite. On MQAR the floored run is identical to the unfloored one (the floor
  never acts in training). The unit map needs no floor.
* ``normalize_at``: ``"token"`` (default) applies the map to every token's accumulator (Eq. 24, exact
  at any chunk size); ``"chunk_end"`` is the paper's parallel form (§5.3: the normalisation is applied
  "at the end of each chunk", reads inside a chunk see the linear accumulation), where the chunk size
  becomes part of the model and chunk size 1 is projected online descent
  (:class:`~memnets.memory.miras.ChunkEnd`).
* Memora: softmax over each output unit's incoming weights (the rows of W in the paper's column
  form), every layer constrained, scale c = ``simplex_scale`` (1); the state carries the logits
  (Eq. 27 is exactly linear in them, see :mod:`memnets.memory.miras`), initialised from the learnable
  initial weights. ``lag_token`` (default on) is the paper's lag token. ``lr_max`` defaults to 0.1
  for Memora (1.0 for Moneta and Yaad): at 1.0 the logit steps saturate the softmax, the first outer
  gradients on MQAR (embedding and key projection) are far larger and MQAR accuracy stays at chance;
  at 0.1 it rises above chance (RESULTS.md section 7, "Miras runs"). Memora's memory has no output
  LayerNorm by default (``memory: {norm: false}``, :class:`SimplexMemorySpec`; ``norm: true`` is
  §5.3's x + LN(W₁ σ(W₂ x))): each output unit is a convex combination of its inputs (times c), so
  the simplex already bounds the output's scale, and at initialisation the near-uniform softmax rows
  make every unit compute almost the same average, a pre-LayerNorm spread across channels of about
  10⁻⁵, far below the LayerNorm's √ε ≈ 3·10⁻³. The LayerNorm then scales its input by about 1/√ε
  (≈ 300) and its backward the inner gradients alike: on text the outer gradient norm ran at 44
  (median) to 623, the clip at 1.0 acting on most steps, and Memora stayed near the unigram level;
  without it the norm stays near 1 and Memora trains like the other families (RESULTS.md section 36).
* Packed sequences (``cu_seqlens``) run in one kernel call on ``triton`` (Yaad, Moneta with
  ``normalize="none"``; each sequence from a fresh state), else sequence by sequence; the state
  returned is the last sequence's.
* Backends: ``chunked`` (:func:`~memnets.memory.miras.miras_chunked`), ``reference`` (token loop) and
  ``triton`` (:mod:`memnets.kernels.mlp_memory`) where the retention is the identity: Yaad
  (both Huber forms) and Moneta with ``normalize="none"``, on a depth-2 memory (head_dim <= 128; see
  :mod:`memnets.kernels.mlp_memory` for the chunk sizes and shared-memory limits); Moneta's L_q
  maps (per token and at chunk ends, :mod:`memnets.kernels.mlp_memory.end_map`) and Memora's softmax
  with its lag token (:mod:`memnets.kernels.mlp_memory.simplex`) where the state fits the whole-state
  kernels; at the 340M/760M head dims, whose states need the wide-state kernels, only the chunk-end
  map (``normalize_at: chunk_end``) has a kernel, under ``triton`` (``auto`` keeps the wide-state
  kernels for after a GPU check). ``gates:
  channel`` runs in PyTorch; asking for ``triton`` where no kernel applies raises, naming the reason;
  ``auto`` picks ``triton`` on CUDA where it applies. ``dot_precision`` sets the kernel's matmul
  operands as for ``titans``.

MQAR (``configs/mqar/{moneta,yaad,memora}.yaml``): Yaad learns recall; Moneta and Memora learn it far
more slowly on the same budget. For Moneta the cause is the literal map, not the ℓ_3 bias: with
‖W‖₄ = 1/‖A‖₄ the writes that grow the accumulator shrink the weights (one random sequence at
initialisation leaves 3% of their norm), while the same block with ``normalize="none"`` learns far faster.
Under the output LayerNorm the inner gradient then grows as 1/‖W‖ ∝ ‖A‖, so every write is the same
fraction of the accumulator whatever its size: the map stores pairs only for steps of about 1e-3 to
3e-3 and above them erases the memory's output within a sequence (``scripts/inner_recall.py``), which
is why ``configs/mqar/moneta.yaml`` caps ``lr_max`` at 0.004 (accuracy 0.03 → 0.32 at batch 32 and
3000 steps; at batch 64, the other families', 0.86 / 0.16 on two seeds in 1500 steps, and 0.94 / 0.47
with the accumulator's initial value and the LayerNorm out of weight decay, as that config sets: decay
that shrinks A_0 grows W_0 = A_0/‖A_0‖₄²; 0.9862 / 0.7927 at 3000 steps and chunk 16). At chunk 8 both
seeds pass 0.95 by step 1250 (0.9958 / 0.9910), which is what the config trains with: at chunk 16 the
queries right after the four pairs share their chunk, whose inner gradients are all taken at the chunk
start's weights, and seed 1 missed those queries most. Per-channel gates, other caps (also with
``lr_init`` keeping the start) and outer learning rates were slower. The mixer's default stays 1: on the tiny text budget 0.004 is
6.6% worse. For Memora the logit steps at ``lr_max`` 0.1 barely move the
near-uniform softmax rows (nor the reads: 0.3% of their size in one pass); with the LayerNorm larger
steps blew up the outer gradients, and without it (the default) they no longer do but recall still does
not start (``lr_max`` 1, ``simplex_scale`` 4 or 8): one pass of Eq. 27 stores no pairs at any step size,
``simplex_scale`` or initial sharpness (``memory: {init_std}``) tried. ``momentum`` helps neither.
Figures, settings and dates:
``benchmarks/RESULTS.md`` sections 7 ("Miras runs"), 34 (``scripts/memory_writes.py``), 36, 43-47.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dispatch import Backend, MemoryDispatch
from ..memory import AttentionalBias, L2Bias, MemorySpec
from ..memory.miras import (
    ChunkEnd,
    HuberBias,
    LpBias,
    LqNormalize,
    Retention,
    SimplexSoftmax,
)
from ..ops import MIRAS_MEMORY
from ..registry import register_mixer
from .base import takes_options
from .memory_block import (
    GATE_INIT,
    GateLayout,
    LowRankGates,
    MemoryBlock,
    MemoryProjections,
    check_dot_precision,
    check_grad_horizon,
    gate_width,
)


def _check_positive(owner: str, **positive: float) -> None:
    for name, value in positive.items():
        if value <= 0:
            raise ValueError(f"{owner}: {name} must be > 0, got {value}")


class MirasMemory(MemoryBlock):
    """The Miras block around one (bias, retention) memory; subclasses choose the pieces. Its keyword
    options are every variant's (:func:`~memnets.mixers.base.takes_options`)."""

    name = "miras"

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        bias: AttentionalBias,
        retention: Retention | None,
        lag: bool = False,
        extra_gates: dict[str, tuple[int, float]] | None = None,
        *,
        head_dim: int | None = None,
        chunk_size: int = 16,
        backend: Backend = "auto",
        memory: MemorySpec = MemorySpec(),
        lr_max: float = 1.0,
        lr_init: float | None = None,
        momentum: bool = False,
        gate_rank: int = 32,
        gates: GateLayout = "head",
        conv_size: int = 4,
        dot_precision: str = "auto",
        grad_horizon: int | None = None,
    ) -> None:
        super().__init__()
        head_dim = head_dim or d_model // num_heads
        check_grad_horizon(self.name, grad_horizon, chunk_size)
        self.grad_horizon = grad_horizon
        _check_positive(
            self.name,
            chunk_size=chunk_size,
            head_dim=head_dim,
            gate_rank=gate_rank,
            conv_size=conv_size,
            lr_max=lr_max,
        )
        self.num_heads, self.head_dim, self.chunk_size, self.backend = (
            num_heads,
            head_dim,
            chunk_size,
            backend,
        )
        self.bias, self.retention, self.lag = bias, retention, lag
        self.inputs = MemoryProjections(d_model, num_heads, head_dim, conv_size)
        self.memory = memory.build(num_heads, head_dim)
        width = gate_width(self.name, gates, gate_rank, self.memory)
        # lr starts at lr_max/2 (or lr_init), mom at sigmoid(2.2) ≈ 0.9, keep at sigmoid(4.6) ≈ 0.99
        # (GATE_INIT, as Titans); δ keeps its own width (per head or per output channel of the residual,
        # which is what Huber compares, not a weight's unit)
        names = ("lr", "mom", "keep") if momentum else ("lr", "keep")
        init = dict(GATE_INIT)
        if lr_init is not None:
            if not 0 < lr_init < lr_max:
                raise ValueError(f"{self.name}: lr_init must be in (0, lr_max={lr_max}), got {lr_init}")
            init["lr"] = math.log(lr_init / (lr_max - lr_init))  # sigmoid⁻¹(lr_init / lr_max)
        step_gates = {n: (width, init[n]) for n in names}
        self.gates = LowRankGates(d_model, num_heads, gate_rank, step_gates | (extra_gates or {}))
        self.lr_max, self.momentum = lr_max, momentum
        check_dot_precision(self.name, dot_precision, self.memory)
        self.init_output(d_model, num_heads, head_dim)
        self.op = MemoryDispatch(
            self.name,
            MIRAS_MEMORY,
            self.memory,
            chunk_size=chunk_size,
            bias=bias,
            retention=retention,
            gates=gates,
            lag=lag,
            dot_precision=dot_precision,
        )
        self.op.check(backend)

    def bias_params(self, raw: dict[str, Tensor]) -> Tensor | None:
        return None

    def memory_args(self, x: Tensor, qkv: dict[str, Tensor]) -> tuple[list[Tensor | None], dict[str, Any]]:
        raw = self.gates(x)
        lr, keep = self.lr_max * torch.sigmoid(raw["lr"]), torch.sigmoid(raw["keep"])
        mom = torch.sigmoid(raw["mom"]) if self.momentum else None
        return [qkv["q"], qkv["k"], qkv["v"], lr, mom, keep], {"bias_params": self.bias_params(raw)}

    def state_size(self, seq_len: int) -> int:
        copies = 2 if self.momentum else 1  # the accumulator, and the momentum with ``momentum``
        return self.num_heads * self.memory.numel_per_head() * copies + self.inputs.state_size()


@register_mixer("moneta")
@takes_options(MirasMemory.__init__)
class Moneta(MirasMemory):
    """(p, q)-Moneta: ℓ_p attentional bias, L_q retention (Miras Eq. 24-25)."""

    name = "moneta"

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        p: float = 3.0,
        q: float = 4.0,
        normalize: Literal["paper", "unit", "none"] = "paper",
        normalize_at: Literal["token", "chunk_end"] = "token",
        norm_floor: float = 0.1,
        eps: float = 1e-6,
        **block: Any,
    ) -> None:
        if normalize not in ("paper", "unit", "none"):
            raise ValueError(f"moneta: normalize={normalize!r} is not one of ['paper', 'unit', 'none']")
        if normalize_at not in ("token", "chunk_end"):
            raise ValueError(f"moneta: normalize_at={normalize_at!r} is not one of ['token', 'chunk_end']")
        if normalize == "none" and normalize_at == "chunk_end":
            raise ValueError("moneta: normalize_at='chunk_end' needs normalize='paper' or 'unit', got 'none'")
        retention: Retention | None = None if normalize == "none" else LqNormalize(q, normalize, norm_floor)
        if normalize_at == "chunk_end":
            retention = ChunkEnd(retention)
        super().__init__(d_model, num_heads, LpBias(p, eps), retention, **block)


@register_mixer("yaad")
@takes_options(MirasMemory.__init__)
class Yaad(MirasMemory):
    """Yaad: Huber attentional bias with a data-dependent threshold, L2 retention (Miras Eq. 26)."""

    name = "yaad"

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        huber: Literal["norm", "coord"] = "norm",
        sign_sharpness: float = 10.0,
        delta_init: float | None = None,
        **block: Any,
    ) -> None:
        hd = block.get("head_dim") or d_model // num_heads
        if huber not in ("norm", "coord"):
            raise ValueError(f"yaad: huber={huber!r} is not one of ['norm', 'coord']")
        # initial threshold (stored through softplus⁻¹): 2√d for the norm switch, 1 per channel for the
        # coordinate form. With the residual LayerNorm memory ‖r‖₂ ≈ √(d + 2) at init, just above √d, so a
        # threshold of √d put about two thirds of the inner steps on the ℓ1 branch, whose step 2δ·tanh(α r)
        # is ≈ √d times the quadratic branch's at the switch and, through α, has a steep Jacobian: the
        # outer gradient grew by 1e5 from T = 128 to 512 (RESULTS.md section 12). At 2√d every typical
        # token takes the quadratic step and only outliers the ℓ1 one (Huber's purpose, Miras §5.3 Eq. 26).
        if delta_init is None:
            delta_init = 2 * math.sqrt(hd) if huber == "norm" else 1.0
        _check_positive("yaad", delta_init=delta_init)
        width = 1 if huber == "norm" else hd
        delta = {"delta": (width, math.log(math.expm1(delta_init)))}
        super().__init__(d_model, num_heads, HuberBias(huber, sign_sharpness), None, False, delta, **block)

    def bias_params(self, raw: dict[str, Tensor]) -> Tensor | None:
        return F.softplus(raw["delta"])


@dataclass(frozen=True)
class SimplexMemorySpec(MemorySpec):
    """Memora's ``memory`` option: :class:`~memnets.memory.MemorySpec` with the output LayerNorm off by
    default (``norm: true`` gives Miras §5.3's x + LN(W₁ σ(W₂ x))); why, in the module docstring's
    "Memora" item."""

    norm: bool = False


@register_mixer("memora")
@takes_options(MirasMemory.__init__)
class Memora(MirasMemory):
    """Memora: ℓ2 attentional bias, KL (softmax) retention over the simplex (Miras Eq. 27)."""

    name = "memora"

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        lag_token: bool = True,
        simplex_scale: float = 1.0,
        lr_max: float = 0.1,
        memory: SimplexMemorySpec = SimplexMemorySpec(),
        **block: Any,
    ) -> None:
        retention = SimplexSoftmax(simplex_scale)
        super().__init__(
            d_model, num_heads, L2Bias(), retention, lag_token, lr_max=lr_max, memory=memory, **block
        )
