"""The DeepTransformers family (ATLAS, Behrouz et al., arXiv 2505.23735 v1, §4, Eq. 19–31): the Omega
memory block of ``omeganet`` (:mod:`memnets.mixers.atlas`) with the options that make each variant fixed.
Per token and head (lr = η_t, keep = α_t, win_gate = γ^{(t)}, φ the key/query features)::

    dla               W_t = keep_t W_{t−1} − lr_t ∇⟨M(φ(k_t)), v_t⟩                       Eq. 19
    swla              W_t = keep_t W_{t−1} − lr_t ∇ Σ_{j<c} γ_j^{(t)} ⟨M(φ(k_{t−j})), v_{t−j}⟩  Eq. 20
    deep_transformer  W_t = W_{t−1} − lr_t ∇⟨M(φ*(k_t)), v_t⟩                             Eq. 25
    swdt              the sliding-window form of deep_transformer                         (§4, Table 2)
    dot               W_t = W_{t−1} − lr_t ∇ Σ_{j<c} γ_j^{(t)} ‖M(φ*(k_{t−j})) − v_{t−j}‖²    Eq. 27

    y_t = M(φ(q_t); W_t)

where ∇⟨M(φ(k)), v⟩ is the gradient of the dot-product bias ℓ = −⟨M(φ(k)), v⟩
(:class:`~memnets.memory.dotbias.DotBias`), so a linear memory gives (gated) linear attention and,
with φ* the exponential-kernel features, unnormalised softmax attention (Eq. 26). φ* is infinite
dimensional; it is approximated by its Taylor expansion to ``feature_degree`` with learnable
coefficients starting at 1/i! (``feature_kernel="exp"``, :mod:`memnets.memory.features`). Choices:

* Eq. 25 and 27 write a unit step; the learned data-dependent step lr_t is kept (``lr_max = 0`` freezes
  the memory as for the other mixers). No momentum (none of Eq. 19–27 has one).
* DLA / SWLA use the polynomial features of ``omeganet`` (``feature_degree=1``: φ(k) = k, Eq. 20 as
  printed). The memory is the deep (MLP) memory of ``omeganet``; ``memory: {depth: 1, residual:
  false, norm: false}`` gives the linear-memory forms of the equations.
* Windowed variants take ``window`` c (default 8, as ``omeganet``); ``dla`` and ``deep_transformer``
  have c = 1.

Backends are ``omeganet``'s: ``reference`` and ``chunked`` (the Triton kernel does not cover the dot
bias and raises with the reason).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import register_mixer
from .atlas import OmegaNet
from .base import keyword_options, show_options

# omeganet's options that the variants do not take: the ones each fixes (no momentum: none of
# Eq. 19–27 has one) and the kernel operands and channel gates, left at omeganet's defaults
_FIXED = ("inner_loss", "forget", "feature_kernel", "momentum", "dot_precision", "gates", "gate_rank")


def omega_variant(name: str, **fixed: Any) -> Callable[[type[OmegaNet]], type[OmegaNet]]:
    """Class decorator: register the class as ``name``, ``omeganet`` with the options ``fixed``; it
    takes omeganet's other options (same names and defaults, but those in ``_FIXED``)."""
    fixed = {"momentum": False, **fixed}
    taken = (*_FIXED, *fixed)

    def __init__(self: OmegaNet, d_model: int, num_heads: int, **options: Any) -> None:
        OmegaNet.__init__(self, d_model, num_heads, **options, **fixed)

    show_options(__init__, [p for p in keyword_options(OmegaNet.__init__) if p.name not in taken])

    def wrap(cls: type[OmegaNet]) -> type[OmegaNet]:
        cls.__init__, cls.name = __init__, name  # type: ignore[method-assign]
        return register_mixer(name)(cls)

    return wrap


@omega_variant("dla", inner_loss="dot", forget=True, feature_kernel="poly", window=1)
class DLA(OmegaNet):
    """Deep (gated) linear attention (ATLAS Eq. 19): dot bias, forget gate, polynomial features."""


@omega_variant("swla", inner_loss="dot", forget=True, feature_kernel="poly")
class SWLA(OmegaNet):
    """Sliding-window linear attention (ATLAS Eq. 20): DLA over the last ``window`` tokens."""


@omega_variant("deep_transformer", inner_loss="dot", forget=False, feature_kernel="exp", window=1)
class DeepTransformer(OmegaNet):
    """DeepTransformer (ATLAS Eq. 25–26): dot bias, no forgetting, exponential-kernel features."""


@omega_variant("swdt", inner_loss="dot", forget=False, feature_kernel="exp")
class SWDT(OmegaNet):
    """Sliding-window DeepTransformer (ATLAS §4, Table 2): DeepTransformer over ``window`` tokens."""


@omega_variant("dot", inner_loss="l2", forget=False, feature_kernel="exp")
class Dot(OmegaNet):
    """Dot, the deep Omega Transformer (ATLAS Eq. 27–31): l2 bias over ``window`` tokens, no
    forgetting, exponential-kernel features."""
