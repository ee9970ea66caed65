"""ATLAS (Behrouz et al., arXiv 2505.23735 v1): OmegaNet and Atlas. Sections and equations below are the
paper's.

Registered mixers:

* ``omeganet`` — the Omega rule (§3.2, Eq. 10): the memory is trained on the gated sum of the last
  ``window`` tokens' losses ‖M(φ(k_i)) − v_i‖², with polynomial features φ on keys and queries,
  a forget gate and (optionally, off by default as in the paper's table) momentum.
* ``atlas`` — Omega + polynomial features + Muon (§5, Eq. 32–33): momentum of the windowed gradients,
  orthogonalised by Newton–Schulz before it is applied (``muon="token"``: every token, Eq. 40;
  ``muon="chunk"``: once per chunk, the cheap schedule of :mod:`memnets.memory.omega`).

Block (§5.1 "Architectural Backbone", Fig. 3; the same as the Titans mixer's): q/k/v projections →
depthwise causal conv (kernel 4) → SiLU, l2-normalised q and k per head, then φ on q and k; gates
lr = lr_max·sigmoid(·) (η_t), mom = sigmoid(·) (θ_t), keep = sigmoid(·) (α_t) and window gates
win_gate = sigmoid(·) ∈ [0, 1]^window (γ^{(t)}), per token and head from one linear map of the block
input (:class:`OmegaGates`); output RMSNorm(y) ⊙ silu(W_g x), then the output projection.

Choices the paper leaves open (it reports no window c, chunk size or polynomial degree for its main runs,
nor how the window gates γ are parameterised), each an option:

* ``window`` c = 8 (Fig. 5: larger c is better, c = 16 ≈ c = 8); win_gate biases start at
  sigmoid⁻¹(1/c), so the initial inner loss is the mean over the window: gradients inside a chunk are
  taken at the same weights, and a plain sum would apply each token's gradient c times.
* Features: ``feature_degree`` 2, ``feature_kernel`` "poly" (or "exp" for the exponential-kernel
  approximation with learnable Taylor coefficients); see :mod:`memnets.memory.features`.
* Memory: 2-layer MLP, expansion 4, GELU, residual (Eq. 42); ``memory: {kind: gated_mlp}`` is the Atlas++
  gated memory x + W₁(σ(W₂x) ⊗ W₃x) (Eq. 43, :mod:`memnets.memory.gated`). "Layer norm at the end
  of each chunk" (App. E) is read as the LayerNorm on the memory output with per-head outer affine (as Titans/TTT);
  ``memory: {norm: false}`` gives Eq. 42 literally.
* ``lr_max``: omeganet 1.0; atlas 0.1, because an orthogonalised step has all singular values ≈ 1
  whatever the gradient's size.
* ``inner_loss``: "l2" (‖M(φ(k)) − v‖², OmegaNet/Atlas) or "dot" (−⟨M(φ(k)), v⟩,
  :mod:`memnets.memory.dotbias`). The DeepTransformers family falls out of the options: DLA = ``omeganet`` with ``inner_loss="dot"``,
  ``window=1``; SWLA = the same with ``window=c``; DeepTransformer = DLA with ``forget=False`` and
  ``feature_kernel="exp"``; Dot = ``omeganet`` with ``forget=False``, ``feature_kernel="exp"``.
* ``gates``: ``"head"`` (default) or ``"channel"``: lr, mom and keep per output unit of every weight
  matrix of the memory, from a rank-``gate_rank`` projection (Titans App. C's diag gates, Miras §5.4's
  low-rank channel-wise gates; :mod:`memnets.mixers.memory_block`); the window gates γ stay per head.
  With Muon (Eq. 32-33) a per-column θ_t scales the momentum's columns before Newton–Schulz and a
  per-column η_t the orthogonalised step's columns after it (so the step is O·diag(η_t), orthogonal
  only when η_t is constant over a matrix's columns, as per head). No Triton kernel takes them.
* ``chunk_size`` 16 (TTT/Titans), gradients at the chunk-start weights; windows reaching into the
  previous chunk recompute those gradients there.
* Packed sequences (``cu_seqlens``) run in one kernel call on ``triton`` (each sequence from the
  initial state, its window never reaching the one before it), else sequence by sequence; the state
  returned is the last sequence's. Backends: ``reference`` (token loop),
  ``chunked`` and ``triton``: the deep-memory kernel's Omega variant
  (:func:`~memnets.memory.kernel_bridge.omega_mlp_chunked`) for OmegaNet without Muon on the
  2-layer chain memory with the l2 inner loss, within its chunk/state limits, and for Atlas the Muon
  kernels (:func:`~memnets.memory.muon_kernel.omega_muon_chunked`): ``muon="chunk"`` at hidden width and
  head dim <= 64, as in the configs (slower than the compiled engine in the static model,
  benchmarks/RESULTS.md §37), ``muon="token"`` likewise (§50-51; hidden width <= 32 with ``dot_precision="tf32"``);
  the polynomial
  features' wider keys (560 at head dim 32, 2,144 at 64) run in its wide-state kernels, which read
  W1 in blocks of the key width and take no packed sequences (those then run one by one). ``auto``
  picks a kernel on CUDA where it applies (the wide-state ones once ``WIDE_IN_AUTO`` is on), ``triton``
  elsewhere raises with the reason (per-token Muon at hidden width 64, the gated memory,
  ``inner_loss="dot"``).
  ``dot_precision`` (OmegaNet) sets the kernel's matmul operands as for ``titans``.

MQAR (``configs/mqar/{omeganet,atlas}.yaml``): OmegaNet learns recall, much faster with ``momentum=True``
than without (``benchmarks/RESULTS.md`` section 32). Atlas at the mixer's ``lr_max`` 0.1 learns slowly
(0.09 at 1500 steps, section 7): each orthogonalised step has singular values near 1 whatever the
gradient, so a small cap on η_t leaves the memory close to its initial weights. The MQAR config sets
``lr_max`` 4 and learns recall (section 35); with ``muon="token"`` one seed reached 0.960 by step 1500, where
the per-chunk schedule had 0.986 at 1000 (section 50; the second seed is not run).
The mixer's default stays 0.1 until a text run shows what a larger cap does there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..dispatch import Backend, MemoryDispatch
from ..memory.architecture import MemorySpec
from ..memory.bias import L2Bias
from ..memory.dotbias import DotBias
from ..memory.features import FeatureKernel, FeatureMemoryMLP, PolynomialFeatures
from ..memory.gated import GatedMemoryMLP
from ..memory.muon import MUON_COEFFICIENTS
from ..memory.omega import Muon
from ..ops import OMEGA_MEMORY
from ..registry import register_mixer
from .base import takes_options
from .memory_block import (
    GateLayout,
    LowRankGates,
    MemoryBlock,
    MemoryProjections,
    StepGates,
    check_dot_precision,
    check_grad_horizon,
    gate_width,
)


class OmegaGates(StepGates):
    """Per-token gates in the memory's compute dtype (float32 or wider): lr = lr_max·sigmoid(·) (η_t),
    mom = sigmoid(·) (θ_t), keep = sigmoid(·) (α_t) as :class:`~memnets.mixers.memory_block.StepGates`
    (``width`` > 1: ``gates: channel``), plus the window gates win_gate = sigmoid(·) ∈ [0, 1]^window
    (γ^{(t)}) from the same projection (``extra``: :meth:`window_gates`), one per head and offset
    under either layout. Their biases start at win_gate = 1/window."""

    @staticmethod
    def window_gates(window: int) -> dict[str, tuple[int, float]]:
        """The ``extra`` gates for ``window`` (none at window 1: the single gate is fixed at 1)."""
        return {"win_gate": (window, -math.log(window - 1))} if window > 1 else {}

    def forward(self, x: Tensor, dtype: torch.dtype) -> dict[str, Tensor | None]:
        B, T, _ = x.shape
        window = self.extra.get("win_gate", (0, 0.0))[0]
        compute = torch.promote_types(dtype, torch.float32)
        out: dict[str, Tensor | None] = dict.fromkeys(("lr", "mom", "keep", "win_gate"))
        if isinstance(self.proj, LowRankGates):
            out.update({n: torch.sigmoid(g.to(compute)) for n, g in self.proj(x).items()})
        else:
            raw = torch.sigmoid(self.proj(x).to(compute).view(B, T, len(self.names) + window, self.num_heads))
            out.update(zip(self.names, raw.unbind(2)))
            if window:
                out["win_gate"] = raw[:, :, len(self.names) :].transpose(2, 3)  # [B, T, H, window]
        out["lr"] = self.lr_max * out["lr"]  # type: ignore[operator]
        return out


@dataclass(frozen=True)
class OmegaMemorySpec(MemorySpec):
    """:class:`~memnets.memory.MemorySpec` plus ``kind``: ``mlp`` (Eq. 42 with ``norm: false``) or
    ``gated_mlp`` (the gated two-layer memory of ATLAS Eq. 43, depth 2). Keys are the polynomial
    features, so the first layer's input is the feature width."""

    kind: Literal["mlp", "gated_mlp"] = "mlp"

    def build_features(self, owner: str, num_heads: int, dim: int, in_dim: int) -> FeatureMemoryMLP:
        if self.kind not in ("mlp", "gated_mlp"):
            raise ValueError(f"{owner}: memory.kind={self.kind!r} is not one of ['mlp', 'gated_mlp']")
        if self.init != "fan_in":
            # the feature memories draw their first layer from the feature width; not wired to `init`
            raise ValueError(f"{owner}: memory.init={self.init!r} is not available here; allowed: ['fan_in']")
        if self.kind == "mlp":
            return FeatureMemoryMLP(
                num_heads, dim, in_dim, self.depth, self.expansion, self.activation, self.residual, self.norm,
                self.init_std, norm_scale=self.norm_scale,
            )  # fmt: skip
        if self.depth != 2:
            raise ValueError(
                f"{owner}: memory.kind='gated_mlp' has depth 2 (Eq. 43), got memory.depth={self.depth}"
            )
        return GatedMemoryMLP(
            num_heads, dim, in_dim, self.expansion, self.activation, self.residual, self.norm, self.init_std,
            norm_scale=self.norm_scale,
        )  # fmt: skip


