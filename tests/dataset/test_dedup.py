"""Duplicates: exact and near copies of a unit are mined once; sketches match datasketch's."""
from __future__ import annotations

import numpy as np
from datasketch import MinHash, MinHashLSH

from ade_mlflow_plugin.dataset import build_dataset, dedup, minhash
from ade_mlflow_plugin.dataset.pool import mine_all
from ade_mlflow_plugin.dataset.walk import walk_codebase

DUPLICATE_BODY = "running -= values[index - window]"


def sketch_spans(src: bytes, spans: list[tuple[int, int]]) -> tuple[np.ndarray, list[bytes]]:
    """MinHash values and exact-duplicate keys of byte ranges [start, end) of src, as mining computes them."""
    text = minhash.CompactText(src)
    ranges = [(int(text.cum[s]), int(text.cum[e])) for s, e in spans]
    return text.sketches(ranges), [text.key(s, e) for s, e in ranges]


def sketch_batch(texts: list[str]) -> np.ndarray:
    """Sketches of whole texts (one row each)."""
    return np.concatenate([sketch_spans(t.encode(), [(0, len(t.encode()))])[0] for t in texts], axis=0)


def test_planted_duplicate_function_is_mined_once(codebase):
    files = mine_all(walk_codebase(codebase).files, progress=False)
    kept, drops = dedup.dedup_units(files)
    survivors = [(mf.path, u.name) for mf, flags in zip(files, kept) for u, k in zip(mf.units, flags)
                 if k and u.name == "planted_duplicate_function"]
    assert survivors == [("src/app/analytics.py", "planted_duplicate_function")]  # first in path order
    assert drops["duplicate_exact"] == 1  # stats.py: same code, other whitespace
    assert drops["duplicate_near"] == 1  # reports.py: one message changed


def test_planted_duplicate_appears_once_in_the_dataset(codebase):
    prepared = build_dataset(codebase, None, num_examples=100_000, synthetic_ratio=0.5, log_to_mlflow=False,
                             progress=False)
    paths = set()
    for split in ("train", "eval"):
        for row in prepared.dataset[split]:
            if DUPLICATE_BODY in minhash.normalise(row["prompt"] + "\n" + row["completion"]):
                paths.add(row["path"])
    assert paths == {"src/app/analytics.py"}
    # the other units of the files holding copies are still mined
    assert {"src/app/stats.py", "src/app/reports.py"} <= set(prepared.dataset["train"]["path"]) | set(
        prepared.dataset["eval"]["path"])


def test_sketches_equal_datasketch_update_batch():
    texts = ["def f(x):\n    return x + 1  # a comment long enough to shingle", "tiny",
             "class A:\n    pass\n" * 20, ""]
    batch = sketch_batch(texts)
    a, b = MinHash(num_perm=minhash.NUM_PERM, seed=minhash.SEED).permutations
    assert np.array_equal(minhash.permutations()[0], a) and np.array_equal(minhash.permutations()[1], b)
    for text, row in zip(texts, batch):
        hashes = minhash.shingle_hashes(np.frombuffer("".join(text.split()).encode(), np.uint8))
        sampled = [int(h) for h in hashes if h % minhash.SAMPLE_MOD == 0]
        reference = MinHash(num_perm=minhash.NUM_PERM, seed=minhash.SEED, hashfunc=lambda v: v)
        if sampled:
            reference.update_batch(sampled)
        assert np.array_equal(reference.hashvalues, row)


def test_band_parameters_are_datasketch_choice():
    lsh = MinHashLSH(threshold=dedup.DEFAULT_THRESHOLD, num_perm=minhash.NUM_PERM)
    assert dedup.band_params(dedup.DEFAULT_THRESHOLD) == (lsh.b, lsh.r)
    other = MinHashLSH(threshold=0.7, num_perm=minhash.NUM_PERM)
    assert dedup.band_params(0.7) == (other.b, other.r)


def test_spans_share_one_pass_and_match_whole_texts():
    src = b"class A:\n    def f(self):\n        return 1 + 2 + 3 + 4\n\n    def g(self):\n        return 5\n"
    spans = [(0, len(src)), (13, 58)]
    sketches, keys = sketch_spans(src, spans)
    assert np.array_equal(sketches, sketch_batch([src.decode(), src[13:58].decode()]))
    reindented = b"def f(self):\n  return 1+2+3+4"
    again, again_keys = sketch_spans(reindented, [(0, len(reindented))])
    assert again_keys[0] == keys[1] and np.array_equal(again[0], sketches[1])


def test_near_duplicate_estimate_tracks_jaccard():
    base = "\n".join(f"    total += values[{i}] * weights[{i}]" for i in range(60))
    edited = base.replace("values[7]", "items[7]")
    unrelated = "\n".join(f"    name_{i} = lookup('{i * 7}')" for i in range(60))
    sk = sketch_batch([base, edited, unrelated])
    assert (sk[0] == sk[1]).mean() >= dedup.DEFAULT_THRESHOLD
    assert (sk[0] == sk[2]).mean() < 0.3
