"""Every adapter module has its own test here and its entry in docs/internals.md (house rule)."""
from __future__ import annotations

import pkgutil

from ade_mlflow_plugin import adapters
from tests.conftest import REPO_ROOT


def test_every_adapter_has_a_test_and_a_docs_entry():
    names = [m.name for m in pkgutil.iter_modules(adapters.__path__)]
    assert names
    docs = (REPO_ROOT / "docs" / "internals.md").read_text()
    untested = [name for name in names if not (REPO_ROOT / "tests" / "adapters" / f"test_{name}.py").is_file()]
    undocumented = [name for name in names if f"`{name}." not in docs]
    assert not untested, f"adapters without tests/adapters/test_<name>.py: {untested}"
    assert not undocumented, f"adapters missing from docs/internals.md (a `name.function` entry): {undocumented}"
