"""One-line errors never carry credentials: MLflow repeats the tracking URI as given, user:password included."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.errors import first_line, mlflow_error, without_credentials
from tests.conftest import free_port

PASSWORD = "s3cretPassw0rd"


def test_a_real_mlflow_rest_error_keeps_the_host_and_loses_the_password(monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()  # bound, then closed: nothing listens
    with pytest.raises(Exception) as info:
        MlflowClient(f"http://ade:{PASSWORD}@127.0.0.1:{port}").search_experiments()
    assert PASSWORD in str(info.value)  # what MLflow itself says

    line = str(mlflow_error("listing experiments", info.value))

    assert PASSWORD not in line and "ade:" not in line
    assert f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search" in line


@pytest.mark.parametrize("limit", [20, 30, 45, 200])
def test_no_part_of_a_password_survives_the_cut(limit):
    line = first_line(f"API request to https://user:{PASSWORD}@mlflow.example.com/api failed", limit)

    assert "s3cr" not in line and "user" not in line


def test_tokens_in_queries_go_and_plain_text_stays():
    text = ("GET https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Security-Token=def failed; "
            "see s3://bucket/key and the path /a/b?c")

    assert without_credentials(text) == ("GET https://bucket.s3.amazonaws.com/k failed; "
                                         "see s3://bucket/key and the path /a/b?c")
