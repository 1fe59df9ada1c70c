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


def log_to_active_run(prepared: "PreparedDataset", codebase: Path) -> bool:
    """Log to the active run, if any; returns whether there was one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ade_mlflow_plugin.errors import mlflow_error

    run = mlflow.active_run()
    if run is None:
        return False
    try:
        _log(prepared, codebase)
    except (MlflowException, OSError) as exc:
        raise mlflow_error(f"logging the dataset to MLflow run {run.info.run_id}", exc) from exc
    return True


def _log(prepared: "PreparedDataset", codebase: Path) -> None:
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
                                       name=DATASET_NAME, digest=prepared.digest)
    mlflow.log_input(data, context=CONTEXT)
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.json"
        stats_path.write_text(json.dumps(prepared.stats, indent=2, sort_keys=True))
        mlflow.log_artifact(str(stats_path))
    mlflow.set_tag(DIGEST_TAG, prepared.digest)
