"""The package's dependencies point one way (docs/ARCHITECTURE.md): every import, function-level
ones included, goes to the same layer or a lower one, and no modules import each other in a
circle. Only imports under ``if TYPE_CHECKING:`` are exempt."""
from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "vkd_torchreid"
#: Lowest first; a module may import from its own layer and the ones below.
LAYERS: Tuple[Tuple[str, ...], ...] = (
    ("compat", "utils"),
    ("models", "losses", "evaluation", "search"),
    ("data", "synthetic"),
    ("config",),
    ("engine",),
    ("cli", "apps"),
)
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
#: Names of the package root a module may import (the root itself registers everything).
ROOT_NAMES = {"__version__"}


def _modules() -> Dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    base = os.path.join(REPO, PACKAGE)
    for folder, _, files in os.walk(base):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(folder, name)
    return out


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports(module: str) -> Iterator[Tuple[str, int]]:
    """(imported module of the package, line) for every import in ``module``'s file."""
    path = MODULES[module]
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    skip = _type_checking_nodes(tree)
    is_pkg = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_pkg else module.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:
                    yield sub, node.lineno
                elif base == PACKAGE and alias.name in ROOT_NAMES:
                    continue
                else:
                    yield base, node.lineno


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package root: above everything
    if parts[1] not in LAYER:
        raise AssertionError(f"{module}: package part {parts[1]!r} is in no layer; add it to "
                             "LAYERS here and to docs/ARCHITECTURE.md")
    return LAYER[parts[1]]


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != PACKAGE and module != f"{PACKAGE}.configs":
            _layer(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != PACKAGE))
def test_imports_point_down(module):
    here = _layer(module) if module != f"{PACKAGE}.configs" else 0
    bad = [f"line {line}: {target} (layer {_layer(target)} > {here})"
           for target, line in imports(module) if _layer(target) > here]
    assert not bad, f"{module} (layer {here}) imports upward: {bad}"


def test_no_import_cycles():
    graph: Dict[str, List[str]] = {m: sorted({t for t, _ in imports(m)} - {m}) for m in MODULES}
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    src = ("from typing import TYPE_CHECKING\n"
           "if TYPE_CHECKING:\n    from vkd_torchreid.engine import base\n"
           "def f():\n    from vkd_torchreid.engine import evaluator\n"
           "from ..config import defaults\n")
    path = tmp_path / "probe.py"
    path.write_text(src, encoding="utf-8")
    monkeypatch.setitem(MODULES, f"{PACKAGE}.data.probe", str(path))
    found = sorted(t for t, _ in imports(f"{PACKAGE}.data.probe"))
    assert found == [f"{PACKAGE}.config.defaults", f"{PACKAGE}.engine.evaluator"]
    assert _layer(found[1]) > _layer(f"{PACKAGE}.data.probe")  # would be reported
