"""Issue 18 item 4, your own data: JSON Lines, Parquet or a saved Hugging Face dataset with prompt/completion
columns (or one text column), checked before submission (one line each), loaded into the train/eval
dataset the entries take, mixed with mined examples by dataset_ratio."""
from __future__ import annotations

import json

import pytest
from mlflow.projects.utils import load_project

from ade_mlflow_plugin.backend.params import resolve_params
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.dataset.user import inspect, load_user_dataset, mix
from tests.conftest import REPO_ROOT

PAIRS = [{"prompt": f"def f{i}(x):\n", "completion": f"    return x + {i}\n"} for i in range(20)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_hf(path, rows, eval_rows=None):
    import datasets

    if eval_rows is None:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "validation": datasets.Dataset.from_list(eval_rows)}).save_to_disk(str(path))
    return path


@pytest.fixture(params=["jsonl", "parquet", "hf"])
def user_file(request, tmp_path):
    writer = {"jsonl": write_jsonl, "parquet": write_parquet, "hf": write_hf}[request.param]
    suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[request.param]
    return request.param, writer(tmp_path / f"mine{suffix}", PAIRS)


def test_each_format_is_read_with_its_columns_and_rows(user_file):
    fmt, path = user_file
    source = inspect(path)
    assert (source.format, source.rows, source.text_column) == (fmt, 20, None)
    assert {"prompt", "completion"} <= set(source.columns)


def test_each_format_loads_split_by_eval_fraction_with_a_stable_digest(user_file):
    _, path = user_file
    first = load_user_dataset(path, eval_fraction=0.2, seed=3)
    again = load_user_dataset(path, eval_fraction=0.2, seed=3)
    assert (len(first.dataset["train"]), len(first.dataset["eval"])) == (16, 4)
    assert first.digest == again.digest and len(first.digest) == 16
    assert set(first.dataset["train"]["source"]) == {"user"}
    assert sorted([*first.dataset["train"]["completion"], *first.dataset["eval"]["completion"]]) == \
        sorted(row["completion"] for row in PAIRS)
    assert load_user_dataset(path, eval_fraction=0.2, seed=4).digest != first.digest  # another split


def test_the_three_formats_of_the_same_rows_have_the_same_digest(tmp_path):
    digests = {load_user_dataset(writer(tmp_path / name, PAIRS), eval_fraction=0.1, seed=1).digest
               for name, writer in (("a.jsonl", write_jsonl), ("b.parquet", write_parquet), ("c", write_hf))}
    # path names differ (a.jsonl, b.parquet, data-00000...): the digest covers them, so compare the rows
    assert len(digests) == 3
    rows = [list(load_user_dataset(p, eval_fraction=0.1, seed=1).dataset["train"]["completion"])
            for p in (tmp_path / "a.jsonl", tmp_path / "b.parquet", tmp_path / "c")]
    assert rows[0] == rows[1] == rows[2]


def test_a_saved_dataset_dict_keeps_its_own_validation_split(tmp_path):
    path = write_hf(tmp_path / "dd", PAIRS[:15], eval_rows=PAIRS[15:])
    prepared = load_user_dataset(path, eval_fraction=0.5, seed=0)
    assert (len(prepared.dataset["train"]), len(prepared.dataset["eval"])) == (15, 5)
    assert prepared.stats["eval_from"] == "saved split"


def test_one_text_column_is_the_completion_with_an_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": f"print({i})\n"} for i in range(5)])
    prepared = load_user_dataset(path, eval_fraction=0.0, seed=0)
    assert list(prepared.dataset["train"]["prompt"]) == [""] * 5
    assert sorted(prepared.dataset["train"]["completion"]) == sorted(f"print({i})\n" for i in range(5))
    only = write_parquet(tmp_path / "code.parquet", [{"content": "x = 1\n"}])
    assert inspect(only).text_column == "content"


@pytest.mark.parametrize("rows,message", [
    ([{"question": "q", "answer": "a"}], "has columns question, answer; it needs 'prompt' and 'completion'"),
    ([], "holds no rows"),
])
@pytest.mark.parametrize("writer,suffix", [(write_jsonl, ".jsonl"), (write_parquet, ".parquet")])
def test_wrong_columns_or_no_rows_is_one_line(tmp_path, rows, message, writer, suffix):
    if not rows and writer is write_parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / f"d{suffix}"
        pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "completion": pa.array([], pa.string())}),
                       path)
    else:
        path = writer(tmp_path / f"d{suffix}", rows)
    with pytest.raises(ConfigError) as caught:
        inspect(path)
    assert message in caught.value.message and "\n" not in caught.value.message


def test_a_file_that_is_not_json_lines_or_data_is_one_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        inspect(bad)
    with pytest.raises(ConfigError, match=r"\.jsonl or \.parquet expected"):
        inspect(write_jsonl(tmp_path / "d.csv", PAIRS))


