"""The container entrypoint that keeps the launcher at PID 1: docker's SIGTERM (sent to PID 1 only)
reaches the entry, which checkpoints; the run ends KILLED. Code comes from moto S3, as in a real job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.session
import pytest
import mlflow

from ade_mlflow_plugin.backend import packaging
from ade_mlflow_plugin.job.bootstrap import ARG_LIMIT, container_entrypoint
from ade_mlflow_plugin.job.contract import ContainerPaths, write_contract
from tests.job.test_bad_job_input import COUNTER, _request, _tarball


def _code_on_s3(bucket: str, archive: Path) -> str:
    boto3.client("s3").upload_file(str(archive), bucket, "code/project.tar.gz")
    return f"s3://{bucket}/code/project.tar.gz"


def _container(request: dict, base: Path, log: Path) -> subprocess.Popen:
    """Start the image the way SageMaker does: the request's entrypoint + arguments as argv."""
    paths = ContainerPaths(base)
    write_contract(paths, request)
    spec = request["AlgorithmSpecification"]
    env = {**os.environ, **request["Environment"], "SAGEMAKER_BASE_DIR": str(base),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # python3 = this venv's
    with open(log, "w") as out:
        return subprocess.Popen([*spec["ContainerEntrypoint"], *spec["ContainerArguments"]], cwd=base, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def test_entrypoint_fits_the_service_limits(sqlite_tracking, tmp_path):
    request, _ = _request(tmp_path, sqlite_tracking, code_uri="s3://bucket/code/x.tar.gz")
    request["AlgorithmSpecification"].update(container_entrypoint())
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateTrainingJob").input_shape.members["AlgorithmSpecification"]
    for key in ("ContainerEntrypoint", "ContainerArguments"):
        items, limits = request["AlgorithmSpecification"][key], shape.members[key]
        assert limits.metadata["min"] <= len(items) <= limits.metadata["max"]
        assert all(len(item) <= limits.member.metadata["max"] == ARG_LIMIT and "\n" not in item for item in items)


@pytest.mark.slow
def test_sigterm_to_pid_1_reaches_the_entry_which_checkpoints(sqlite_tracking, s3_bucket, tmp_path):
    archive = packaging.build_project_tarball(COUNTER, tmp_path / "code").path
    request, run_id = _request(tmp_path, sqlite_tracking, code_uri=_code_on_s3(s3_bucket, archive),
                               params={"steps": "40", "step_seconds": "0.25"})
    request["AlgorithmSpecification"].update(container_entrypoint())
    base, log = tmp_path / "opt_ml", tmp_path / "container.log"
    proc = _container(request, base, log)
    try:
        deadline = time.monotonic() + 120
        while "counter: step 3\n" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)  # what `docker stop` does: PID 1 only, not the group
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 143, text[-3000:]
    stopped_at = int(text.split("SIGTERM, checkpoint at step ")[1].split()[0])
    assert json.loads((base / "checkpoints" / "counter.json").read_text())["step"] == stopped_at
    assert (base / "code" / "ade_entry.py").is_file()
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_a_traversal_archive_fails_before_anything_runs(sqlite_tracking, s3_bucket, tmp_path):
    evil = _tarball(tmp_path / "evil.tar.gz", {"MLproject": b"name: x\n", "../escaped.txt": b"evil"})
    request, _ = _request(tmp_path, sqlite_tracking, code_uri=_code_on_s3(s3_bucket, evil))
    request["AlgorithmSpecification"].update(container_entrypoint())
    base = tmp_path / "sandbox" / "opt_ml"
    base.mkdir(parents=True)
    proc = _container(request, base, tmp_path / "container.log")
    assert proc.wait(timeout=120) == 1
    failure = (base / "output" / "failure").read_text()
    assert failure.startswith("ade bootstrap: cannot fetch the job's code") and "'../escaped.txt'" in failure
    assert not (base / "escaped.txt").exists() and not (tmp_path / "sandbox" / "escaped.txt").exists()


def test_the_traveling_bootstrap_needs_nothing_of_the_package():
    """It runs before any code is on the machine: the contract's constants are injected, not imported."""
    import ast
    import base64

    from ade_mlflow_plugin.job import bootstrap, contract

    travels = base64.b64decode("".join(container_entrypoint()["ContainerArguments"])).decode()
    tree = ast.parse(travels)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "base64", "json", "os", "sys", "tarfile", "tempfile", "types", "urllib", "boto3", "botocore"}
    namespace: dict = {"__name__": "ade_bootstrap_under_test", "__file__": bootstrap.__file__}
    exec(compile(travels, "ade-bootstrap", "exec"), namespace)  # defines, does not run main()
    assert {name: getattr(namespace["contract"], name) for name in contract.BOOTSTRAP_NAMES} == \
        {name: getattr(contract, name) for name in contract.BOOTSTRAP_NAMES}
