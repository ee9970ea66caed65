"""The memory ops of the zoo, one :class:`~memnets.dispatch.MemoryOp` record each.

| op | update rule | reference / chunked | kernel |
|---|---|---|---|
| :data:`TITANS_MEMORY` | Titans LMM (arXiv:2501.00663 §3.1, Eq. 13-15) | ``memory_reference`` / ``memory_chunked`` | MLP (depth 2) or linear (depth 1) memory kernel |
| :data:`MIRAS_MEMORY` | Miras (arXiv:2504.13173 §5, Eq. 24-27) | ``miras_reference`` / ``miras_chunked`` | the MLP memory kernel: identity retention, Moneta's ℓ_q maps (whole-state) |
| :data:`OMEGA_MEMORY` | Omega rule (ATLAS, arXiv:2505.23735 §3; OmegaNet Eq. 10) | ``omega_reference`` / ``omega_chunked`` | the MLP memory kernel's Omega window; Muon (§5) per chunk and per token in their own kernels |
| :data:`CHUNK_READ_MEMORY` | TNT global memory (arXiv:2511.07343) | ``chunk_read_memory_reference`` / ``chunk_read_memory`` | chunk-start reads of the MLP memory kernel |
| :data:`SHARDED_MEMORY` | TNT local memories (resets, Q-K projection) | ``sharded_memory`` | the Titans memory kernels on folded shards |
| :data:`GATED_DELTA` | gated delta rule (arXiv:2412.06464) | ``gated_delta_rule`` | ``gated_delta_rule`` (Triton) |
| :data:`PARARNN` | ParaRNN (arXiv:2510.21450) | ``sequential_solve`` / Newton + chunked scan | Newton + Triton scan |

Every kernel imports Triton (and the kernel package) on first call, so CPU-only installs never load it.
The memory kernels take one scalar gate per token and head: their ``supports`` refuse the mixers'
``gates: channel`` (:func:`_memory_kernel_op`), which then runs the chunked form.
The ops whose chunked form walks :func:`~memnets.compiled.chunk_step` functions (``compiles=True``:
the Titans, Miras, Omega, chunk-start-read and sharded memories) also run as the ``compiled`` backend,
what ``auto`` runs on CUDA where no kernel covers the configuration.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .dispatch import MemoryOp
from .kernels.gated_delta import gated_delta_rule
from .memory import MemoryMLP, MemoryState, memory_chunked, memory_reference
from .memory.chunk_read import chunk_read_memory, chunk_read_memory_reference
from .memory.miras import miras_chunked, miras_reference
from .memory.omega import omega_chunked, omega_reference
from .memory.sharded import sharded_memory
from .newton import NewtonOptions, newton_solve, sequential_solve


def no_wide_kernels(backend: str) -> str | None:
    """Why the wide-state MLP kernels may not run for ``backend`` (``None``: they may)."""
    from .memory import kernel_bridge

    if backend == "auto" and not kernel_bridge.WIDE_IN_AUTO:
        return "under backend='auto' until checked on a GPU (ask for backend='triton')"
    return None


def _mlp_supports(
    arch: MemoryMLP, bias: object, chunk_size: int, window: int = 1, no_wide: str | None = None
):
    from .memory import kernel_bridge

    return kernel_bridge.supports_mlp(arch, bias, chunk_size, window, no_wide)


def _memory_kernel_op(
    name: str,
    reference: Callable[..., Any],
    chunked: Callable[..., Any],
    kernel: Callable[..., Any],
    supports: Callable[..., str | None],
    **packs: Callable[..., bool],
) -> MemoryOp:
    """The record of a memory whose kernels share three traits: they take the operand precision
    (``dot_precision``), the chunked form compiles, and the gates are one scalar per token and head,
    so ``supports`` sits behind a check that sends the mixers' ``gates: channel``
    (:mod:`memnets.mixers.memory_block`) to PyTorch. ``packs``: :class:`MemoryOp`'s, where given."""

    @functools.wraps(supports)
    def check(*, gates: str = "head", **config: Any) -> str | None:
        if gates != "head":
            return f"gates: {gates} (per-channel gates are not in the Triton kernel)"
        return supports(**config)

    return MemoryOp(
        name, reference, chunked, kernel, check, **packs, kernel_options=("dot_precision",), compiles=True
    )


