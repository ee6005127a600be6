"""The package's shape, checked statically: imports run one way with no cycle (function-local
imports included), no private name crosses a module, modules are small and say their job,
the index and the app never import torch, the app reads an index through one module, and
the protocol values are written once."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "groco"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, str]]:
    """``(module imported, name imported or "")`` for every import in ``name``'s file,
    function-local and ``TYPE_CHECKING`` ones included, relative ones resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full, "") if full in MODULES else (base, alias.name))
    return [(module, what) for module, what in found if module.split(".")[0] == "groco"]


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        targets = set()
        for module, _ in _imports(name):
            while module and module not in MODULES:
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's
    ``__init__`` importing its own submodules is not a cycle with them."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def edges(v: str) -> set[str]:
        return {w for w in graph[v] if not (w.startswith(v + ".") and MODULES[v].name ==
                                            "__init__.py")}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_cycle_detection_sees_function_local_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    saved = dict(MODULES)
    MODULES.update({k: tmp_path / f"{k}.py" for k in graph})
    try:
        assert _cycles(graph) == [["a", "b", "c"]]
    finally:
        MODULES.clear()
        MODULES.update(saved)


def test_no_private_name_crosses_a_module():
    crossing = [f"{name} imports {module}.{what}" for name in MODULES
                for module, what in _imports(name)
                if what.startswith("_") and not what.startswith("__")]
    assert crossing == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_says_its_job(name):
    path = MODULES[name]
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_LINES, f"{path}: {len(source.splitlines())} lines"
    if source.strip():
        assert ast.get_docstring(ast.parse(source)), f"{path}: no opening docstring"


def test_index_and_app_run_without_torch():
    heavy = {"torch", "timm", "torchvision"}
    offenders = [f"{name} imports {module}" for name in MODULES
                 if name.startswith(("groco.index", "groco.app"))
                 for module, _ in _all_imports(name) if module.split(".")[0] in heavy]
    assert offenders == []


def test_a_search_server_starts_without_torch():
    """What `groco serve` and `groco index build` load: no torch, no timm, at any depth."""
    code = ("import sys, groco.index.api, groco.index.build, groco.app.web\n"
            "print(sorted({'torch', 'timm'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _all_imports(name: str) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found += [(node.module or "", alias.name) for alias in node.names]
    return found


def test_the_app_reads_an_index_through_one_module():
    used = {module for name in MODULES if name.startswith("groco.app")
            for module, _ in _imports(name) if module.startswith("groco.index")}
    assert used == {"groco.index.api"}, sorted(used)


def _numbers_in_code(value: str) -> list[str]:
    """Where ``value`` is written as a number in groco/ code (docstrings and comments
    aside)."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(value)}(?![\w])")
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float) \
                    and pattern.fullmatch(repr(node.value)):
                found.append(f"{name}:{node.lineno}")
    return found


@pytest.mark.parametrize("value", ["0.95", "0.07"])
def test_recall_target_and_knn_temperature_are_written_once(value):
    assert len(_numbers_in_code(value)) == 1, _numbers_in_code(value)
