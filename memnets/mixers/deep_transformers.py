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

from typing import Literal

from ..dispatch import Backend
from ..memory.muon import MUON_COEFFICIENTS
from ..registry import register_mixer
from .atlas import OmegaMemorySpec, _OmegaMixer


class _DeepTransformer(_OmegaMixer):
    """One DeepTransformers variant: ``omeganet`` with ``inner_loss``, ``forget``, ``feature_kernel``
    and (windowless variants) ``window`` fixed by the subclass."""

    name: str
    inner_loss: Literal["l2", "dot"]
    forget: bool
    feature_kernel: Literal["poly", "exp"]

    def _build(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int | None,
        chunk_size: int,
        backend: Backend,
        window: int,
        feature_degree: int,
        memory: OmegaMemorySpec,
        lr_max: float,
        conv_size: int,
    ) -> None:
        _OmegaMixer.__init__(
            self,
            name=self.name,
            d_model=d_model,
            num_heads=num_heads,
            head_dim=head_dim,
            chunk_size=chunk_size,
            backend=backend,
            window=window,
            feature_degree=feature_degree,
            feature_kernel=self.feature_kernel,
            inner_loss=self.inner_loss,
            memory=memory,
            momentum=False,
            forget=self.forget,
            lr_max=lr_max,
            conv_size=conv_size,
            muon=None,
            ns_steps=0,
            ns_coefficients=MUON_COEFFICIENTS,  # unused without Muon
        )


class _OneToken(_DeepTransformer):
    """The variants whose inner loss sees the current token only (c = 1)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        chunk_size: int = 16,
        backend: Backend = "auto",
        feature_degree: int = 2,
        memory: OmegaMemorySpec = OmegaMemorySpec(),
        lr_max: float = 1.0,
        conv_size: int = 4,
    ) -> None:
        self._build(
            d_model, num_heads, head_dim, chunk_size, backend, 1, feature_degree, memory, lr_max, conv_size
        )


class _Windowed(_DeepTransformer):
    """The variants whose inner loss is the gated sum over the last ``window`` tokens (Omega rule)."""

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
        memory: OmegaMemorySpec = OmegaMemorySpec(),
        lr_max: float = 1.0,
        conv_size: int = 4,
    ) -> None:
        self._build(
            d_model,
            num_heads,
            head_dim,
            chunk_size,
            backend,
            window,
            feature_degree,
            memory,
            lr_max,
            conv_size,
        )


@register_mixer("dla")
class DLA(_OneToken):
    """Deep (gated) linear attention (ATLAS Eq. 19): dot bias, forget gate, polynomial features."""

    name, inner_loss, forget, feature_kernel = "dla", "dot", True, "poly"


@register_mixer("swla")
class SWLA(_Windowed):
    """Sliding-window linear attention (ATLAS Eq. 20): DLA over the last ``window`` tokens."""

    name, inner_loss, forget, feature_kernel = "swla", "dot", True, "poly"


@register_mixer("deep_transformer")
class DeepTransformer(_OneToken):
    """DeepTransformer (ATLAS Eq. 25–26): dot bias, no forgetting, exponential-kernel features."""

    name, inner_loss, forget, feature_kernel = "deep_transformer", "dot", False, "exp"


@register_mixer("swdt")
class SWDT(_Windowed):
    """Sliding-window DeepTransformer (ATLAS §4, Table 2): DeepTransformer over ``window`` tokens."""

    name, inner_loss, forget, feature_kernel = "swdt", "dot", False, "exp"


@register_mixer("dot")
class Dot(_Windowed):
    """Dot, the deep Omega Transformer (ATLAS Eq. 27–31): l2 bias over ``window`` tokens, no
    forgetting, exponential-kernel features."""

    name, inner_loss, forget, feature_kernel = "dot", "l2", False, "exp"
