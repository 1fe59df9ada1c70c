"""detect-secrets: scan chosen lines of a file with every plugin and the file-scan filters.

secret_scan.py sends detect-secrets only the lines its pre-filter picks (a full scan of a codebase
is far too slow). The loop detect-secrets' file scan runs over lines,
``detect_secrets.core.scan._process_line_based_plugins(lines, filename)``, does exactly what is needed
for a list of (line number, line) pairs, so it is used while it exists. detect-secrets' public per-line
call, ``scan_line``, is meant for ad-hoc strings: it searches eagerly and skips the line filters, so it
flags far more (measured on 300 stdlib files: 106 of 132 candidate lines against 8), and every unit
touching a flagged line is dropped from the dataset.

Public fallback when a detect-secrets release renames it: the public ``scan_file`` over a temporary
file that holds just those lines, under the file's own name (the plugins pick their patterns by file
type). Same plugins, same filters, same neighbouring lines; the cost of a small file write per scanned
file (measured: see docs/internals.md). A rename is never silent: tests/adapters/test_detect_secrets.py
fails, and the first fallback scan logs a warning.
"""
from __future__ import annotations

import locale
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)
_PRIVATE = "_process_line_based_plugins"
_warned: list[bool] = []


def line_scanner() -> Callable[..., Iterable[Any]] | None:
    """detect-secrets' own loop over (line number, line) pairs; None when it is gone."""
    from detect_secrets.core import scan

    found = getattr(scan, _PRIVATE, None)
    return found if callable(found) else None


def flagged_line_numbers(lines: list[tuple[int, str]], filename: str, *, public_only: bool = False) -> set[int]:
    """Line numbers among ``lines`` (number, text) on which a detect-secrets plugin finds a secret.

    detect-secrets' plugins must be configured already (settings are process-wide).
    ``public_only`` forces the public fallback (tests and the benchmark compare the two).
    """
    scanner = None if public_only else line_scanner()
    if scanner is not None:
        return {secret.line_number for secret in scanner(lines, filename=filename)}
    if not public_only and not _warned:
        _warned.append(True)
        logger.warning("detect-secrets has no %s any more: scanning through its public scan_file (a "
                       "little slower); update ade_mlflow_plugin/adapters/detect_secrets.py", _PRIVATE)
    return _scan_as_file(lines, filename)


def _scan_as_file(lines: list[tuple[int, str]], filename: str) -> set[int]:
    """detect-secrets' public file scan over a temporary file holding just ``lines``."""
    from detect_secrets.core.scan import scan_file

    with tempfile.TemporaryDirectory(prefix="ade-secrets-") as folder:
        copy = Path(folder) / (Path(filename).name or "lines.txt")
        # scan_file reads with the locale's encoding and universal newlines: no \r may split a line.
        body = "".join(text.replace("\r", " ") + "\n" for _, text in lines)
        copy.write_text(body, encoding=locale.getpreferredencoding(False), errors="replace")
        hits = {secret.line_number for secret in scan_file(str(copy))}
    return {lines[number - 1][0] for number in hits if 0 < number <= len(lines)}
