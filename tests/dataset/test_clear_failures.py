"""Issue 18 item 5, the dataset's clear failures: a prepared dataset whose eval split is empty loads, and
`prepare-data --out` to a place that cannot be written is one line, before any mining."""
from __future__ import annotations

import json

import pytest

from ade_mlflow_plugin.cli import main
from ade_mlflow_plugin.dataset import build, build_dataset, load_prepared

SINGLE_FILE = '''"""One module: a single-file codebase."""


def add(a, b):
    """Add two numbers and return the sum of them."""
    total = a + b
    return total


def scale(values, factor):
    """Multiply every value by factor, keeping the order."""
    out = []
    for value in values:
        out.append(value * factor)
    return out


class Counter:
    """Counts things one at a time."""

    def __init__(self):
        self.count = 0

    def bump(self, by=1):
        """Add by to the count and return the new count."""
        self.count += by
        return self.count
'''


@pytest.fixture
def single_file_codebase(tmp_path):
    root = tmp_path / "single"
    root.mkdir()
    (root / "only.py").write_text(SINGLE_FILE)
    return root


def test_single_file_codebase_saves_an_empty_eval_split_that_loads(single_file_codebase, tmp_path):
    out = tmp_path / "ds"
    made = build_dataset(single_file_codebase, out, num_examples=20, synthetic_ratio=0.3, eval_fraction=0.2,
                         log_to_mlflow=False, progress=False)
    assert len(made.dataset["eval"]) == 0 and len(made.dataset["train"]) > 0
    loaded = load_prepared(out)
    assert len(loaded.dataset["eval"]) == 0
    assert loaded.dataset["train"]["prompt"] == made.dataset["train"]["prompt"]
    assert loaded.dataset["eval"].column_names == made.dataset["eval"].column_names
    assert loaded.digest == made.digest


def test_an_empty_eval_split_saved_by_an_older_build_loads(single_file_codebase, tmp_path):
    """What builds before the fix wrote (save_to_disk with no shard for the empty split)."""
    out = tmp_path / "old"
    made = build_dataset(single_file_codebase, None, num_examples=20, synthetic_ratio=0.3, eval_fraction=0.2,
                         log_to_mlflow=False, progress=False)
    made.dataset.save_to_disk(str(out))
    assert json.loads((out / "eval" / "state.json").read_text())["_data_files"] == []
    (out / build.STATS_FILE).write_text(json.dumps({"digest": made.digest}))
    loaded = load_prepared(out)
    assert len(loaded.dataset["eval"]) == 0 and len(loaded.dataset["train"]) == len(made.dataset["train"])
    assert loaded.dataset["eval"].column_names == made.dataset["train"].column_names


def test_out_that_cannot_be_written_is_one_line_before_mining(single_file_codebase, tmp_path, capsys,
                                                              monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    walked = []
    monkeypatch.setattr(build, "walk_codebase", lambda *a, **k: walked.append(a))  # mining starts with the walk
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-data", str(single_file_codebase), "--out", str(blocker / "out"), "--num-examples", "5",
              "--synthetic-ratio", "0.3", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"output folder '{blocker / 'out'}' cannot be written" in lines[0] and "--out" in lines[0]
    assert walked == []