# ---------------------------------------------------------------------------------------------------
# Titans memory: the linear kernel (depth 1) or the MLP kernel (depth 2)


def _titans_supports(*, backend: str, arch: MemoryMLP, chunk_size: int, **_: Any) -> str | None:
    """The linear memory (depth 1, no LayerNorm, chunk sizes 16/32/64) or the two-layer MLP memory
    (LayerNorm and residual on or off; tiles of a divisor of the chunk size up to 64 rows with the
    state on chip, larger states in the wide-state kernels: head dim <= 128, chunk size <= 64, those
    only with ``backend="triton"`` until checked on a GPU)."""
    if arch.depth not in (1, 2):
        return f"memory depth {arch.depth} (the Triton kernels cover memory depths 1 and 2)"
    if arch.depth == 1:
        from .memory import linear_kernel

        return linear_kernel.supports_linear(arch, chunk_size=chunk_size)
    return _mlp_supports(arch, None, chunk_size, no_wide=no_wide_kernels(backend))


def _titans_packs(*, arch: MemoryMLP, chunk_size: int, bias: object = None, **_: Any) -> bool:
    """The linear kernel always runs packed sequences in one call; the MLP kernel where the state
    stays on chip (the wide-state kernels run no packed sequences)."""
    return arch.depth == 1 or _mlp_supports(arch, bias, chunk_size, no_wide="packed sequences") is None


def _titans_kernel(arch: MemoryMLP, *inputs: Any, dot_precision: str = "auto", **options: Any):
    if arch.depth == 1:
        from .memory.linear_kernel import titans_linear_chunked

        return titans_linear_chunked(arch, *inputs, dot_precision=dot_precision, **options)
    from .memory.kernel_bridge import titans_mlp_chunked

    return titans_mlp_chunked(arch, *inputs, dot_precision=dot_precision, **options)


TITANS_MEMORY = _memory_kernel_op(
    "the Titans memory",
    memory_reference,
    memory_chunked,
    _titans_kernel,
    _titans_supports,
    packs=_titans_packs,
)


# ---------------------------------------------------------------------------------------------------
# Miras: identity retention without the lag token is the Titans rule (with or without momentum)


def _miras_supports(
    *, backend: str, arch: MemoryMLP, chunk_size: int, bias: object, retention: object, lag: bool, **_: Any
) -> str | None:
    from .memory.kernel_bridge import retention_reason, supports_retention

    if (why := retention_reason(retention)) is not None:
        return why
    if arch.depth != 2:
        return f"memory depth {arch.depth} (the Triton kernel covers memory depth 2)"
    return supports_retention(arch, bias, chunk_size, retention, no_wide_kernels(backend), lag)


def _miras_kernel(
    arch: MemoryMLP,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    mom: Tensor | None,
    keep: Tensor | None,
    state: MemoryState | None,
    *,
    retention: object,
    lag: bool,
    **options: Any,
):
    from .memory.kernel_bridge import titans_mlp_chunked

    return titans_mlp_chunked(arch, q, k, v, lr, mom, keep, state, retention=retention, lag=lag, **options)


MIRAS_MEMORY = _memory_kernel_op(
    "the Miras memory", miras_reference, miras_chunked, _miras_kernel, _miras_supports, packs=_titans_packs
)


# ---------------------------------------------------------------------------------------------------
# Omega rule (OmegaNet, Atlas): the MLP kernel's sliding-window variant


