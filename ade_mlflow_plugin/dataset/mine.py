"""Mine one file: read, strip licence, find secret lines, parse, cut units and chunks, sketch units.

Runs in worker processes (see pool.py), so it imports no torch/transformers/datasets and returns only
plain, picklable data.
"""
from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from operator import attrgetter

import numpy as np

from ade_mlflow_plugin.dataset.languages import DISPLAY_NAME, SPECS, parser_for
from ade_mlflow_plugin.dataset.licence import strip_licence_header
from ade_mlflow_plugin.dataset.minhash import CompactText
from ade_mlflow_plugin.dataset.units import CodeUnit, extract_units
from ade_mlflow_plugin.dataset.walk import SourceFile, content_skip_reason
from ade_mlflow_plugin.secret_scan import secret_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MineOptions:
    """Knobs of mining; the defaults suit a 2k-token context."""

    chunk_lines: int = 16
    context_lines: int = 32
    min_chunk_nonblank: int = 4
    # Units longer than this are skipped before any example is made: build sets it to 8 characters per
    # allowed token, twice what code tokenisers average, so only units that cannot fit are lost.
    max_unit_chars: int = 16_384


@dataclass(slots=True)
class Chunk:
    """The next lines of a file after its preceding context; texts are cut from the file's lines on demand
    (contexts overlap, so storing them would triple the data workers send back)."""

    start_line: int  # 1-based first line of the chunk
    end_line: int  # 1-based last line
    context_line: int  # 1-based first line of the context
    key: bytes  # exact-duplicate key: hash of the chunk without whitespace
    lines: list[str]  # the whole file's lines, shared by its chunks and units

    @property
    def context(self) -> str:
        return "\n".join(self.lines[self.context_line - 1:self.start_line - 1]).strip("\n") + "\n"

    @property
    def text(self) -> str:
        return "\n".join(self.lines[self.start_line - 1:self.end_line]).rstrip() + "\n"


@dataclass(slots=True)
class MinedFile:
    path: str
    language: str
    lines: int = 0
    units: list[CodeUnit] = field(default_factory=list)
    sketches: np.ndarray | None = None  # (units, NUM_PERM) MinHash values
    unit_keys: list[bytes] = field(default_factory=list)  # exact-duplicate keys, one per unit
    chunks: list[Chunk] = field(default_factory=list)
    drops: Counter = field(default_factory=Counter)
    skipped: str | None = None  # reason the whole file was skipped
    timings: Counter = field(default_factory=Counter)
    text_lines: list[str] | None = None  # the lines its units and chunks share

    def __reduce__(self):
        # Workers send every MinedFile to the parent. Pickled object by object, the stdlib's ~43k units and
        # chunks take ~0.5 s to dump in the workers and ~0.3 s to load in the parent (which shares the
        # cores with them); as one text per file and rows of plain tuples, ~0.1 s each.
        text = None if self.text_lines is None else "\n".join(self.text_lines)
        return _unpack_mined, (self.path, self.language, self.lines, text, list(map(_UNIT_STATE, self.units)),
                               self.sketches, self.unit_keys, list(map(_CHUNK_STATE, self.chunks)),
                               dict(self.drops), self.skipped, dict(self.timings))


_UNIT_NAMES = [f.name for f in fields(CodeUnit) if f.name != "lines"]
_UNIT_STATE = attrgetter(*_UNIT_NAMES)
_UNIT_LINES_AT = [f.name for f in fields(CodeUnit)].index("lines")
_CHUNK_STATE = attrgetter("start_line", "end_line", "context_line", "key")


def _unpack_mined(path, language, lines, text, units, sketches, unit_keys, chunks, drops, skipped,
                  timings) -> MinedFile:
    """MinedFile.__reduce__'s inverse: units and chunks share one line list again, as in the worker."""
    shared = None if text is None else text.split("\n")  # exact: no line holds a "\n"
    at = _UNIT_LINES_AT
    return MinedFile(path=path, language=language, lines=lines,
                     units=[CodeUnit(*state[:at], shared, *state[at:]) for state in units],
                     sketches=sketches, unit_keys=unit_keys,
                     chunks=[Chunk(*state, shared) for state in chunks], drops=Counter(drops), skipped=skipped,
                     timings=Counter(timings), text_lines=shared)


