"""Launching one Triton kernel many times over the same tensors without Triton's per-launch Python work.

``kernel[grid](*args, **kwargs)`` binds every argument, specialises it (alignment of each pointer,
ints equal to 1 or divisible by 16), builds the compile cache's key and only then launches: tens of
microseconds of host time per launch for kernels with 40-odd arguments, which the wide-state kernels'
one launch per chunk pays hundreds of times per layer (benchmarks/RESULTS.md §58). :class:`Relaunch`
pays it once per compiled variant: it launches the compiled kernel directly while the arguments are
those of that variant's first launch, except ints the kernel does not specialise on
(``do_not_specialize``, e.g. the chunk index). Any other change (another tensor, another value of a
specialised int) goes through Triton's own path again, so a launch never runs a variant compiled for
other arguments. The keywords are fixed per object: one object per compiled variant. Under the
interpreter there is no compiled kernel, and every launch goes through Triton's path.

Example::

    first, later = (Relaunch(_kernel, (B * H, split), BLOCK=64, FIRST=f, num_warps=8) for f in (True, False))
    for c in range(-1, chunks):  # c: in the kernel's do_not_specialize
        (first if c < 0 else later)(x, y, max(c, 0))
"""

from __future__ import annotations

from itertools import compress, count
from operator import is_not
from typing import Any

from triton.compiler import CompiledKernel


class Relaunch:
    """Launches of ``kernel`` (a ``@triton.jit`` function) over ``grid`` with the keywords ``kwargs``
    (its trailing parameters, the constexprs, and the launch options such as ``num_warps``): one
    compiled variant. Call it with the leading parameters, positional."""

    def __init__(self, kernel: Any, grid: tuple[int, ...], **kwargs: Any) -> None:
        # three dimensions: the compiled kernel's launcher reads all three (Triton's path pads them)
        self.kernel, self.grid, self.kwargs = kernel, (*grid, 1, 1)[:3], kwargs
        params = getattr(kernel, "params", [])  # none under the interpreter
        self.names = [p.name for p in params]
        self.free = {i for i, p in enumerate(params) if p.do_not_specialize}
        # after a launch through Triton: its positional arguments, the compiled kernel's launcher and
        # the keywords' values in parameter order
        self.first: tuple = ()
        self.runner: Any = None
        self.tail: list = []

    def __call__(self, *args: Any) -> None:
        if self.runner is not None and self._same(args):
            self.runner(*args, *self.tail)
            return
        compiled = self.kernel[self.grid](*args, **self.kwargs)
        rest = self.names[len(args) :]
        if isinstance(compiled, CompiledKernel) and all(n in self.kwargs for n in rest):
            # what Triton's own launch passes: every parameter's value in order, constexprs included
            self.first, self.runner, self.tail = args, compiled[self.grid], [self.kwargs[n] for n in rest]

    def _same(self, args: tuple) -> bool:
        """Whether ``args`` specialise as the first launch's did: the same tensors (by identity) and
        equal scalars of the same type, but for the unspecialised ints, which may take any value."""
        first = self.first
        if len(args) != len(first):
            return False
        # the identity test in C over all of them (most are), Python only for those that differ
        for i in compress(count(), map(is_not, first, args)):
            a, b = first[i], args[i]
            if type(a) is not type(b) or not isinstance(a, int | float):
                return False
            if a != b and not (i in self.free and type(a) is int):
                return False
        return True