def test_mix_takes_yours_to_the_ratio_and_keeps_both_evals(tmp_path):
    mined = load_user_dataset(write_jsonl(tmp_path / "m.jsonl", PAIRS), eval_fraction=0.25, seed=0)  # 15 + 5
    yours = [{"prompt": f"# {i}\n", "completion": f"y{i}\n"} for i in range(40)]
    user = load_user_dataset(write_jsonl(tmp_path / "u.jsonl", yours), eval_fraction=0.1, seed=0)  # 36 + 4
    mixed = mix(mined, user, 0.25, seed=1)
    train = list(mixed.dataset["train"]["completion"])
    assert len(train) == 20 and sum(c.startswith("y") for c in train) == 5  # 15 mined, 5 yours: 25 %
    assert len(mixed.dataset["eval"]) == 9
    assert mixed.digest not in (mined.digest, user.digest)
    short = mix(mined, user, 0.9, seed=1)  # 135 wanted, 36 there
    assert len(short.dataset["train"]) == 15 + 36 and "only 36 available" in short.stats["mix"]["line"]


# ---------------------------------------------------------------- before submission (backend/params.py)
@pytest.fixture(scope="module")
def project():
    return load_project(str(REPO_ROOT))


@pytest.mark.parametrize("entry,extra", [("train", {}), ("main", {"codebase": str(REPO_ROOT / "examples")})])
def test_backend_refuses_wrong_columns_before_submission(project, tmp_path, entry, extra):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "a", "output": "b"}])
    with pytest.raises(ConfigError) as caught:
        resolve_params(project, entry, {**extra, "dataset": str(bad)}, REPO_ROOT)
    assert caught.value.message == (f"parameter 'dataset': '{bad}' has columns input, output; it needs 'prompt' "
                                    "and 'completion' columns (or one 'text' column): rename yours to those")


def test_main_ships_an_undeclared_dataset_as_a_channel(project, tmp_path):
    good = write_parquet(tmp_path / "good.parquet", PAIRS)
    resolved = resolve_params(project, "main", {"codebase": str(REPO_ROOT / "examples"), "dataset": str(good),
                                                "dataset_ratio": "0.3"}, REPO_ROOT)
    assert resolved.paths["dataset"] == str(good) and "dataset" not in resolved.values
    assert resolved.values["dataset_ratio"] == "0.3"
    with pytest.raises(ConfigError, match="dataset_ratio"):
        resolve_params(project, "main", {"codebase": str(REPO_ROOT / "examples"), "dataset": str(good),
                                         "dataset_ratio": "2"}, REPO_ROOT)
    remote = resolve_params(project, "train", {"dataset": "s3://bucket/data/train.jsonl"}, REPO_ROOT)
    assert remote.paths["dataset"] == "s3://bucket/data/train.jsonl"  # read in the job, where it lands


def test_a_folder_of_split_files_or_a_model_download_holding_data(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", PAIRS[:12])
    write_jsonl(folder / "validation.jsonl", PAIRS[12:])
    prepared = load_user_dataset(folder, eval_fraction=0.5, seed=0)
    assert (len(prepared.dataset["train"]), len(prepared.dataset["eval"])) == (12, 8)
    download = tmp_path / "download"  # what a models:/ URI lands as: model files around the data
    (download / "artifacts" / "data").mkdir(parents=True)
    (download / "MLmodel").write_text("flavors: {}\n")
    (download / "artifacts" / "config.json").write_text('{"not": "rows"}')
    write_parquet(download / "artifacts" / "data" / "rows.parquet", PAIRS)
    assert inspect(download).rows == 20
    saved = tmp_path / "nested"
    write_hf(saved / "artifacts" / "ds", PAIRS[:15], eval_rows=PAIRS[15:])
    assert inspect(saved).format == "hf" and inspect(saved).rows == 20


def test_mlflow_run_with_wrong_columns_is_one_line_exit_2_and_no_run(tmp_path, monkeypatch):
    """Through `mlflow run` itself (MLflow's click group, in this process): nothing is created or started."""
    import mlflow
    from click.testing import CliRunner
    from mlflow.cli import cli

    bad = write_parquet(tmp_path / "bad.parquet", [{"question": "q", "answer": "a"}])
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(tracking)
    try:
        result = CliRunner().invoke(cli, ["run", str(REPO_ROOT), "-b", "ade-sagemaker", "-e", "train",
                                          "--backend-config", json.dumps({"mode": "local",
                                                                          "job_root": str(tmp_path / "jobs")}),
                                          "-P", f"dataset={bad}"])
        runs = mlflow.search_runs(search_all_experiments=True)
    finally:
        mlflow.set_tracking_uri(None)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("ade-sagemaker: error:")]
    assert len(lines) == 1 and "has columns question, answer" in lines[0] and "Traceback" not in result.stderr
    assert len(runs) == 0 and not (tmp_path / "jobs").exists()
