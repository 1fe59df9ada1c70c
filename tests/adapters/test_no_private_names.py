"""No third-party private name outside ade_mlflow_plugin/adapters/ (docs/internals.md's check, as a test)."""
from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "ade_mlflow_plugin"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Attribute reads on anything but self/cls, imports of private names or modules, and
    getattr/hasattr/setattr with a private literal."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("ade_mlflow_plugin"):
            parts = (node.module or "").split(".") + [alias.name for alias in node.names]
            found += [(node.lineno, f"from {node.module} import ...")] if any(map(_is_private, parts)) else []
        elif isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if any(map(_is_private, a.name.split(".")))]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in {"getattr", "hasattr", "setattr", "delattr"} and len(node.args) > 1:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and _is_private(name.value):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_private_names_appear_only_in_the_adapters():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "adapters" in path.relative_to(PACKAGE).parts:
            continue
        uses = _private_uses(ast.parse(path.read_text(), str(path)))
        offenders += [f"{path.relative_to(REPO_ROOT)}:{line}: {text}" for line, text in uses]
    assert not offenders, ("third-party private names outside ade_mlflow_plugin/adapters/ (put each behind an "
                           "adapter listed in docs/internals.md):\n" + "\n".join(offenders))


def test_the_check_sees_a_private_name():
    uses = _private_uses(ast.parse("import mlflow\nfrom mlflow.projects import _project_spec\n"
                                   "x = mlflow.projects.utils._fetch_project\nself._ok = getattr(x, '_y')\n"))
    assert [line for line, _ in uses] == [2, 3, 4]
