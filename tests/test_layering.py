"""The core/wing layering (shared/DESIGN.md, README "Architecture"), read from the import statements.

The core (options, config/, errors, hooks, the secret scanner, adapters/, job/ with its contract) imports no
wing; a wing (backend/, training/, dataset/, registry/) imports the core and itself, never another wing. The
one exception is DESIGN's "training/dataset inside the job": the training entry builds its dataset. The
entry modules (cli.py, launch.py, __init__.py, the MLproject's entry scripts) assemble the wings and may
import any of them. A wing that needs another's work fires a hook (hooks.py), as the backend does with
``ade_job_completed`` for the registry's landing.

Every ``import``/``from ... import`` statement counts, at any depth (a lazy import inside a function is
still a dependency), and so does ``importlib.import_module("literal")``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "ade_mlflow_plugin"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
#: The core; a new top-level module counts as core too (the strictest place) until it is named here.
CORE = frozenset({"options", "errors", "hooks", "secret_scan", "dataset_format", "gitignore", "config",
                  "adapters", "job", "memory_estimate"})
WINGS = frozenset({"backend", "training", "dataset", "registry"})
ENTRIES = frozenset({"__init__", "cli", "launch", "project"})
#: (importer wing, imported wing) pairs DESIGN allows, each with its reason.
ALLOWED = {("training", "dataset"): "inside the job, the training entry builds its dataset (DESIGN)"}
#: Imports that break the layering today, each with its way out; a test fails once one is gone, so the
#: entry goes too. Nothing may be added here.
KNOWN: dict[tuple[str, str], str] = {
}


def part_of(module: str) -> str:
    """The layer part of a dotted module name inside the package: its first component."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of this package's modules in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name` may import the submodule pkg.name: count both.
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported`` (dotted names), or None when it may."""
    src, dst = part_of(importer), part_of(imported)
    if src in ENTRIES or src == dst:
        return None
    if dst not in WINGS:
        # the core or an entry module; only the entries assemble the wings, and nothing below imports them
        return f"imports the entry module {dst}" if dst in ENTRIES - {"__init__"} else None
    if src not in WINGS:
        return f"the core ({src}) imports the wing {dst}"
    if (src, dst) in ALLOWED:
        return None
    return f"the wing {src} imports the wing {dst}: fire a hook (hooks.py) or move the shared part to the core"


def all_violations() -> tuple[list[str], set[tuple[str, str]]]:
    """(one line per offending import statement, the KNOWN pairs seen)."""
    problems, known = [], set()
    for path in sorted(ROOT.rglob("*.py")):
        module, lines_seen = module_name(path), set()
        for line, imported in imported_modules(path.read_text(encoding="utf-8"), module,
                                               path.name == "__init__.py"):
            why = violation(module, imported)
            pair = next((k for k in KNOWN if k[0] == module and (imported + ".").startswith(k[1] + ".")), None)
            if why and pair:
                known.add(pair)
            elif why and line not in lines_seen:
                lines_seen.add(line)
                problems.append(f"{path.relative_to(ROOT.parent)}:{line}: {imported}: {why}")
    return problems, known


def test_no_wing_imports_another_and_the_core_imports_no_wing():
    problems, known = all_violations()
    assert not problems, "layering (shared/DESIGN.md):\n" + "\n".join(problems)
    gone = set(KNOWN) - known
    assert not gone, f"fixed, so remove from KNOWN in tests/test_layering.py: {sorted(gone)}"


@pytest.mark.parametrize("importer, source, expected", [
    ("ade_mlflow_plugin.backend.monitor", "from ade_mlflow_plugin.registry.landing import land_run",
     "the wing backend imports the wing registry"),
    ("ade_mlflow_plugin.backend.monitor", "def f():\n    from ..registry import landing", "wing registry"),
    ("ade_mlflow_plugin.config.cloud", "import ade_mlflow_plugin.backend.ship_scan", "the core (config)"),
    ("ade_mlflow_plugin.job.launcher", "importlib.import_module('ade_mlflow_plugin.training.entry')",
     "the core (job) imports the wing training"),
    ("ade_mlflow_plugin.dataset.mine", "from ade_mlflow_plugin import secret_scan", None),
    ("ade_mlflow_plugin.training.pipeline", "from ade_mlflow_plugin.dataset import build_dataset", None),
    ("ade_mlflow_plugin.cli", "from ade_mlflow_plugin.registry import cli", None),
    ("ade_mlflow_plugin.registry.sync", "from ade_mlflow_plugin.cli import main", "entry module cli"),
    ("ade_mlflow_plugin.some_new_module", "import ade_mlflow_plugin.backend.aws", "the core (some_new_module)"),
])
def test_the_check_catches_what_it_should(importer, source, expected):
    found = [violation(importer, name) for _, name in imported_modules(source, importer, False)]
    problems = [why for why in found if why]
    if expected is None:
        assert not problems, problems
    else:
        assert problems and expected in problems[0], (found, expected)
