import logging
import os

# Kernel tests run in Triton's interpreter on CPU unless a GPU run sets TRITON_INTERPRET=0. Set it
# before any test module imports triton: the interpreter must be chosen before triton is imported,
# and a module collected early (e.g. the kernel report's) may import it first.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


def _nested_calls_without_repatching() -> None:
    """Triton's interpreter patches ``triton.language`` for a kernel launch and again on every call of a
    ``@triton.jit`` helper from inside it (inspecting every member of the module each time, ~0.3 ms),
    which was half the time of the per-token Muon kernel's tests. Inside a launch whose patch already
    covers the helper's language modules (its own, or an earlier helper's patch of ``tl.core`` for the
    reductions' combine functions, which the interpreter never restores), the helper runs without
    re-patching. Interpreter internals of Triton 3.x: where they are not as expected, nothing changes."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        import inspect

        import triton.language as tl
        from triton.runtime import interpreter as ti
    except ImportError:
        return
    fn_type, grid_type = getattr(ti, "InterpretedFunction", None), getattr(ti, "GridExecutor", None)
    if (
        fn_type is None
        or grid_type is None
        or not hasattr(fn_type, "rewrite")
        or not hasattr(ti, "_patch_lang")
    ):
        return
    patched: list[set[int]] = []  # the language modules patched in each launch in progress
    seen: dict[int, set[int]] = {}

    def langs(fn) -> set[int]:
        if id(fn) not in seen:
            seen[id(fn)] = {
                id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)
            }
        return seen[id(fn)]

    launch, call = grid_type.__call__, fn_type.__call__

    def grid_call(self, *args, **kwargs):
        patched.append(set(langs(self.fn)))
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    def fn_call(self, *args, **kwargs):
        if not patched or not langs(self.fn) <= patched[-1]:
            if patched:  # the first call that needs another module (tl.core: the reductions' helpers)
                patched[-1] |= langs(self.fn)
            return call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise ti.InterpreterError(repr(e)) from e

    grid_type.__call__, fn_type.__call__ = grid_call, fn_call


_nested_calls_without_repatching()

# The tests use small tensors, where one thread is as fast as two and never oversubscribes the
# 2-core CI machine (subprocess tests also run with OMP_NUM_THREADS=1).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def kernel_device():
    """Tensors and modules a kernel test makes live on ``mixer_checks.KERNEL_DEVICE`` (a module opts in
    with ``pytestmark = pytest.mark.usefixtures("kernel_device")``)."""
    from mixer_checks import KERNEL_DEVICE

    with KERNEL_DEVICE:
        yield KERNEL_DEVICE


@pytest.fixture(autouse=True)
def _memnets_logger():
    """Start every test with the ``memnets`` logger at its defaults: a training run in a module-scoped
    fixture (scripts that build a ``Trainer`` themselves) attaches a stdout handler and stops
    propagation, which would hide the test's records from ``caplog``."""
    log = logging.getLogger("memnets")
    saved = (list(log.handlers), log.propagate, log.level)
    log.handlers.clear()
    log.propagate, log.level = True, logging.NOTSET
    yield
    log.handlers[:], log.propagate, log.level = saved


def pytest_report_header(config) -> list[str]:
    """Say up front when the kernel tests cannot pass in Triton's interpreter: Triton 3.6's interpreter
    reads loop bounds with ``int()`` of a 1-element array, which NumPy 2.4 rejects (triton#9171, fixed
    after 3.6)."""
    try:
        import numpy
        import triton
    except ImportError:
        return []
    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    np_major, np_minor = (int(x) for x in numpy.__version__.split(".")[:2])
    if (major, minor) <= (3, 6) and (np_major, np_minor) >= (2, 4):
        return [
            f"WARNING: Triton {triton.__version__} with NumPy {numpy.__version__}: the kernel tests under "
            "TRITON_INTERPRET=1 will fail (triton#9171); install 'numpy<2.4' beside Triton 3.6"
        ]
    return []


def pytest_collection_modifyitems(config, items) -> None:
    """``MEMNETS_KERNEL_TESTS=quick`` (the GPU check's default): of each kernel test file's parametrized
    tests keep the first and the last case, so every test runs in its smallest and its largest setting
    while the compiles (most of a GPU run's time) halve; unparametrized tests all run."""
    if os.environ.get("MEMNETS_KERNEL_TESTS", "all") != "quick":
        return
    cases: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        if "kernel_device" in getattr(item, "fixturenames", ()):
            cases.setdefault((item.path.name, item.originalname), []).append(item)
    drop = {id(c) for group in cases.values() for c in group[1:-1]}
    if drop:
        config.hook.pytest_deselected(items=[i for i in items if id(i) in drop])
        items[:] = [i for i in items if id(i) not in drop]
