"""`ade-mlflow prepare-data`: output, exit codes, one-line errors; the digest is stable across processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ade_mlflow_plugin.cli import main
from ade_mlflow_plugin.dataset.pool import mine_all
from ade_mlflow_plugin.dataset.walk import walk_codebase

ADE = [sys.executable, "-c", "from ade_mlflow_plugin.cli import main; main()"]


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-data", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_prepare_data_writes_dataset_and_stats(codebase, tmp_path, capsys):
    out = tmp_path / "out"
    main(["prepare-data", str(codebase), "--out", str(out), "--num-examples", "30", "--synthetic-ratio", "0.4",
          "--eval-fraction", "0.2", "--seed", "3", "--no-progress"])
    printed = capsys.readouterr().out
    stats = json.loads((out / "stats.json").read_text())
    assert f"digest {stats['digest']}" in printed and "prepared 30 examples (18 mined, 12 synthetic)" in printed
    assert (out / "dataset_dict.json").is_file() and (out / "train").is_dir() and (out / "eval").is_dir()
    assert stats["params"] == {"num_examples": 30, "synthetic_ratio": 0.4, "eval_fraction": 0.2, "seed": 3,
                               "max_tokens": 2048}


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "does not exist: pass the root folder"),
    (["{file}"], "is not a directory: pass the root folder"),
    (["{empty}"], "has no source files in a supported language"),
    (["{codebase}", "--synthetic-ratio", "1.5"], "parameter 'synthetic_ratio': got '1.5', expected a number in [0.0, 1.0]"),
    (["{codebase}", "--synthetic-ratio", "-0.1"], "parameter 'synthetic_ratio': got '-0.1', expected a number in [0.0, 1.0]"),
    (["{codebase}", "--num-examples", "0"], "parameter 'num_examples': got '0', expected an integer >= 1"),
    (["{codebase}", "--eval-fraction", "1"], "parameter 'eval_fraction': got '1', expected a number in [0.0, 1.0)"),
    (["{codebase}", "--max-tokens", "3"], "parameter 'max_tokens': got '3', expected an integer >= 16"),
    (["{codebase}", "--tokenizer", "{empty}"], "cannot load the tokenizer of"),
])
def test_bad_input_exits_2_with_one_line(codebase, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no code here\n")
    places = {"missing": tmp_path / "nope", "file": codebase / "web" / "cart.js", "empty": tmp_path / "empty",
              "codebase": codebase}
    args = [a.format(**places) for a in args]
    defaults = {"--num-examples": "5", "--synthetic-ratio": "0.5"}
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    code, out, err = _run([*args, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ade-mlflow: error: ") and message in lines[0], err
    assert "Traceback" not in err + out


def test_output_folder_of_something_else_is_refused(codebase, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    code, _, err = _run([str(codebase), "--out", str(tmp_path / "out"), "--num-examples", "5",
                         "--synthetic-ratio", "0.5", "--no-progress"], capsys)
    assert code == 2 and "is not empty and holds no prepared dataset" in err
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_unreadable_and_undecodable_files_are_skipped_and_counted(codebase):
    walked = walk_codebase(codebase)
    (codebase / "src" / "app" / "tls.py").unlink()  # vanishes between walk and read
    (codebase / "src" / "app" / "latin.py").write_bytes("def caf\xe9():\n    return '\xe9t\xe9'\n".encode("latin-1"))
    latin_file = [f for f in walk_codebase(codebase).files if f.rel == "src/app/latin.py"]
    files = mine_all(walked.files + latin_file, progress=False)
    assert [f.skipped for f in files if f.path == "src/app/tls.py"] == ["unreadable"]
    latin = [f for f in files if f.path == "src/app/latin.py"]
    assert latin and latin[0].skipped is None  # decoded with replacement characters, still mined
    assert len(latin[0].units) == 1 and latin[0].units[0].name.startswith("caf")


@pytest.mark.slow
def test_console_script_digest_is_stable_across_processes(codebase, tmp_path):
    digests = []
    for n, hash_seed in enumerate(["1", "2"]):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = tmp_path / f"out{n}"
        proc = subprocess.run([*ADE, "prepare-data", str(codebase), "--out", str(out), "--num-examples", "40",
                               "--synthetic-ratio", "0.3", "--seed", "11", "--no-progress"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        digests.append(json.loads((out / "stats.json").read_text())["digest"])
    assert digests[0] == digests[1]
    proc = subprocess.run([*ADE, "prepare-data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                           "--num-examples", "4", "--synthetic-ratio", "0.3"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_file_that_fails_to_mine_is_skipped_and_counted(codebase, monkeypatch):
    from ade_mlflow_plugin.dataset import build_dataset, mine

    real = mine.extract_units

    def flaky(path, *args, **kwargs):
        if path == "src/app/stats.py":
            raise RecursionError("pathological file")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(mine, "extract_units", flaky)
    prepared = build_dataset(codebase, None, num_examples=20, synthetic_ratio=0.3, log_to_mlflow=False,
                             progress=False, workers=1)
    assert prepared.stats["drops"]["mine_error"] == 1
    assert "src/app/stats.py" not in set(prepared.dataset["train"]["path"]) | set(prepared.dataset["eval"]["path"])


def test_symlinks_are_skipped_and_counted(codebase, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("def outside_marker():\n    return 1\n")
    (codebase / "src" / "link.py").symlink_to(outside)
    (codebase / "loop").symlink_to(codebase, target_is_directory=True)
    walked = walk_codebase(codebase)
    assert walked.skipped["symlink"] == 2
    assert "src/link.py" not in {f.rel for f in walked.files}


def test_unknown_mlflow_run_is_one_line_exit_1(codebase, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "MLFLOW_RUN_ID": "0" * 32}
    proc = subprocess.run([*ADE, "prepare-data", str(codebase), "--out", str(tmp_path / "o"), "--num-examples",
                           "4", "--synthetic-ratio", "0.3", "--no-progress"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ade-mlflow: error: cannot attach to MLflow run 000") and "Traceback" not in proc.stderr
