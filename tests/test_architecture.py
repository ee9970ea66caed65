"""The package's shape: kernels import no model code, and no module imports one that imports it back.

Read from the source (every ``import`` statement, also those inside functions), not from
``sys.modules``, so an import that would only run on a GPU counts as well."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Module name -> file of every module of the package."""
    out = {}
    for top, name in ((ROOT / "memnets", "memnets"),):
        for f in top.rglob("*.py"):
            parts = [name, *f.relative_to(top).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``module`` imports (``from .x import y`` counts x, or x.y if a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n in known and n != module)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: _imports(m, f, known) for m, f in known.items()}


def test_kernels_import_no_model_code():
    graph = _graph()
    bad = {
        m: sorted(d for d in deps if not d.startswith("memnets.kernels"))
        for m, deps in graph.items()
        if m.startswith("memnets.kernels")
    }
    assert not {m: d for m, d in bad.items() if d}, bad


def test_no_import_cycles():
    """No module reaches itself through the import graph (a package's ``__init__`` importing its own
    submodules is how packages are built and is not a cycle unless a submodule imports it back)."""
    graph = _graph()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    cycles.append(" -> ".join([*path, dep]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert not cycles, "\n".join(sorted(cycles))


def test_mixers_do_not_branch_on_backends():
    """Which implementation runs is the dispatcher's choice (memnets.dispatch): no mixer compares a
    backend or names one in a comparison."""
    names = {"reference", "chunked", "triton"}
    found = []
    for f in sorted((ROOT / "memnets" / "mixers").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            parts = [node.left, *node.comparators]
            mentions_backend = any(
                (isinstance(p, ast.Name) and "backend" in p.id)
                or (isinstance(p, ast.Attribute) and "backend" in p.attr)
                or (isinstance(p, ast.Constant) and p.value in names)
                for p in parts
            )
            if mentions_backend:
                found.append(f"{f.name}:{node.lineno}")
    assert not found, found


def test_no_top_level_kernels_package():
    """Nothing at the repository root is importable as ``kernels``: with the root on ``sys.path``
    (``python train.py``, ``python -m pytest``) it would shadow Hugging Face's ``kernels``, which
    ``transformers`` imports on load."""
    assert not (ROOT / "kernels").exists() and not (ROOT / "kernels.py").exists()
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("transformers") is None:
        return
    run = subprocess.run(
        [sys.executable, "-c", "import transformers.modeling_utils"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
