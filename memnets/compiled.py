"""The compiled chunked path: each chunked engine's per-chunk step under ``torch.compile``, its
matmul operands in the autocast dtype, its state and accumulations in float32.

A chunked engine (``memory_chunked``, ``miras_chunked``, ``omega_chunked``, ``chunk_read_memory``)
walks the sequence chunk by chunk in Python and calls one step function per chunk: the intra-chunk
parallel dual form (TTT arXiv:2407.04620 §2.5; Titans arXiv:2501.00663 §3.2). That step is marked with
:func:`chunk_step`. Called normally it runs eagerly, exactly as before; inside :func:`compiled_steps`
(the dispatcher's ``compiled`` backend) it runs as one ``torch.compile``d function, so

* the chunk loop itself stays in Python: one compiled function is reused for every chunk and every
  layer, nothing is unrolled (a 4096-token sequence at chunk 16 would otherwise trace 256 copies);
* ``dynamic=False``: the shapes of a step are static (a full chunk; the first and last chunks of a
  sequence that does not start or end on a boundary are at most two more specialisations), so the
  compiled kernels are specialised to them;
* the step runs under ``torch.autocast(device, dtype)``: matmul operands are cast to ``dtype``
  (bf16 under the trainer's bf16 autocast) inside the fused kernels, the tensor cores accumulate in
  float32, and everything autocast keeps in float32 (LayerNorm, exp/log, reductions) stays there. The
  recurrent state (weights, momentum) enters and leaves each step in float32: a bf16 matmul result
  added to a float32 state promotes to float32, so the state never round-trips through bf16.

Mode: ``"max-autotune-no-cudagraphs"`` on CUDA, not ``"reduce-overhead"``. A CUDA graph replays into
static output buffers; the chunk loop calls the same step many times per forward while keeping every
chunk's outputs (the read ``y`` and the tensors autograd saved) alive, so CUDA-graph trees would record
one graph per call position (chunks × layers, again for each partial-chunk shape and for the backward)
or each replay would overwrite the previous chunk's outputs. Without graphs the launch count per chunk
is what fusion leaves (the report's estimate); max-autotune picks Triton templates for the small
batched bf16 matmuls. On other devices the default mode (compile time matters more than speed there).
``MEMNETS_COMPILE_MODE`` overrides the mode; ``MEMNETS_COMPILE_BACKEND`` (default ``inductor``) the
dynamo backend: the CPU tests use ``aot_eager``, which captures the same graphs forward and backward
and runs them without generating code (an inductor compile of the steps takes minutes on a CPU).

Recomputed steps (:func:`recomputed_steps`, the trainer's ``train.memory_recompute``): under autograd a
step keeps only its inputs (the chunk-start state and views of the sequence's inputs) and runs again in
the backward (``torch.utils.checkpoint``, non-reentrant), so a layer holds one state per chunk instead
of every chunk's intermediates: 1.4× fewer saved bytes per token for Titans at the 760M widths, 2.3×
for Atlas with Muon (10.4 → 4.4 MB per token and layer; benchmarks/RESULTS.md §28). The price is one
more forward of every step.

Recompiles: dynamo caches per step function (code object); each cache entry is guarded on the input
shapes and dtypes, the grad mode, the autocast state and the static Python arguments (bias kind,
window, Muon mode, flags). The memory network is passed as a module argument whose parameters are
graph inputs, so layers of one configuration share an entry. :data:`RECOMPILE_LIMIT` raises dynamo's
per-function limit, which a model mixing chunk sizes, partial chunks and train/eval would otherwise
reach (past it dynamo silently runs the function eagerly).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
import torch.utils.checkpoint

F = TypeVar("F", bound=Callable[..., Any])

RECOMPILE_LIMIT = 64
# (matmul operand dtype, dynamo backend or None for MEMNETS_COMPILE_BACKEND) inside compiled_steps
_active: ContextVar[tuple[torch.dtype, str | None] | None] = ContextVar("memnets_compiled", default=None)
_compiled: dict[tuple[Callable[..., Any], str, str, str | None], Callable[..., Any]] = {}
_recompute: ContextVar[bool] = ContextVar("memnets_recompute_steps", default=False)


def compile_mode(device_type: str) -> str:
    """The ``torch.compile`` mode of the steps on ``device_type`` (module docstring)."""
    default = "max-autotune-no-cudagraphs" if device_type == "cuda" else "default"
    return os.environ.get("MEMNETS_COMPILE_MODE", default)


def operand_dtype(device_type: str) -> torch.dtype:
    """The matmul operand dtype of a compiled step run now on ``device_type``: autocast's dtype where
    autocast is on (bf16 under the trainer's ``precision: bf16``), else float32 (TF32 on CUDA where
    ``torch.backends.cuda.matmul.allow_tf32`` allows it)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.float32


