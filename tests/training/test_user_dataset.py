"""Issue 18 item 4 done-when: `dataset=` with a JSON Lines file, a Parquet file and a saved Hugging Face
dataset each train (the train entry) and log the dataset input with its digest; the main entry mixes
your rows with the mined ones by dataset_ratio."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.dataset.user import DATASET_NAME, load_user_dataset
from tests.dataset.test_user_data import write_hf, write_jsonl, write_parquet
from tests.training.conftest import CODEBASE, FAST_ARGS, Entry, entry_env, new_run

ROWS = [{"prompt": f"# add {i}\ndef add_{i}(x):\n", "completion": f"    return x + {i}\n"} for i in range(24)]


def _inputs(client, run_id):
    return {d.dataset.name: d.dataset for d in client.get_run(run_id).inputs.dataset_inputs}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "hf"])
def test_train_entry_trains_on_your_file_and_logs_it(fmt, tiny_model, tracking_uri, tmp_path):
    writer, name = {"jsonl": (write_jsonl, "d.jsonl"), "parquet": (write_parquet, "d.parquet"),
                    "hf": (write_hf, "d")}[fmt]
    data = writer(tmp_path / name, ROWS)
    run_id = new_run(tracking_uri, "user-dataset")
    entry = Entry("train.py", ["--dataset", str(data), "--base_model", str(tiny_model), "--max_steps", "2",
                               "--eval_fraction", "0.25", "--registered_model_name", "", *FAST_ARGS],
                  entry_env(tracking_uri, run_id, tmp_path / "ckpt", tmp_path / "model"))
    assert entry.wait(timeout=240) == 0, entry.output[-3000:]
    assert "global step 2" in entry.output
    client = MlflowClient(tracking_uri)
    expected = load_user_dataset(data, eval_fraction=0.25, seed=42).digest
    logged = _inputs(client, run_id)[DATASET_NAME]
    assert logged.digest == expected
    run = client.get_run(run_id)
    assert run.data.tags["ade.dataset_digest"] == expected
    assert "train_loss" in run.data.metrics
    assert f"{DATASET_NAME}_stats.json" in {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_main_entry_mixes_your_rows_with_the_mined_ones(tiny_model, tracking_uri, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    run_id = new_run(tracking_uri, "user-dataset")
    entry = Entry("main.py", ["--codebase", str(CODEBASE), "--dataset", str(data), "--dataset_ratio", "0.5",
                              "--num_examples", "12", "--base_model", str(tiny_model), "--max_steps", "1",
                              "--registered_model_name", "", *FAST_ARGS],
                  entry_env(tracking_uri, run_id, tmp_path / "ckpt", tmp_path / "model"))
    assert entry.wait(timeout=240) == 0, entry.output[-3000:]
    assert "of yours in train (50% yours; dataset_ratio 0.5" in entry.output
    client = MlflowClient(tracking_uri)
    inputs = _inputs(client, run_id)
    assert {"codebase", DATASET_NAME} <= set(inputs)
    digest = client.get_run(run_id).data.tags["ade.dataset_digest"]
    assert digest not in (inputs["codebase"].digest, inputs[DATASET_NAME].digest)  # the mix trained on