class _OmegaMixer(MemoryBlock):
    """The shared block of ``omeganet``, ``atlas`` and the DeepTransformers (module docstring). Its
    keyword options are the whole family's; each mixer takes its share (``takes_options``) and sets
    ``name`` (the mixer's, which errors and logs give)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        chunk_size: int = 16,
        backend: Backend = "auto",
        window: int = 8,
        feature_degree: int = 2,
        feature_kernel: FeatureKernel = "poly",
        inner_loss: Literal["l2", "dot"] = "l2",
        memory: OmegaMemorySpec = OmegaMemorySpec(),
        momentum: bool = False,
        forget: bool = True,
        lr_max: float = 1.0,
        conv_size: int = 4,
        muon: Muon | None = None,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = MUON_COEFFICIENTS,
        dot_precision: str = "auto",
        grad_horizon: int | None = None,
        gates: GateLayout = "head",
        gate_rank: int = 32,
    ) -> None:
        super().__init__()
        head_dim = head_dim or d_model // num_heads
        for opt, value in (
            ("chunk_size", chunk_size),
            ("head_dim", head_dim),
            ("conv_size", conv_size),
            ("window", window),
            ("feature_degree", feature_degree),
        ):
            if value < 1:
                raise ValueError(f"{self.name}: {opt} must be >= 1, got {value}")
        if lr_max < 0:
            raise ValueError(f"{self.name}: lr_max must be >= 0, got {lr_max}")
        if ns_steps < 0:
            raise ValueError(f"{self.name}: ns_steps must be >= 0, got {ns_steps}")
        check_grad_horizon(self.name, grad_horizon, chunk_size)
        self.grad_horizon = grad_horizon
        self.num_heads, self.head_dim = num_heads, head_dim
        self.chunk_size, self.backend, self.window = chunk_size, backend, window
        self.muon, self.ns_steps, self.ns_coefficients = muon, ns_steps, tuple(ns_coefficients)
        self.inputs = MemoryProjections(d_model, num_heads, head_dim, conv_size)
        self.features = PolynomialFeatures(head_dim, feature_degree, feature_kernel)
        if inner_loss not in ("l2", "dot"):
            raise ValueError(f"{self.name}: inner_loss={inner_loss!r} is not one of ['l2', 'dot']")
        self.bias = L2Bias() if inner_loss == "l2" else DotBias()
        self.memory = memory.build_features(self.name, num_heads, head_dim, self.features.out_dim)
        width = gate_width(self.name, gates, gate_rank, self.memory)
        win = OmegaGates.window_gates(window)
        self.gates = OmegaGates(d_model, num_heads, lr_max, momentum, forget, width, gate_rank, win)
        check_dot_precision(self.name, dot_precision, self.memory)
        self.op = MemoryDispatch(
            self.name,
            OMEGA_MEMORY,
            self.memory,
            gates=gates,
            window=window,
            chunk_size=chunk_size,
            muon=muon,
            ns_steps=ns_steps,
            ns_coefficients=self.ns_coefficients,
            bias=self.bias,
            dot_precision=dot_precision,
        )
        self.op.check(backend)
        self.init_output(d_model, num_heads, head_dim)

    def memory_args(self, x: Tensor, qkv: dict[str, Tensor]) -> tuple[list[Tensor | None], dict[str, Any]]:
        dtype = self.memory.init_weights[0].dtype  # φ in the memory's compute dtype
        q, k = (self.features(qkv[n].to(dtype)) for n in ("q", "k"))
        g = self.gates(x, dtype)
        return [q, k, qkv["v"], g["lr"], g["mom"], g["keep"], g["win_gate"]], {}

    def output(self, y: Tensor, x: Tensor) -> Tensor:
        return super().output(y.to(x.dtype), x)  # the memory reads out in its compute dtype

    def state_size(self, seq_len: int) -> int:
        """Fast weights, momentum and the Muon direction, the window's keys and values, conv caches."""
        copies = 1 + self.gates.momentum + (self.muon == "chunk")
        window = (self.window - 1) * (self.features.out_dim + self.head_dim)
        return self.num_heads * (copies * self.memory.numel_per_head() + window) + self.inputs.state_size()


@register_mixer("omeganet")
@takes_options(_OmegaMixer.__init__, "muon", "ns_steps", "ns_coefficients")
class OmegaNet(_OmegaMixer):
    """OmegaNet: Omega rule + polynomial features + forget gate (ATLAS §3.2, Eq. 10)."""

    name = "omeganet"

    def __init__(self, d_model: int, num_heads: int, **options: Any) -> None:
        super().__init__(d_model, num_heads, muon=None, ns_steps=0, **options)


@register_mixer("atlas")
@takes_options(_OmegaMixer.__init__, "momentum", "dot_precision")
class Atlas(_OmegaMixer):
    """Atlas: Omega rule + polynomial features + Muon-orthogonalised momentum (ATLAS §5, Eq. 32–33)."""

    name = "atlas"

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        lr_max: float = 0.1,
        muon: Literal["token", "chunk"] = "token",
        **options: Any,
    ) -> None:
        if muon not in ("token", "chunk"):
            raise ValueError(f"atlas: muon={muon!r} is not one of ['token', 'chunk']")
        super().__init__(d_model, num_heads, momentum=True, lr_max=lr_max, muon=muon, **options)
