"""The job side imports nothing from the client side (backend/): what runs in the job travels in the
code archive's bundle, and the job fetches its own code with boto3 (bootstrap.py), not backend/aws.py."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import ade_mlflow_plugin.job


def test_no_job_module_imports_the_backend():
    modules = [f"ade_mlflow_plugin.job.{m.name}" for m in pkgutil.iter_modules(ade_mlflow_plugin.job.__path__)]
    assert "ade_mlflow_plugin.job.launcher" in modules and "ade_mlflow_plugin.job.contract" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('ade_mlflow_plugin.backend')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"the job imported client modules: {result.stdout}"


def test_no_job_module_imports_the_backend_even_inside_a_function():
    import ast
    from pathlib import Path

    for source in Path(ade_mlflow_plugin.job.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith("ade_mlflow_plugin.backend")], source.name
