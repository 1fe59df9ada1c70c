"""Strip licence headers: the leading comment block of a file when it reads like a licence."""
from __future__ import annotations

import re

_LICENCE = re.compile(
    r"copyright|licen[cs]e|spdx-license-identifier|permission is hereby granted|all rights reserved"
    r"|without warranty", re.IGNORECASE)
_PREAMBLE = re.compile(r"^(#!|#.*coding[:=]|\s*$)")
#: Non-blank lines at the top of a file within which a licence block must start.
_SEARCH_ROWS = 5


def _comment_block(lines: list[str], start: int, line_comment: str) -> int:
    """End row (exclusive) of the comment block starting at start, or start when none."""
    first = lines[start].lstrip()
    if first.startswith("/*"):
        for row in range(start, len(lines)):
            if "*/" in lines[row]:
                return row + 1
        return start
    row = start
    while row < len(lines) and lines[row].lstrip().startswith(line_comment):
        row += 1
    return row


def strip_licence_header(lines: list[str], line_comment: str) -> int:
    """Blank (in place) the leading licence comment block; returns how many rows were blanked.

    Rows are blanked rather than removed so line numbers stay true to the file.
    """
    row, seen = 0, 0
    while row < len(lines) and seen < _SEARCH_ROWS:
        if _PREAMBLE.match(lines[row]) and not lines[row].lstrip().startswith(line_comment + " "):
            row += 1
            if lines[row - 1].strip():
                seen += 1
            continue
        end = _comment_block(lines, row, line_comment)
        if end == row:
            return 0
        if _LICENCE.search("\n".join(lines[row:end])):
            for i in range(row, end):
                lines[i] = ""
            return end - row
        row, seen = end, seen + 1
    return 0
