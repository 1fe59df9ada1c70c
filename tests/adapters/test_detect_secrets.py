"""adapters.detect_secrets: detect-secrets' line loop is still there, and its public fallback flags the same lines."""
from __future__ import annotations

import inspect
import logging

import pytest

from ade_mlflow_plugin.adapters import detect_secrets as adapter
from ade_mlflow_plugin.secret_scan import configure, secret_rows
from tests.dataset.test_secrets import PLUGIN_LINES

CHANGED = "detect-secrets changed {name}: update ade_mlflow_plugin/adapters/detect_secrets.py and docs/internals.md"
# Neighbours that are not secrets, and a line detect-secrets' line filters let through.
LINES = ["import os", *PLUGIN_LINES, "x = 1", 'password = os.environ["DB_PASSWORD"]',
         'token = "AKIAZ7XQ3MPLWQKEGRTV"  # pragma: allowlist secret']


def test_line_loop_keeps_its_signature():
    from detect_secrets.core import scan

    found = adapter.line_scanner()
    assert found is not None, CHANGED.format(name="core.scan._process_line_based_plugins (gone)")
    assert list(inspect.signature(found).parameters) == ["lines", "filename"], CHANGED.format(
        name=f"core.scan._process_line_based_plugins{inspect.signature(found)}")
    assert callable(getattr(scan, "scan_file", None)), CHANGED.format(name="core.scan.scan_file (the fallback)")


@pytest.mark.parametrize("filename", ["fixture.py", "settings.yaml", "deploy/.env"])
def test_fallback_flags_exactly_what_the_line_loop_flags(filename):
    configure()
    numbered = [(10 + i, line) for i, line in enumerate(LINES)]  # the caller's own numbering comes back
    private = adapter.flagged_line_numbers(numbered, filename)
    assert len(private) >= len(PLUGIN_LINES) - 1  # every plugin but Telegram (filtered) fires
    assert 10 + LINES.index("x = 1") not in private and 10 + len(LINES) - 1 not in private  # allowlisted
    assert adapter.flagged_line_numbers(numbered, filename, public_only=True) == private


def test_a_rename_falls_back_loudly_and_drops_the_same_rows(monkeypatch, caplog):
    configure()
    text = "\n".join(LINES)
    expected = secret_rows(text, LINES, "fixture.py")
    # A release that renames the loop (scan_file keeps calling it under its new name).
    monkeypatch.setattr(adapter, "_PRIVATE", "_process_line_based_plugins_renamed")
    monkeypatch.setattr(adapter, "_warned", [])
    with caplog.at_level(logging.WARNING, logger=adapter.__name__):
        assert secret_rows(text, LINES, "fixture.py") == expected
    assert any("_process_line_based_plugins_renamed" in r.getMessage() for r in caplog.records)