def _omega_supports(
    *,
    backend: str,
    arch: MemoryMLP,
    chunk_size: int,
    window: int,
    bias: object,
    muon: object,
    dot_precision: str = "auto",
    **_: Any,
) -> str | None:
    if muon in ("chunk", "token"):
        from .memory.muon_kernel import supports_muon

        if backend == "auto":  # until a GPU run shows otherwise, auto keeps the compiled engine
            return (
                f"muon={muon!r} under backend='auto' (the Muon kernels are unmeasured on a GPU and the per-chunk "
                "one is estimated slower than the compiled engine, benchmarks/RESULTS.md §37; ask for "
                "backend='triton')"
            )
        return supports_muon(arch, bias, chunk_size, window, muon, dot_precision)
    if muon is not None:
        return f"muon={muon!r} (not one of the kernels' 'chunk', 'token')"
    return _mlp_supports(arch, bias, chunk_size, window, no_wide_kernels(backend))


def _omega_kernel(*inputs: Any, muon: object, ns_steps: int, ns_coefficients: object, **options: Any):
    if muon is not None:
        from .memory.muon_kernel import omega_muon_chunked

        return omega_muon_chunked(
            *inputs, muon=muon, ns_steps=ns_steps, ns_coefficients=ns_coefficients, **options
        )
    from .memory.kernel_bridge import omega_mlp_chunked

    return omega_mlp_chunked(*inputs, **options)


def _omega_packs(
    *, arch: MemoryMLP, chunk_size: int, window: int, bias: object = None, muon: object = None, **_: Any
) -> bool:
    """Packed sequences in one kernel call where the state stays on chip (the wide-state kernels, which
    also take the polynomial features' wider keys, and the Muon kernel run none)."""
    return muon is None and _mlp_supports(arch, bias, chunk_size, window, no_wide="packed sequences") is None


OMEGA_MEMORY = _memory_kernel_op(
    "the Omega memory", omega_reference, omega_chunked, _omega_kernel, _omega_supports, packs=_omega_packs
)


# ---------------------------------------------------------------------------------------------------
# TNT: the global memory (reads at chunk starts) and the local memories (sharded, reset)


def _chunk_read_supports(*, arch: MemoryMLP, chunk_size: int, **_: Any) -> str | None:
    if arch.depth != 2:
        return f"memory depth {arch.depth} (chunk-start reads exist for the 2-layer memory only)"
    return _mlp_supports(arch, None, chunk_size, no_wide="chunk-start reads")


def _chunk_read_kernel(*inputs: Any, **options: Any):
    from .memory.kernel_bridge import chunk_read_mlp

    return chunk_read_mlp(*inputs, **options)


CHUNK_READ_MEMORY = _memory_kernel_op(
    "the chunk-start-read memory",
    chunk_read_memory_reference,
    chunk_read_memory,
    _chunk_read_kernel,
    _chunk_read_supports,
)


def _sharded_kernel(arch: MemoryMLP, *inputs: Any, dot_precision: str = "auto", **options: Any):
    run = functools.partial(_titans_kernel, dot_precision=dot_precision)
    return sharded_memory(arch, *inputs, run=run, **options)


SHARDED_MEMORY = _memory_kernel_op(
    "the sharded memory",
    functools.partial(sharded_memory, backend="reference"),
    sharded_memory,
    _sharded_kernel,
    _titans_supports,
)


# ---------------------------------------------------------------------------------------------------
# Gated DeltaNet / MoM and ParaRNN: every backend takes packed sequences itself

GATED_DELTA = MemoryOp(
    "the gated delta rule",
    functools.partial(gated_delta_rule, backend="reference"),
    functools.partial(gated_delta_rule, backend="chunked"),
    functools.partial(gated_delta_rule, backend="triton"),
    packed_inputs=True,
)


def _sequential(cell: Any, u: Tensor, h0: Tensor | None, reset: Tensor | None, **_: Any) -> Tensor:
    return sequential_solve(cell, u, h0, reset)


def _newton(
    scan: str,
    cell: Any,
    u: Tensor,
    h0: Tensor | None,
    reset: Tensor | None,
    *,
    options: NewtonOptions,
    stats: Any,
) -> Tensor:
    options = dataclasses.replace(options, scan_backend=scan)
    return newton_solve(cell, u, h0, reset, options, stats)


PARARNN = MemoryOp(
    "the ParaRNN solve",
    _sequential,
    functools.partial(_newton, "chunked"),
    functools.partial(_newton, "triton"),
    packed_inputs=True,
)
