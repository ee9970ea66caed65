"""memnets.kernels.relaunch: repeated launches reach Triton's launcher with exactly the arguments
Triton's own launch passes, and go back through Triton's path whenever the specialisation could
differ. No GPU here (:mod:`benchmarks.no_gpu_launch`): Triton's driver names an sm_90 device, and
the compiled kernel records what its launcher receives; the binding, specialisation and cache lookup
that run are Triton's own. (Under the interpreter, which the kernel tests use, every
launch takes Triton's path: those tests cover the results.)"""

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.runtime.jit import JITFunction  # noqa: E402

from benchmarks.no_gpu_launch import no_gpu  # noqa: E402
from memnets.kernels.relaunch import Relaunch  # noqa: E402


def _kernel(x, y, n, c, BLOCK: triton.language.constexpr):  # the source only: never compiled here
    pass


def _plain(calls: list) -> list:
    """The launcher's arguments with the launch metadata (a fresh lazy dict per launch) as its dict."""
    return [(*call[:6], call[6] and call[6].get(), *call[7:]) for call in calls]


@pytest.fixture
def kernel(monkeypatch):
    """``_kernel`` as a JIT function (``c`` unspecialised) on an sm_90 device that runs nothing
    (stream 7); ``.calls`` records what the launcher got, ``.jit`` counts launches through Triton's
    path, ``.compiles`` its compiles."""
    fn = JITFunction(_kernel, do_not_specialize=["c"])
    fn.calls, fn.jit, fn.compiles = [], [], []
    run = fn.run
    monkeypatch.setattr(fn, "run", lambda *a, **k: fn.jit.append(1) or run(*a, **k))
    with no_gpu(fn.calls, on_compile=fn.compiles.append, stream=7):
        yield fn


def test_repeated_launches_pass_what_triton_passes(kernel):
    x, y = torch.zeros(64), torch.zeros(64)
    launch = Relaunch(kernel, (4, 2), BLOCK=64, num_warps=8)
    for c in range(20):  # 0, 1 and 16 would each be a variant of their own if c were specialised
        launch(x, y, 3, c)
    assert len(kernel.jit) == 1 and len(kernel.compiles) == 1
    direct = list(kernel.calls)
    kernel.calls.clear()
    for c in range(20):  # Triton's own launches, for comparison
        kernel[(4, 2)](x, y, 3, c, BLOCK=64, num_warps=8)
    assert len(kernel.compiles) == 1
    assert _plain(direct) == _plain(kernel.calls)
    assert [call[-2] for call in direct] == list(range(20))  # c reaches the launcher, BLOCK after it
    assert direct[0][:4] == (4, 2, 1, 7)  # the grid (padded to 3-D) and the current stream


def test_anything_else_goes_back_through_triton(kernel):
    x, y, z = torch.zeros(64), torch.zeros(64), torch.zeros(64)
    launch = Relaunch(kernel, (4,), BLOCK=64)
    launch(x, y, 3, 0)
    launch(x, y, 3, 1)
    assert len(kernel.jit) == 1
    launch(x, z, 3, 2)  # another tensor (its alignment could differ)
    assert len(kernel.jit) == 2 and len(kernel.compiles) == 1
    launch(x, z, 16, 3)  # a specialised int: 16 is a variant of its own
    assert len(kernel.jit) == 3 and len(kernel.compiles) == 2
    launch(x, z, 16, 4)  # the arguments of the last launch through Triton, but c
    launch(x, z, 16.0, 5)  # a float where an int was: Triton's path
    assert len(kernel.jit) == 4
    launch(x, z, 16, 6)
    assert len(kernel.jit) == 5 and [call[-2] for call in kernel.calls] == list(range(7))
