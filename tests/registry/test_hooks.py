"""Hookspecs, the plugin manager (core: ade_mlflow_plugin.hooks), entry-point plugins and the docs."""
from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ade_mlflow_plugin import hookimpl, hooks
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.hooks import BUILTIN_SYNC_NAME, get_plugin_manager, hook_names, register_plugin
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from tests.registry.conftest import run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def test_every_hook_is_documented_with_its_signature():
    documented = dict(re.findall(r"^### `(ade_\w+)\(([^)]*)\)`", DOCS.read_text(), flags=re.M))
    assert hook_names(), "no hooks found"
    for name in hook_names():
        assert name in documented, f"docs/hooks.md does not document {name}"
        params = list(inspect.signature(getattr(hooks, name)).parameters)
        assert [p.strip() for p in documented[name].split(",")] == params, name
    assert set(documented) <= set(hook_names()), "docs/hooks.md documents a hook that does not exist"


def test_hooks_are_typed_and_have_docstrings():
    for name in hook_names():
        fn = getattr(hooks, name)
        assert fn.__doc__ and len(fn.__doc__.strip()) > 20, name
        assert all(p.annotation is not inspect.Parameter.empty
                   for p in inspect.signature(fn).parameters.values()), name


def test_the_core_imports_no_wing_and_finds_its_builtins_by_path():
    code = ("import sys, ade_mlflow_plugin.hooks as h; from ade_mlflow_plugin import hookimpl; "
            "assert hookimpl is h.hookimpl; "
            "print(sorted(m for m in sys.modules if m.startswith(('ade_mlflow_plugin.registry', "
            "'ade_mlflow_plugin.backend', 'ade_mlflow_plugin.job', 'mlflow'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    for name, path in hooks.BUILTIN_PLUGINS.items():
        module, _, attribute = path.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute, None)), f"{name}: {path} is gone"


def test_builtin_sync_is_a_plugin(tmp_path):
    pm = get_plugin_manager(ModelRegistryConfig(root=tmp_path, load_entry_points=False))
    plugin = pm.get_plugin(BUILTIN_SYNC_NAME)
    assert plugin is not None and plugin.config.root == tmp_path.resolve()
    impls = {h.plugin_name for h in pm.hook.ade_version_promoted.get_hookimpls()}
    assert BUILTIN_SYNC_NAME in impls


def test_misspelled_hook_implementation_is_refused(tmp_path):
    class Typo:
        @hookimpl
        def ade_after_synk(self, name, version, path, downloaded_bytes):  # noqa: ANN001
            pass

    pm = get_plugin_manager(ModelRegistryConfig(root=tmp_path, load_entry_points=False))
    with pytest.raises(ConfigError, match=r"plugin 'typo'.*ade_after_synk.*ade_after_sync"):
        register_plugin(pm, Typo(), "typo")


def test_cost_alert_reaches_a_plugin(tmp_path):
    seen = []

    class Budget:
        @hookimpl
        def ade_cost_alert(self, run_id, job_name, cost_usd, budget_usd, fraction, action):  # noqa: ANN001
            seen.append((job_name, fraction, action))

    pm = get_plugin_manager(ModelRegistryConfig(root=tmp_path, load_entry_points=False))
    register_plugin(pm, Budget(), "budget")
    pm.hook.ade_cost_alert(run_id="r", job_name="j", cost_usd=12.0, budget_usd=10.0, fraction=1.2,
                           action="stop")
    assert seen == [("j", 1.2, "stop")]


def _install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """A real installed distribution (dist-info with entry_points.txt) on sys.path."""
    module = f"ade_test_plugin_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    (site / f"{module}-1.0.dist-info").mkdir(parents=True)
    (site / f"{module}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (site / f"{module}-1.0.dist-info" / "entry_points.txt").write_text(
        f"[ade_mlflow_plugin]\n{module} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return module


def test_entry_point_plugin_is_loaded_and_called(tmp_path, monkeypatch):
    out = tmp_path / "alerts.txt"
    module = _install_plugin(tmp_path, monkeypatch, f"""
        from ade_mlflow_plugin import hookimpl

        @hookimpl
        def ade_cost_alert(run_id, job_name, cost_usd, budget_usd, fraction, action):
            open({str(out)!r}, "a").write(f"{{job_name}} {{action}}\\n")
    """)
    pm = get_plugin_manager(ModelRegistryConfig(root=tmp_path / "root"))
    assert pm.get_plugin(module) is not None
    pm.hook.ade_cost_alert(run_id="r", job_name="job-1", cost_usd=5.0, budget_usd=10.0, fraction=0.5,
                           action="warn")
    assert out.read_text() == "job-1 warn\n"


def test_entry_point_plugin_with_typo_fails_the_cli_in_one_line(tmp_path, monkeypatch, capsys):
    _install_plugin(tmp_path, monkeypatch, """
        from ade_mlflow_plugin import hookimpl

        @hookimpl
        def ade_version_promotd(name, version, alias, stage, previous_version):
            pass
    """)
    code, _, err = run_cli(["sync", "m/1", "--root", str(tmp_path / "root")], capsys)
    assert code == 2 and err.count("\n") == 1 and "ade_version_promotd" in err


def test_entry_point_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    module = _install_plugin(tmp_path, monkeypatch, "import a_module_that_does_not_exist\n")
    with pytest.raises(ConfigError, match=f"{module}.*failed to load.*ModuleNotFoundError"):
        get_plugin_manager(ModelRegistryConfig(root=tmp_path / "root"))
