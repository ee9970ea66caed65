"""Triton's launch path without a GPU: a driver that names an sm_90 device, and compiled kernels that
record what their launcher receives instead of launching. Triton's own binding, specialisation,
compile-cache lookup and launch metadata run as on a GPU; nothing is compiled and nothing runs. For
measuring the host's cost of launches (``scripts/bench_host_launches.py``) and testing what reaches
the launcher (``tests/test_relaunch.py``) on a machine with no GPU."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from triton.backends.compiler import GPUTarget
from triton.compiler import CompiledKernel
from triton.runtime import driver
from triton.runtime.jit import JITFunction


class Sm90Driver:
    """An sm_90 device 0 whose current stream is ``stream``."""

    def __init__(self, stream: int = 0) -> None:
        self.stream = stream

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return self.stream

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)


class RecordingKernel(CompiledKernel):
    """A compiled kernel with no binary; its launcher appends its arguments to ``calls`` (if given)."""

    def __init__(self, name: str, calls: list | None = None) -> None:  # not CompiledKernel's: no binary
        self.src, self.module, self.name, self.metadata = None, None, name, None
        self.function, self.packed_metadata, self.calls = "function", "metadata", calls

    def _init_handles(self) -> None:
        pass

    def run(self, *args) -> None:
        if self.calls is not None:
            self.calls.append(args)


@contextlib.contextmanager
def no_gpu(
    calls: list | None = None, on_compile: Callable[[JITFunction], None] | None = None, stream: int = 0
) -> Iterator[None]:
    """Within: Triton's active driver is :class:`Sm90Driver` and every compile stores a
    :class:`RecordingKernel` (appending to ``calls``) in the JIT function's cache, after calling
    ``on_compile`` with that function."""

    def compile_(self, key, signature, device, constexprs, options, attrs, warmup):
        if on_compile is not None:
            on_compile(self)
        kernel = self.device_caches[device][0][key] = RecordingKernel(self.__name__, calls)
        return kernel

    active, do_compile = driver._active, JITFunction._do_compile
    driver.set_active(Sm90Driver(stream))
    JITFunction._do_compile = compile_
    try:
        yield
    finally:
        driver._active, JITFunction._do_compile = active, do_compile
