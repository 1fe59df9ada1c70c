"""Bad job input: a clear reason, output/failure written, run FAILED, nothing written outside the job root."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend import packaging, spec
from ade_mlflow_plugin.backend.local import LocalJob
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract
from tests.conftest import FIXTURES

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow

COUNTER = FIXTURES / "projects" / "counter"


def _request(tmp_path: Path, tracking: str, code_uri: str | None = None, entry: str = "main",
             params: dict | None = None, channels: dict | None = None) -> tuple[dict, str]:
    run_id = mlflow.MlflowClient().create_run("0").info.run_id
    if code_uri is None:
        code_uri = packaging.build_project_tarball(COUNTER, tmp_path / "code").path.as_uri()
    inputs = spec.JobInputs(job_name="bad-input-job", entry_point=entry, image_uri="local", code_uri=code_uri,
                            output_uri=(tmp_path / "out").as_uri(), checkpoint_uri=(tmp_path / "ckpt").as_uri(),
                            run=spec.RunInfo(run_id, "0", tracking), params=params or {"steps": "1"},
                            channel_params=channels or {})
    config = CloudTrainingConfig.from_backend_config({"mode": "local"})
    return spec.build_training_job_request(config, inputs, "us-east-1"), run_id


def _run(request: dict, root: Path) -> dict:
    job = LocalJob(request, job_root=root, stream=None)
    job.start()
    return job.wait(timeout=180)


def _assert_failed(final: dict, root: Path, run_id: str, words: str) -> None:
    assert final["TrainingJobStatus"] == "Failed"
    assert words in final["FailureReason"], final["FailureReason"]
    assert words in (root / "output" / "failure").read_text()
    assert mlflow.get_run(run_id).info.status == "FAILED"


def _tarball(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tar.addfile(info)
    return path


@pytest.mark.parametrize("members,link,words", [
    ({"MLproject": b"name: x\n", "../escaped.txt": b"evil"}, None, "refusing the code archive"),
    ({"/abs_escaped.txt": b"evil", "MLproject": b"name: x\n"}, None, "refusing the code archive"),
    ({"MLproject": b"name: x\n"}, ("escape_link", "../../.."), "refusing the code archive"),
])
def test_traversal_archives_are_refused(sqlite_tracking, tmp_path, members, link, words):
    archive = _tarball(tmp_path / "evil.tar.gz", members, link)
    request, run_id = _request(tmp_path, sqlite_tracking, code_uri=archive.as_uri())
    root = tmp_path / "sandbox" / "root"
    _assert_failed(_run(request, root), root, run_id, words)
    assert not (tmp_path / "sandbox" / "escaped.txt").exists() and not Path("/abs_escaped.txt").exists()
    assert not list((tmp_path / "sandbox").glob("*escaped*"))


def test_corrupt_archive(sqlite_tracking, tmp_path):
    archive = tmp_path / "corrupt.tar.gz"
    archive.write_bytes(b"\x1f\x8b this is not a tarball")
    request, run_id = _request(tmp_path, sqlite_tracking, code_uri=archive.as_uri())
    _assert_failed(_run(request, tmp_path / "root"), tmp_path / "root", run_id, "not a readable tar.gz")


def test_unknown_entry_point(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking, entry="nope")
    _assert_failed(_run(request, tmp_path / "root"), tmp_path / "root", run_id, "entry point 'nope'")


def test_param_without_value_or_default(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking, entry="needs_value", params={})
    _assert_failed(_run(request, tmp_path / "root"), tmp_path / "root", run_id, "required_thing")


def test_missing_channel(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking)
    request["HyperParameters"][contract.HP_CHANNEL_PARAMS] = json.dumps(json.dumps({"steps": "absent"}))
    _assert_failed(_run(request, tmp_path / "root"), tmp_path / "root", run_id, "input channel 'absent'")


def test_failing_entry_reports_its_last_lines(sqlite_tracking, tmp_path):
    request, run_id = _request(tmp_path, sqlite_tracking, params={"steps": "not-a-number"})
    _assert_failed(_run(request, tmp_path / "root"), tmp_path / "root", run_id, "invalid float value")


def test_unwritable_job_root(sqlite_tracking, tmp_path):
    request, _ = _request(tmp_path, sqlite_tracking)
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ConfigError, match="not writable.*job_root"):
        LocalJob(request, job_root=blocker / "root", stream=None).start()
