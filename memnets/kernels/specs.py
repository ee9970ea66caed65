"""What the memory kernels are told about the memory network and its attentional bias: two small frozen
descriptors, so that the kernels take plain tensors and these, never the model's classes.

A caller (``memnets.memory.kernel_bridge``) builds them from its modules; the kernels' ``supports``
functions read them to say whether a configuration runs, and the launchers turn them into compile-time
constants. The learned tensors (initial weights, the LayerNorm's scale and shift) are passed separately.
"""

from __future__ import annotations

import dataclasses

import torch

# the attentional biases the kernels compute, as Miras (arXiv 2504.13173) names them: "l2" Titans'
# ℓ2 loss (arXiv 2501.00663 §3.1 Eq. 12), "lp" Moneta's ℓ_p loss (Miras §5.1 Eq. 10), "huber_norm" /
# "huber_coord" Yaad's Huber loss (Miras §5.1 Eq. 16) with a per-token or per-channel threshold
BIAS_KINDS = ("l2", "lp", "huber_norm", "huber_coord")


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """One head's memory network ``M(x) = [x +] [LN](σ(... σ(x W1) ...) W_depth)`` (Titans, arXiv
    2501.00663 §3.1, "deep memory"): ``depth`` layers from width ``d_in`` (the keys) through
    ``d_hidden`` to ``d_out`` (the values), activation ``σ`` between layers, an optional residual and an
    optional LayerNorm (with epsilon ``ln_eps``) on the last layer's output, weights in ``dtype``."""

    d_in: int
    d_hidden: int
    d_out: int
    depth: int
    activation: str
    residual: bool
    layer_norm: bool
    ln_eps: float
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class BiasSpec:
    """The attentional bias ℓ(M(k); v) of the inner loss: ``kind`` one of :data:`BIAS_KINDS`; ``p`` and
    ``eps`` the ℓ_p exponent and smoothing ((R² + ε)^{p/2}), ``sharpness`` the Huber "norm" mode's
    tanh sharpness. The Huber threshold δ_t is data-dependent and travels as a tensor."""

    kind: str = "l2"
    p: float = 2.0
    eps: float = 0.0
    sharpness: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in BIAS_KINDS:
            raise ValueError(f"BiasSpec: kind={self.kind!r} is not one of {list(BIAS_KINDS)}")

    @property
    def per_token(self) -> bool:
        """Whether the bias takes a data-dependent threshold per token (Huber)."""
        return self.kind in ("huber_norm", "huber_coord")
