"""Which implementation runs a memory op, decided in one place.

Every recurrent update rule of the zoo is one :class:`MemoryOp` record (:mod:`memnets.ops` holds
them): its token-by-token ``reference``, its ``chunked`` PyTorch form and, where one exists, its
``triton`` kernel, all called the same way, plus ``supports`` (why the kernel does not cover a
configuration), ``packs`` (whether the kernel runs packed sequences in one call) and ``compiles``
(whether the chunked form's per-chunk steps can run compiled: the ``compiled`` backend,
:mod:`memnets.compiled`). A mixer builds
one :class:`MemoryDispatch` per op at construction, with the op's static configuration, and calls
it in ``forward``; the dispatch

* checks the backend name and refuses ``backend="triton"`` for a configuration the kernel does not
  cover (an error naming why, never a silent fallback);
* resolves ``auto``: the kernel on a CUDA device where it covers the configuration; else on CUDA the
  ``compiled`` chunked form (per-chunk steps under ``torch.compile`` with the autocast dtype's matmul
  operands: eager float32 on a GPU leaves the tensor cores idle), else ``chunked``;
* says once in the log which path ran, its matmul operand precision on CUDA, and why no kernel ran
  where one could have;
* runs packed sequences (``cu_seqlens``) in one kernel call where the kernel packs them, and one
  sequence at a time (each from a fresh state) otherwise, returning the last sequence's state.

Adding a backend to an op is one field of its record.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from . import compiled, self_check

Backend = Literal["auto", "reference", "chunked", "compiled", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "reference", "chunked", "compiled", "triton")

log = logging.getLogger("memnets")
_announced: set[str] = set()


def log_once(message: str, *args: object) -> None:
    """Log ``message % args`` at INFO the first time this exact text comes up (which path ran)."""
    text = message % args
    if text not in _announced:
        _announced.add(text)
        log.info(text)


def triton_available(device: torch.device) -> bool:
    """Whether ``auto`` may pick the Triton kernels: on CUDA devices only. Under ``TRITON_INTERPRET=1``
    (kernel tests on CPU) they run only when asked for by name, so ``auto`` keeps meaning the same
    path whichever test module set the variable first."""
    if os.environ.get("MEMNETS_DISABLE_TRITON") == "1" or device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(owner: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend={backend!r} is not one of {list(BACKENDS)}")


def _covered(**config: Any) -> str | None:
    return None


def _always(**config: Any) -> bool:
    return True


@dataclass(frozen=True)
class MemoryOp:
    """One update rule and its implementations.

    ``reference``, ``chunked`` and ``triton`` (the kernel, which imports Triton on first use; ``None``
    = no kernel) share one signature, ``fn(*inputs, **options) -> (y, state)``.
    ``supports(backend=, **options)`` says why
    the kernel does not cover a configuration (``None``: it does). ``packs(**options)``: whether the
    kernel runs packed sequences in one call. ``kernel_options`` are read by the kernel only (the
    PyTorch paths do not take them). ``packed_inputs``: every backend takes ``cu_seqlens`` itself.
    ``compiles``: ``chunked`` walks its chunks through :func:`memnets.compiled.chunk_step` functions,
    so the ``compiled`` backend is ``chunked`` run inside :func:`memnets.compiled.compiled_steps`."""

    name: str
    reference: Callable[..., tuple[Tensor, Any]]
    chunked: Callable[..., tuple[Tensor, Any]]
    triton: Callable[..., tuple[Tensor, Any]] | None = None
    supports: Callable[..., str | None] = _covered
    packs: Callable[..., bool] = _always
    kernel_options: tuple[str, ...] = ()
    packed_inputs: bool = False
    compiles: bool = False

    def why_not(self, backend: str, options: dict[str, Any]) -> str | None:
        """Why the kernel cannot run ``options`` for ``backend`` (``None`` if it can)."""
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"this machine (Triton is not importable: {e})"
        return self.supports(backend=backend, **options)


class MemoryDispatch:
    """``op`` for one mixer: ``MemoryDispatch(owner, op, arch=..., **options)`` and ``check(backend)``
    at construction, then ``dispatch(backend, *inputs, cu_seqlens=None, **per_call)`` in ``forward``.
    ``arch`` (the memory network, if the op has one) is passed first, ``options`` by keyword to every
    call; ``part`` names the piece of a mixer with several memories in messages. ``gates``: the mixer's
    gate layout (``"head"`` or ``"channel"``, :mod:`memnets.mixers.memory_block`), seen by the op's
    ``supports`` only (the gate tensors' shapes carry it to the calls). ``optional_kernel``:
    a part whose kernel is not what ``backend="triton"`` asks for (TNT's global memory, when the local
    memories are): there ``triton`` runs the chunked engine where the kernel does not cover the
    configuration, and the log says so. The backend is passed per call so a mixer's ``backend``
    attribute may change after construction."""

    def __init__(
        self,
        owner: str,
        op: MemoryOp,
        arch: Any = None,
        part: str = "",
        optional_kernel: bool = False,
        gates: str = "head",
        **options: Any,
    ) -> None:
        self.owner, self.op, self.arch, self.part, self.options = owner, op, arch, part, options
        self.gates = gates
        self.optional_kernel = optional_kernel
        self._no_kernel: dict[str, str | None] = {}

    def no_kernel(self, backend: str) -> str | None:
        """Why the kernel does not cover this configuration for ``backend`` (``None`` if it does)."""
        if backend not in self._no_kernel:
            if self.op.triton is None:
                why: str | None = f"{self.op.name} (it has no Triton kernel)"
            else:
                config = {"gates": self.gates, **self.options}
                if self.arch is not None:
                    config["arch"] = self.arch
                why = self.op.why_not(backend, config)
            self._no_kernel[backend] = f"{self.part}: {why}" if why and self.part else why
        return self._no_kernel[backend]

    def check(self, backend: str) -> None:
        """A known backend name, and no explicit ``triton`` for a configuration no kernel covers (nor
        ``compiled`` for an op whose chunked form has no per-chunk step)."""
        check_backend(self.owner, backend)
        if backend == "compiled" and not self.op.compiles:
            raise ValueError(
                f"{self.owner}: backend='compiled' is not available for {self.op.name} (its chunked form "
                "has no per-chunk step to compile); use backend='chunked', 'triton' or 'auto'"
            )
        if backend != "triton" or self.optional_kernel:
            return
        if self.op.triton is None:
            raise ValueError(
                f"{self.owner}: backend='triton' is not implemented; supported: ['reference', 'chunked']"
            )
        if (why := self.no_kernel(backend)) is not None:
            raise ValueError(
                f"{self.owner}: backend='triton' does not support {why}; use backend='chunked' or 'auto'"
            )

    def backend(self, requested: str, device: torch.device) -> str:
        """The backend that runs on ``device``; logged once per (owner, path)."""
        self.check(requested)
        chosen = requested
        if requested == "auto":
            chosen = (
                "triton"
                if self.no_kernel("auto") is None and triton_available(device)
                else self.fallback(device)
            )
        elif requested == "triton" and self.optional_kernel and self.no_kernel("triton") is not None:
            chosen = "chunked"
        why = ""
        if chosen in ("chunked", "compiled") and (
            requested == "triton" or (requested == "auto" and triton_available(device))
        ):
            why = f"; the Triton kernels do not cover {self.no_kernel(requested)}"
        if chosen == "compiled":
            why += "; " + compiled.describe(device)
        elif chosen != "triton" and device.type == "cuda":  # the eager PyTorch forms compute in float32
            why += "; float32 matmuls" + (" as TF32" if torch.backends.cuda.matmul.allow_tf32 else "")
        if chosen == "triton" and self.op.kernel_options:
            why = "; " + ", ".join(
                f"{k}={self.options[k]}" for k in self.op.kernel_options if k in self.options
            )
        what = f"{self.owner} ({self.part})" if self.part else self.owner
        log_once(
            "%s: running the %s backend (asked for %s on %s%s)", what, chosen, requested, device.type, why
        )
        return chosen

    def fallback(self, device: torch.device) -> str:
        """What runs where ``auto`` runs no kernel: the compiled chunked form on CUDA where the op has
        one, else the eager chunked form (on CPU compile time outweighs what it saves)."""
        return "compiled" if device.type == "cuda" and self.op.compiles else "chunked"

    def packs(self, requested: str, device: torch.device) -> bool:
        """Whether a kernel runs packed sequences on ``device`` in one launch (else the PyTorch forms
        take them one sequence at a time, inside the op or here)."""
        return self.backend(requested, device) == "triton" and self.op.packs(arch=self.arch, **self.options)

    def __call__(
        self, backend: str, *inputs: Any, cu_seqlens: Tensor | None = None, **per_call: Any
    ) -> tuple[Tensor, Any]:
        device = next(t for t in inputs if isinstance(t, Tensor)).device
        requested, backend = backend, self.backend(backend, device)
        head = () if self.arch is None else (self.arch,)
        if backend == "triton" and requested == "auto" and not self._kernel_agrees(head, inputs, per_call):
            backend = self.fallback(device)
        if backend == "compiled":
            with compiled.compiled_steps(compiled.operand_dtype(device.type)):
                return self._run(self.op.chunked, "chunked", head, inputs, cu_seqlens, per_call)
        return self._run(getattr(self.op, backend), backend, head, inputs, cu_seqlens, per_call)

    def _run(
        self,
        fn: Callable[..., tuple[Tensor, Any]],
        backend: str,
        head: tuple,
        inputs: tuple,
        cu_seqlens: Tensor | None,
        per_call: dict[str, Any],
    ) -> tuple[Tensor, Any]:
        options = self._options(backend)
        if cu_seqlens is None:
            return fn(*head, *inputs, **options, **per_call)
        if self.op.packed_inputs:
            return fn(*head, *inputs, **options, **per_call, cu_seqlens=cu_seqlens)
        if backend == "triton" and self.op.packs(arch=self.arch, **self.options):
            y, states = fn(*head, *inputs, **options, **per_call, cu_seqlens=cu_seqlens)
            return y, states[-1]  # the last sequence's state
        return self._one_by_one(fn, head, inputs, {**options, **per_call}, cu_seqlens)

    def _options(self, backend: str) -> dict[str, Any]:
        """The static options ``backend`` takes (the kernel-only ones go to the kernel alone)."""
        return {
            k: v for k, v in self.options.items() if backend == "triton" or k not in self.op.kernel_options
        }

    def _kernel_agrees(self, head: tuple, inputs: tuple, per_call: dict[str, Any]) -> bool:
        """The first-use self-check (:mod:`memnets.self_check`) of a kernel ``auto`` picked."""
        return self_check.kernel_agrees(
            f"{self.owner}: {self.op.name}",
            self.op.triton,  # type: ignore[arg-type]
            self.op.chunked,
            head,
            inputs,
            {**self._options("triton"), **per_call},
            {**self._options("chunked"), **per_call},
        )

    @staticmethod
    def _one_by_one(
        fn: Callable[..., tuple[Tensor, Any]],
        head: tuple,
        inputs: tuple,
        kwargs: dict[str, Any],
        cu_seqlens: Tensor,
    ) -> tuple[Tensor, Any]:
        """Each packed sequence from a fresh state: the per-token inputs (``[1, T, ...]`` tensors)
        sliced to its rows; the outputs joined, the last sequence's state returned."""
        T = cu_seqlens[-1].item()

        def rows(t: Any, s: int, e: int) -> Any:
            per_token = isinstance(t, Tensor) and t.dim() >= 2 and t.shape[:2] == (1, T)
            return t[:, s:e] if per_token else t

        ys, state = [], None
        for s, e in itertools.pairwise(cu_seqlens.tolist()):
            piece = {k: rows(v, s, e) for k, v in kwargs.items()}
            y, state = fn(*head, *(rows(t, s, e) for t in inputs), **piece)
            ys.append(y)
        return torch.cat(ys, 1), state
