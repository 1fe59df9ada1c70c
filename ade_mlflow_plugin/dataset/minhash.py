"""MinHash sketches of code units, batched with numpy, bit-compatible with datasketch's MinHash.

datasketch hashes one set per call (~30 us per unit with its LSH); a codebase has tens of thousands of
units, so the sketches of a whole file are computed in one vectorised pass here, using datasketch's own
permutations and its "affine32" scheme (tests check the values equal datasketch's update_batch).
Shingles are 8-byte windows of the text with whitespace removed; only those whose hash is 0 mod
SAMPLE_MOD are kept, a content-defined sample, so two copies of the same code keep the same shingles.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

NUM_PERM = 64
SEED = 1
SHINGLE_BYTES = 8
SAMPLE_MOD = 8
EMPTY = np.uint32(0xFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 64-bit window -> well-spread 32 bits
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


@lru_cache(maxsize=1)
def permutations() -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for NUM_PERM and SEED.

    Drawn exactly as datasketch.MinHash draws them (tests compare the two), without importing datasketch
    in every worker: its import pulls scipy and costs ~1 s.
    """
    gen = np.random.RandomState(SEED)
    a = gen.randint(0, 1 << 31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, NUM_PERM, dtype=np.uint32)
    return a, b


def normalise(text: str) -> str:
    """Whitespace-collapsed text: the form both exact and near-duplicate checks compare."""
    return " ".join(text.split())


def fmix32(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before its permutations."""
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


def shingle_hashes(buf: np.ndarray) -> np.ndarray:
    """32-bit hashes of every SHINGLE_BYTES window of a uint8 buffer (one per start position)."""
    n = len(buf) - SHINGLE_BYTES + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint32)
    words = np.zeros(n, dtype=np.uint64)
    for i in range(SHINGLE_BYTES):
        words |= buf[i:i + n].astype(np.uint64) << np.uint64(8 * i)
    return ((words * _MIX) >> np.uint64(32)).astype(np.uint32)


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


class CompactText:
    """One file's bytes with whitespace removed, and where each line lands in them.

    Everything per line or per range (blank lines, exact-duplicate keys, MinHash sketches) is answered
    from this one numpy pass instead of Python work per line: whitespace-free text makes reindented or
    reflowed copies compare equal.
    """

    def __init__(self, src: bytes) -> None:
        buf = np.frombuffer(src, dtype=np.uint8)
        keep = ~_WHITESPACE[buf]
        self.compact = buf[keep]
        self._bytes = self.compact.tobytes()
        # kept bytes before each original byte position, 0..len(src)
        self.cum = np.concatenate([[0], np.cumsum(keep)])
        newlines = np.flatnonzero(buf == 10)
        self.line_starts = np.concatenate([[0], newlines + 1])
        self.line_ends = np.concatenate([newlines, [len(buf)]])

    def nonblank_prefix(self) -> list[int]:
        """nonblank_prefix()[i] = how many of the first i lines hold a non-whitespace byte."""
        nonblank = self.cum[self.line_ends] > self.cum[self.line_starts]
        return np.concatenate([[0], np.cumsum(nonblank)]).tolist()

    def rows_range(self, first_row: int, last_row: int) -> tuple[int, int]:
        """[start, end) in the compact text of 0-based rows first_row..last_row."""
        return int(self.cum[self.line_starts[first_row]]), int(self.cum[self.line_ends[last_row]])

    def key(self, start: int, end: int) -> bytes:
        """Exact-duplicate key of a compact range."""
        return hashlib.blake2b(self._bytes[start:end], digest_size=16).digest()

    def sketches(self, ranges: list[tuple[int, int]]) -> np.ndarray:
        """MinHash values of compact ranges. The file is shingled and permuted once; a range's sketch is
        the minimum over the windows inside it, so a class and its methods share the work."""
        out = np.full((len(ranges), NUM_PERM), EMPTY, dtype=np.uint32)
        hashes = shingle_hashes(self.compact)
        positions = np.flatnonzero(hashes % SAMPLE_MOD == 0)
        if len(positions) == 0 or not ranges:
            return out
        a, b = permutations()
        permuted = fmix32(hashes[positions])[:, None] * a[None, :] + b[None, :]
        bounds = np.array(ranges, dtype=np.int64).reshape(-1, 2)
        lo = np.searchsorted(positions, bounds[:, 0], side="left")
        hi = np.searchsorted(positions, bounds[:, 1] - SHINGLE_BYTES, side="right")
        for i in np.flatnonzero(hi > lo).tolist():
            out[i] = permuted[lo[i]:hi[i]].min(axis=0)
        return out