def _read(source: SourceFile, mined: MinedFile) -> bytes | None:
    try:
        with open(source.abs, "rb") as handle:
            data = handle.read()
    except OSError:
        mined.skipped = "unreadable"
        return None
    mined.skipped = content_skip_reason(data)
    return None if mined.skipped else data


def mine_file(source: SourceFile, options: MineOptions = MineOptions()) -> MinedFile:
    """Everything the dataset builder needs from one file; a file that fails is skipped, not fatal."""
    mined = MinedFile(path=source.rel, language=DISPLAY_NAME.get(source.language, source.language))
    try:
        _mine(source, options, mined)
    except ImportError:  # a missing or changed dependency (detect-secrets, a grammar) fails every file: say so
        raise
    except Exception:  # noqa: BLE001 - one odd file must not sink the whole dataset; it is counted
        logger.warning("skipping %s: mining it failed", source.rel, exc_info=True)
        mined.skipped, mined.units, mined.chunks, mined.text_lines = "mine_error", [], [], None
        mined.sketches, mined.unit_keys = None, []
    return mined


def _mine(source: SourceFile, options: MineOptions, mined: MinedFile) -> None:
    clock = time.perf_counter()
    data = _read(source, mined)
    if data is None:
        return
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    mined.lines, mined.text_lines = len(lines), lines
    if strip_licence_header(lines, SPECS[source.language].line_comment):
        mined.drops["licence_header"] += 1
        text = "\n".join(lines)
    src = text.encode("utf-8")
    now = time.perf_counter()
    mined.timings["read"] += now - clock
    secrets = secret_rows(text, lines, source.rel)
    clock, now = now, time.perf_counter()
    mined.timings["secret_scan"] += now - clock
    tree = parser_for(source.language).parse(src)
    clock, now = now, time.perf_counter()
    mined.timings["parse"] += now - clock
    units = extract_units(source.rel, source.language, src, lines, tree)
    mined.units = _keep_units(units, secrets, options, mined.drops)
    compact = CompactText(src)
    mined.chunks = _chunks(lines, compact, secrets, options, mined.drops)
    clock, now = now, time.perf_counter()
    mined.timings["extract"] += now - clock
    ranges = [compact.rows_range(u.start_line - 1, u.end_line - 1) for u in mined.units]
    mined.unit_keys = [compact.key(start, end) for start, end in ranges]
    mined.sketches = compact.sketches(ranges)
    mined.timings["sketch"] += time.perf_counter() - now


def _touches(rows: set[int], first: int, last: int) -> bool:
    """Whether any 0-based row in rows lies in [first, last]."""
    if not rows:
        return False
    if last - first < len(rows):
        return any(r in rows for r in range(first, last + 1))
    return any(first <= r <= last for r in rows)


def _keep_units(units: list[CodeUnit], secrets: set[int], options: MineOptions, drops: Counter) -> list[CodeUnit]:
    kept = []
    for unit in units:
        if _touches(secrets, unit.doc_start_line - 1, unit.end_line - 1):
            drops["unit_secret"] += 1
        elif unit.chars > options.max_unit_chars:
            drops["unit_too_long"] += 1
        else:
            kept.append(unit)
    return kept


def _chunks(lines: list[str], compact: CompactText, secrets: set[int], options: MineOptions,
            drops: Counter) -> list[Chunk]:
    nonblank = compact.nonblank_prefix()
    first = bisect.bisect_left(nonblank, 1) - 1 if nonblank[-1] else len(lines)
    secret_rows = sorted(secrets)
    chunks = []
    for start in range(first + options.chunk_lines, len(lines), options.chunk_lines):
        end = min(start + options.chunk_lines, len(lines))
        if nonblank[end] - nonblank[start] < options.min_chunk_nonblank:
            continue
        ctx_start = max(first, start - options.context_lines)
        if secret_rows and bisect.bisect_left(secret_rows, ctx_start) < bisect.bisect_left(secret_rows, end):
            drops["chunk_secret"] += 1
            continue
        if nonblank[start] - nonblank[ctx_start] > 0:
            chunks.append(Chunk(start + 1, end, ctx_start + 1, compact.key(*compact.rows_range(start, end - 1)), lines))
    return chunks
