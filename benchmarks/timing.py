"""Timing and memory measurement on the present device.

GPU: ``triton.testing.do_bench`` with ``quantiles=[0.5, 0.2, 0.8]`` (median and p20/p80; its default
``return_mode`` is the *mean*), after a per-shape warm-up loop so autotuning and lazy
initialisation stay outside the timed region, with ``grad_to_none`` so fwd+bwd does not accumulate
``.grad``. Peak memory is ``torch.cuda.max_memory_allocated`` over one call, above what was allocated
before it.

CPU: ``torch.utils.benchmark.Timer`` (sets the thread count, keeps the call in a compiled
statement); ``reps`` blocks of ``number`` calls each, ``number`` chosen so a block lasts about
``block_s``; median and p20/p80 over the blocks. There is no allocator high-water mark on CPU, so
memory is reported as the bytes a fwd+bwd keeps alive for the backward pass (saved tensors,
deduplicated by storage), which is what grows with T and chunk size.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.utils.checkpoint


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Budget:
    """How long to measure. ``fast`` is for tests and smoke runs."""

    warmup: int = 2  # untimed calls per shape before timing (autotune, lazy init, allocator)
    reps: int = 7  # CPU: timed blocks
    block_s: float = 0.05  # CPU: target seconds per block
    gpu_warmup_ms: float = 25.0
    gpu_rep_ms: float = 100.0

    @classmethod
    def fast(cls) -> Budget:
        return cls(warmup=1, reps=3, block_s=0.0, gpu_warmup_ms=5.0, gpu_rep_ms=20.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def bench(
    fn: Callable[[], object],
    device: torch.device,
    budget: Budget | None = None,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> Timing:
    """Median and p20/p80 milliseconds of ``fn()`` on ``device``."""
    budget = budget or Budget()
    grad_to_none = list(grad_to_none or [])
    for _ in range(budget.warmup):
        fn()
        for t in grad_to_none:
            t.grad = None
    _sync(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(
            fn,
            warmup=budget.gpu_warmup_ms,
            rep=budget.gpu_rep_ms,
            grad_to_none=grad_to_none or None,
            quantiles=[0.5, 0.2, 0.8],
        )
        return Timing(med, p20, p80, samples=0)

    from torch.utils.benchmark import Timer

    def call() -> None:
        fn()
        for t in grad_to_none:
            t.grad = None

    start = time.perf_counter()
    call()
    one = time.perf_counter() - start
    number = max(1, int(budget.block_s / max(one, 1e-9)))
    timer = Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads())
    blocks = [timer.timeit(number).median * 1e3 for _ in range(budget.reps)]
    return Timing(
        statistics.median(blocks), _quantile(blocks, 0.2), _quantile(blocks, 0.8), samples=len(blocks)
    )


def best_time(fn: Callable[[], None], repeat: int, device: torch.device) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call, in seconds: a quick
    look for the scripts' tables, where :func:`bench` measures with quantiles."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """GPU: peak allocated megabytes (10^6 bytes, as the trainer's ``peak_mem_mb``) during one ``fn()``
    above the memory live before it. CPU: None."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 1e6


def saved_for_backward_mb(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> float:
    """Megabytes (10^6 bytes) of tensors that autograd keeps for the backward pass of ``forward()``,
    deduplicated by storage; tensors sharing storage with ``exclude`` (the parameters and inputs) are not
    counted. Inside ``torch.utils.checkpoint.checkpoint`` (``train.memory_recompute``'s chunk steps) the
    region's own saved tensors are the checkpoint's business (recomputed, not kept), but the inputs it
    holds for the re-run are kept: those are counted (they reach no saved-tensor hook)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        # a detached alias keeps the storage (so no address is reused while counting) without a
        # reference to t's grad_fn: t itself, saved by its own grad_fn (an output), would make a
        # cycle through C++ that no garbage collection frees, and every call would leak its graph
        return t.detach()

    checkpoint = torch.utils.checkpoint.checkpoint

    def holding(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        for t in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                pack(t)
        return checkpoint(fn, *args, **kwargs)

    torch.utils.checkpoint.checkpoint = holding
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward()
    finally:
        torch.utils.checkpoint.checkpoint = checkpoint
    del out
    return sum(seen.values()) / 1e6


def gemm_ceiling_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float | None:
    """Measured matmul TFLOP/s of an n³ GEMM on random data (never zeros, which run faster) in
    ``dtype``: the "% of achievable" denominator. GPU only (None on CPU)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = bench(lambda: a @ b, device, Budget(warmup=3))
    return 2.0 * n**3 / (t.median_ms / 1e3) / 1e12