def describe(device: torch.device) -> str:
    """The precision and compile mode of a compiled step on ``device``, for the dispatcher's log."""
    dtype = operand_dtype(device.type)
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    name = str(dtype).removeprefix("torch.") + (" (TF32 matmuls)" if tf32 else "")
    return (
        f"{name} operands, float32 state; per-chunk step under torch.compile mode={compile_mode(device.type)}"
    )


@contextlib.contextmanager
def compiled_steps(dtype: torch.dtype, backend: str | None = None) -> Iterator[None]:
    """Inside: every :func:`chunk_step` runs compiled with ``dtype`` matmul operands, by dynamo's
    ``backend`` (``None``: ``MEMNETS_COMPILE_BACKEND``, default ``inductor``)."""
    token = _active.set((dtype, backend))
    try:
        yield
    finally:
        _active.reset(token)


@contextlib.contextmanager
def recomputed_steps(enabled: bool = True) -> Iterator[None]:
    """Inside (where ``enabled``): every :func:`chunk_step` run under autograd is recomputed in the
    backward instead of keeping its intermediates (module docstring)."""
    token = _recompute.set(enabled)
    try:
        yield
    finally:
        _recompute.reset(token)


def _device_type(args: tuple, kwargs: dict[str, Any]) -> str:
    for a in (*args, *kwargs.values()):
        for t in a if isinstance(a, tuple) else (a,):
            if isinstance(t, torch.Tensor):
                return t.device.type
    raise ValueError("chunk_step: a step takes at least one tensor argument")


def _compiled_step(fn: Callable[..., Any], device_type: str, backend: str | None) -> Callable[..., Any]:
    backend = backend or os.environ.get("MEMNETS_COMPILE_BACKEND", "inductor")
    mode = compile_mode(device_type) if backend == "inductor" else None
    key = (fn, device_type, backend, mode)
    if key not in _compiled:
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
        _compiled[key] = torch.compile(fn, dynamic=False, backend=backend, mode=mode)
    return _compiled[key]


@functools.cache
def _recomputing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run through ``torch.utils.checkpoint`` (one wrapper per step function, so compiled
    wrappers are cached as the steps are)."""

    @functools.wraps(fn)
    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        # the steps draw no random numbers: no RNG state to save and restore per chunk
        return torch.utils.checkpoint.checkpoint(
            fn, *args, use_reentrant=False, preserve_rng_state=False, **kwargs
        )

    return checkpointed


def chunk_step(fn: F) -> F:
    """Mark ``fn`` as the per-chunk step of a chunked engine: eager, except inside
    :func:`compiled_steps`, where it runs compiled under autocast (module docstring); inside
    :func:`recomputed_steps` and under autograd, through ``torch.utils.checkpoint`` either way. Inside
    an outer ``torch.compile`` (``train.compile``) it is traced inline like any function."""

    @functools.wraps(fn)
    def step(*args: Any, **kwargs: Any) -> Any:
        # recomputed and compiled: the checkpoint is compiled with the step (dynamo traces it, the
        # partitioner recomputes the forward in the compiled backward); a compiled step checkpointed
        # from outside would be recomputed by another graph than the one whose backward runs
        target = _recomputing(fn) if _recompute.get() and torch.is_grad_enabled() else fn
        active = _active.get()
        if active is None or torch.compiler.is_compiling():
            return target(*args, **kwargs)
        dtype, backend = active
        device_type = _device_type(args, kwargs)
        with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
            return _compiled_step(target, device_type, backend)(*args, **kwargs)

    step.eager = fn  # type: ignore[attr-defined]
    return step  # type: ignore[return-value]
