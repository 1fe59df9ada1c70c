"""Record a prepared dataset on the active MLflow run: run input with its digest, stats.json, a tag."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ade_mlflow_plugin.dataset.build import PreparedDataset

DATASET_NAME = "codebase"
CONTEXT = "training"
DIGEST_TAG = "ade.dataset_digest"


def log_to_active_run(prepared: "PreparedDataset", codebase: Path, name: str = DATASET_NAME,
                      digest_tag: bool = True) -> bool:
    """Log to the active run, if any; returns whether there was one. ``codebase`` is the data's source (the
    mined folder, or the user's dataset file); ``name`` the run input's name; ``digest_tag`` False leaves
    the run's digest tag to whoever logs the data actually trained on (a mix of two inputs)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ade_mlflow_plugin.errors import mlflow_error

    run = mlflow.active_run()
    if run is None:
        return False
    try:
        _log(prepared, codebase, name, digest_tag)
    except (MlflowException, OSError) as exc:
        raise mlflow_error(f"logging the dataset to MLflow run {run.info.run_id}", exc) from exc
    return True


def stats_file_name(name: str) -> str:
    """The stats artifact of an input: stats.json for the mined codebase, <name>_stats.json for others."""
    return "stats.json" if name == DATASET_NAME else f"{name}_stats.json"


def _log(prepared: "PreparedDataset", codebase: Path, name: str = DATASET_NAME, digest_tag: bool = True) -> None:
    import mlflow
    import pandas as pd

    frames = []
    for split in ("train", "eval"):
        frame = prepared.dataset[split].to_pandas()
        frame.insert(0, "split", split)
        frames.append(frame)
    with warnings.catch_warnings():
        # a local path resolves to LocalArtifactDatasetSource twice (schemes "" and "file"): same class
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        data = mlflow.data.from_pandas(pd.concat(frames, ignore_index=True), source=str(codebase.resolve()),
                                       name=name, digest=prepared.digest)
    mlflow.log_input(data, context=CONTEXT)
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / stats_file_name(name)
        stats_path.write_text(json.dumps(prepared.stats, indent=2, sort_keys=True, default=str))
        mlflow.log_artifact(str(stats_path))
    if digest_tag:
        mlflow.set_tag(DIGEST_TAG, prepared.digest)
