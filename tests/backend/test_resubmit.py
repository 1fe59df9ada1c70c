"""A second submission of an unchanged project and data uploads 0 bytes (content addresses match)."""
from __future__ import annotations

import boto3
import mlflow

import pytest

from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend
from tests.backend.conftest import ROLE

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


def test_second_submission_uploads_nothing(project, data_dir, aws, sqlite_tracking):
    boto3.client("s3").create_bucket(Bucket="ade-resubmit")
    config = {"role_arn": ROLE, "bucket": "ade-resubmit", "region": "us-east-1", "wait": False,
              "SYNCHRONOUS": False}
    experiment = mlflow.get_experiment_by_name("Default").experiment_id
    backend = AdeSageMakerBackend()
    sizes = []
    for _ in range(2):
        backend.run(str(project), "main", {"data": str(data_dir)}, None, dict(config), sqlite_tracking, experiment)
        sizes.append(backend.last_submission.bytes_uploaded)
    assert sizes[0] > 0 and sizes[1] == 0
    (project / "train.py").write_text((project / "train.py").read_text() + "# edit\n")
    backend.run(str(project), "main", {"data": str(data_dir)}, None, dict(config), sqlite_tracking, experiment)
    changed = backend.last_submission
    assert 0 < changed.bytes_uploaded == changed.code.bytes_uploaded  # only the code, not the data again
