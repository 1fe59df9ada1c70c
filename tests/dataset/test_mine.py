"""What mining workers send back (MinedFile pickling) and the process state a build leaves behind."""
from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest

from ade_mlflow_plugin.dataset import build_dataset
from ade_mlflow_plugin.dataset.mine import mine_file
from ade_mlflow_plugin.dataset.walk import walk_codebase


def test_mined_file_survives_the_trip_from_a_worker(codebase):
    sources = [f for f in walk_codebase(codebase).files if f.rel in ("src/app/stats.py", "src/app/inventory.py")]
    assert len(sources) == 2
    for source in sources:
        mined = mine_file(source)
        assert mined.units and mined.chunks
        back = pickle.loads(pickle.dumps(mined, protocol=pickle.HIGHEST_PROTOCOL))
        assert (back.path, back.language, back.lines, back.skipped) == (mined.path, mined.language, mined.lines,
                                                                        mined.skipped)
        assert back.drops == mined.drops and back.unit_keys == mined.unit_keys
        assert np.array_equal(back.sketches, mined.sketches)
        assert back.text_lines == mined.text_lines
        # units and chunks share one line list again (texts are cut from it on demand)
        assert all(u.lines is back.text_lines for u in back.units)
        assert all(c.lines is back.text_lines for c in back.chunks)
        for ours, theirs in zip(back.units, mined.units, strict=True):
            assert (ours.code, ours.header, ours.body, ours.docstring, ours.code_nodoc, ours.signature) == \
                   (theirs.code, theirs.header, theirs.body, theirs.docstring, theirs.code_nodoc, theirs.signature)
        assert [(c.context, c.text, c.key) for c in back.chunks] == [(c.context, c.text, c.key) for c in mined.chunks]


def test_a_skipped_file_pickles(tmp_path):
    (tmp_path / "empty.py").write_text("")
    mined = mine_file(walk_codebase(tmp_path).files[0])
    back = pickle.loads(pickle.dumps(mined))
    assert back.skipped == mined.skipped and back.units == [] and back.chunks == []


def test_build_leaves_the_garbage_collector_as_it_found_it(codebase):
    assert gc.isenabled()
    build_dataset(codebase, None, num_examples=10, synthetic_ratio=0.3, log_to_mlflow=False, progress=False,
                  workers=2)
    assert gc.isenabled()
    gc.disable()
    try:
        build_dataset(codebase, None, num_examples=10, synthetic_ratio=0.3, log_to_mlflow=False, progress=False,
                      workers=1)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_missing_dependency_fails_loudly_instead_of_skipping_every_file(codebase, monkeypatch):
    from ade_mlflow_plugin.dataset import mine

    def scanner_gone(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - what an uninstalled detect-secrets raises
        raise ModuleNotFoundError("No module named 'detect_secrets'")

    monkeypatch.setattr(mine, "secret_rows", scanner_gone)
    source = walk_codebase(codebase).files[0]
    with pytest.raises(ModuleNotFoundError, match="detect_secrets"):
        mine_file(source)
