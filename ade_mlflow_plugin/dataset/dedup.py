"""Exact and near-duplicate removal of units (and of chunks that would repeat them).

The first occurrence in path order is kept. Near duplicates: MinHash LSH banding with datasketch's own
band parameters for the threshold, done with numpy over all sketches at once (datasketch's MinHashLSH
costs ~30 us per unit in Python), then the estimated Jaccard of each candidate pair is checked.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ade_mlflow_plugin.dataset.mine import MinedFile
from ade_mlflow_plugin.dataset.minhash import EMPTY, NUM_PERM

DEFAULT_THRESHOLD = 0.85


#: datasketch's MinHashLSH choice for DEFAULT_THRESHOLD and NUM_PERM (tests check it), saving its scipy import.
_KNOWN_BANDS = {(DEFAULT_THRESHOLD, NUM_PERM): (4, 15)}


def band_params(threshold: float) -> tuple[int, int]:
    """(bands, rows) datasketch's MinHashLSH picks for this threshold and NUM_PERM."""
    if (threshold, NUM_PERM) in _KNOWN_BANDS:
        return _KNOWN_BANDS[(threshold, NUM_PERM)]
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    return lsh.b, lsh.r


def _band_keys(sketches: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, bands) int64 ids (equal ids in a column mean equal band values), and whether each sketch
    shares at least one band with another: only those can be near duplicates."""
    keys = np.empty((len(sketches), bands), dtype=np.int64)
    shared = np.zeros(len(sketches), dtype=bool)
    for band in range(bands):
        block = np.ascontiguousarray(sketches[:, band * rows:(band + 1) * rows])
        _, keys[:, band], counts = np.unique(block.view(f"V{block.shape[1] * 4}").ravel(), return_inverse=True,
                                             return_counts=True)
        shared |= counts[keys[:, band]] > 1
    return keys, shared


def _nested(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two units of the same file contain one another (a class and its method)."""
    return a[0] == b[0] and not (a[2] < b[1] or b[2] < a[1])


def dedup_units(files: list[MinedFile], threshold: float = DEFAULT_THRESHOLD) -> tuple[list[list[bool]], Counter]:
    """Per file, per unit: keep or not; and drop counts by reason."""
    kept = [[True] * len(mf.units) for mf in files]
    drops: Counter = Counter()
    flat = [(fi, ui) for fi, mf in enumerate(files) for ui in range(len(mf.units))]
    if not flat:
        return kept, drops
    seen: set[bytes] = set()
    for fi, ui in flat:
        digest = files[fi].unit_keys[ui]
        if digest in seen:
            kept[fi][ui] = False
            drops["duplicate_exact"] += 1
        seen.add(digest)
    sketches = np.concatenate([mf.sketches for mf in files if mf.units], axis=0)
    _near(files, flat, sketches, kept, drops, threshold)
    return kept, drops


def _near(files, flat, sketches, kept, drops, threshold) -> None:
    bands, rows = band_params(threshold)
    keys, shared = _band_keys(sketches, bands, rows)
    shared &= ~(sketches == EMPTY).all(axis=1)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    for n in np.nonzero(shared)[0].tolist():  # in path order: the first copy is the one kept
        fi, ui = flat[n]
        if not kept[fi][ui]:
            continue
        unit, row_keys = files[fi].units[ui], keys[n].tolist()
        others = sorted({m for b in range(bands) for m in buckets[b].get(row_keys[b], ())})
        if any(not _nested((fi, unit.start_line, unit.end_line), _span(files, flat[m]))
               and (sketches[n] == sketches[m]).mean() >= threshold for m in others):
            kept[fi][ui] = False
            drops["duplicate_near"] += 1
            continue
        for b in range(bands):
            buckets[b].setdefault(row_keys[b], []).append(n)


def _span(files, ref: tuple[int, int]) -> tuple[int, int, int]:
    unit = files[ref[0]].units[ref[1]]
    return ref[0], unit.start_line, unit.end_line


def drop_repeating_chunks(files: list[MinedFile], kept: list[list[bool]]) -> Counter:
    """Drop chunks repeating an earlier chunk or overlapping a unit dropped as a duplicate."""
    drops: Counter = Counter()
    seen: set[bytes] = set()
    for fi, mf in enumerate(files):
        dup_spans = [(u.doc_start_line, u.end_line) for u, k in zip(mf.units, kept[fi]) if not k]
        chunks = []
        for chunk in mf.chunks:
            digest = chunk.key
            if digest in seen:
                drops["duplicate_exact"] += 1
            elif dup_spans and any(not (end < chunk.context_line or chunk.end_line < start) for start, end in dup_spans):
                drops["duplicate_near"] += 1
            else:
                chunks.append(chunk)
            seen.add(digest)
        mf.chunks = chunks
    return drops
