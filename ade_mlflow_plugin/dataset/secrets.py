"""Moved to the core: ade_mlflow_plugin/secret_scan.py (the backend scans what ships with it too, and a wing
imports no other wing). Kept only until the tests import the new module; nothing in the package uses it."""
from __future__ import annotations

from ade_mlflow_plugin.secret_scan import (candidate_rows, configure, drop_secret_lines, private_key_rows,
                                           scan_rows, secret_rows)

__all__ = ["candidate_rows", "configure", "drop_secret_lines", "private_key_rows", "scan_rows", "secret_rows"]
