"""Exact and near-duplicate removal of units (and of chunks that would repeat them).

The first occurrence in path order is kept. Near duplicates: MinHash LSH banding with datasketch's own
band parameters for the threshold, done with numpy over all sketches at once (datasketch's MinHashLSH
costs ~30 us per unit in Python), then the estimated Jaccard of each candidate pair is checked.
"""
from __future__ import annotations

import hashlib
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


def _band_keys(sketches: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) int64 ids: equal ids in a column mean equal band values."""
    keys = np.empty((len(sketches), bands), dtype=np.int64)
    for band in range(bands):
        block = np.ascontiguousarray(sketches[:, band * rows:(band + 1) * rows])
        _, keys[:, band] = np.unique(block.view(f"V{block.shape[1] * 4}").ravel(), return_inverse=True)
    return keys


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
    sketches = np.concatenate([mf.sketches for mf in files if len(mf.units)], axis=0)
    _near(files, flat, sketches, kept, drops, threshold)
    return kept, drops


def _near(files, flat, sketches, kept, drops, threshold) -> None:
    bands, rows = band_params(threshold)
    keys = _band_keys(sketches, bands, rows).tolist()
    usable = ~(sketches == EMPTY).all(axis=1)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    spans = [(fi, files[fi].units[ui].start_line, files[fi].units[ui].end_line) for fi, ui in flat]
    for n, (fi, ui) in enumerate(flat):
        if not kept[fi][ui] or not usable[n]:
            continue
        others = {m for b in range(bands) for m in buckets[b].get(keys[n][b], ())}
        if any(not _nested(spans[n], spans[m]) and (sketches[n] == sketches[m]).mean() >= threshold
               for m in sorted(others)):
            kept[fi][ui] = False
            drops["duplicate_near"] += 1
            continue
        for b in range(bands):
            buckets[b].setdefault(keys[n][b], []).append(n)


def drop_repeating_chunks(files: list[MinedFile], kept: list[list[bool]]) -> Counter:
    """Drop chunks repeating an earlier chunk or overlapping a unit dropped as a duplicate."""
    drops: Counter = Counter()
    seen: set[bytes] = set()
    for fi, mf in enumerate(files):
        dup_spans = [(u.doc_start_line, u.end_line) for u, k in zip(mf.units, kept[fi]) if not k]
        chunks = []
        for chunk in mf.chunks:
            digest = hashlib.blake2b("".join(chunk.text.split()).encode(), digest_size=16).digest()
            first = chunk.start_line - chunk.context.count("\n")
            if digest in seen:
                drops["duplicate_exact"] += 1
            elif any(not (end < first or chunk.end_line < start) for start, end in dup_spans):
                drops["duplicate_near"] += 1
            else:
                chunks.append(chunk)
            seen.add(digest)
        mf.chunks = chunks
    return drops
