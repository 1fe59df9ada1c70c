"""The wheelhouse (issue 16 item 5): the job's requirements as wheels, built once per requirement set,
uploaded content-addressed, installed offline in the job.

The fast tests run real `pip download` against a private find-links dir with no index (PIP_NO_INDEX, pip's
own setting): nothing leaves this machine. The slow one downloads two small pure-Python wheels from PyPI
(python-slugify and text-unidecode, not installed in .venv) and runs a local-mode job whose pip can reach
no index.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.session
import mlflow
import pytest
from botocore.validate import ParamValidator

from ade_mlflow_plugin.backend import packaging, spec, wheelhouse
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.job import contract, deps
from tests.backend.test_spec import BASE, _inputs
from tests.job.test_deps import _wheel

LINUX = wheelhouse.Target("3.11", wheelhouse.MANYLINUX_PLATFORMS)


def _dependent_wheel(dest: Path, name: str, requires: list[str]) -> Path:
    """A pure wheel that declares dependencies (Requires-Dist), made from test_deps' minimal wheel."""
    import base64
    import hashlib
    import zipfile

    plain = _wheel(dest, name)
    with zipfile.ZipFile(plain) as whl:
        files = {n: whl.read(n) for n in whl.namelist() if not n.endswith("RECORD")}
    meta = f"{name}-1.0.dist-info/METADATA"
    files[meta] += "".join(f"Requires-Dist: {r}\n" for r in requires).encode()
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()] + [f"{name}-1.0.dist-info/RECORD,,"]
    with zipfile.ZipFile(plain, "w") as whl:
        for member, data in files.items():
            whl.writestr(member, data)
        whl.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return plain


@pytest.fixture
def links(tmp_path, monkeypatch) -> Path:
    """A private package index: a find-links dir, and no index at all."""
    found = tmp_path / "links"
    found.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(found))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return found


def test_a_second_build_of_the_same_requirement_set_is_a_cache_hit(tmp_path, links):
    _wheel(links, "adetoy")
    first = wheelhouse.build(["adetoy==1.0"], LINUX, root=tmp_path / "cache")
    assert not first.cached and [w.name for w in first.wheels] == ["adetoy-1.0-py3-none-any.whl"]
    (links / "adetoy-1.0-py3-none-any.whl").unlink()  # a rebuild would now fail: the hit needs no pip
    again = wheelhouse.build(["adetoy==1.0"], LINUX, root=tmp_path / "cache")
    assert again.cached and again.directory == first.directory and again.digest == first.digest
    assert again.size == first.size > 0 and again.build_s == first.build_s
    # Another platform or Python is another wheelhouse.
    assert wheelhouse.cache_key(["adetoy==1.0"], LINUX, None) != \
        wheelhouse.cache_key(["adetoy==1.0"], wheelhouse.Target("3.12", LINUX.platforms), None)


def test_a_requirement_with_no_wheel_for_the_platform_is_one_line_with_the_fix(tmp_path, links):
    (links / "adesdist-1.0.tar.gz").write_bytes(b"an sdist only: no wheel")
    with pytest.raises(ConfigError) as caught:
        wheelhouse.build(["adesdist==1.0"], LINUX, root=tmp_path / "cache")
    message = caught.value.message
    assert message == ("backend config 'wheelhouse': no wheel of 'adesdist==1.0' for manylinux2014_x86_64, "
                       "CPython 3.11 (the job installs offline, from wheels only); pin a version of adesdist "
                       "that has a wheel for that platform, or set \"wheelhouse\": \"never\"")
    assert caught.value.exit_code == 2
    assert not list((tmp_path / "cache").iterdir())  # nothing half-built is left to be taken for a hit


def test_the_images_torch_is_kept_never_shipped(tmp_path, links):
    _dependent_wheel(links, "adepeft", ["torch>=2.0", "adetoy"])
    _wheel(links, "adetoy")
    house = wheelhouse.build(["adepeft"], LINUX, image_torch="2.5", root=tmp_path / "cache")
    assert [w.name for w in house.wheels] == ["adepeft-1.0-py3-none-any.whl", "adetoy-1.0-py3-none-any.whl"]


def test_requirement_set_is_what_the_job_would_install_less_torch(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch>=2.0\nTorchVision\nmlflow>=3.17\nadetoy-missing==1\n")
    sagemaker = CloudTrainingConfig.from_backend_config({**BASE, "wheelhouse": "always"})
    local = CloudTrainingConfig.from_backend_config({"mode": "local", "wheelhouse": "always"})
    assert wheelhouse.requirement_set(sagemaker, tmp_path) == ["mlflow>=3.17", "adetoy-missing==1"]
    assert wheelhouse.requirement_set(local, tmp_path) == ["adetoy-missing==1"]  # this venv has mlflow
    assert wheelhouse.target_for(sagemaker) == LINUX
    assert wheelhouse.target_for(local).platforms == ()


@pytest.mark.parametrize("requirement,framework,refused", [
    ("torch>=2.0", "2.5", False), ("torch==2.5.1", "2.5", False), ("torch>=2.11.0", "2.5", True),
    ("torch<2", "2.5.1", True), ("torch", "2.5", False), ("torch<2; sys_platform == 'darwin'", "2.5", False)])
def test_a_torch_the_image_lacks_is_refused_at_submission(tmp_path, requirement, framework, refused):
    (tmp_path / "requirements.txt").write_text(f"{requirement}\nadetoy\n")
    config = CloudTrainingConfig.from_backend_config({**BASE, "wheelhouse": "always",
                                                      "framework_version": framework})
    if not refused:
        assert wheelhouse.requirement_set(config, tmp_path) == ["adetoy"]
        return
    with pytest.raises(ConfigError) as caught:
        wheelhouse.requirement_set(config, tmp_path)
    assert caught.value.message == (
        f"backend config 'wheelhouse': the project asks for '{requirement}' but the training image "
        f"(framework_version) has torch {framework}, and the wheelhouse never ships torch; set framework_version "
        "(or image_uri) to an image with a matching torch, relax the requirement, or set \"wheelhouse\": \"never\"")


@pytest.mark.parametrize("overrides,wanted", [
    ({}, False), ({"enable_network_isolation": True}, True), ({"wheelhouse": "always"}, True),
    ({"enable_network_isolation": True, "wheelhouse": "never"}, False)])
def test_wheelhouse_auto_follows_network_isolation(overrides, wanted):
    assert wheelhouse.wanted(CloudTrainingConfig.from_backend_config({**BASE, **overrides})) is wanted


def test_the_request_carries_the_wheelhouse_channel():
    config = CloudTrainingConfig.from_backend_config({**BASE, "enable_network_isolation": True})
    uri = "s3://ade-bucket/ade-mlflow/wheelhouse/abc/"
    inputs = dataclasses.replace(_inputs(), wheelhouse_uri=uri)
    request = spec.build_training_job_request(config, inputs, "eu-west-1")
    shape = botocore.session.get_session().get_service_model("sagemaker").operation_model(
        "CreateTrainingJob").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()
    channel = next(c for c in request["InputDataConfig"] if c["ChannelName"] == contract.WHEELHOUSE_CHANNEL)
    assert channel == {"ChannelName": "ade_wheelhouse", "InputMode": "File", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}
    job = contract.decode_hyperparameters({k: json.loads(v) for k, v in request["HyperParameters"].items()})
    assert job.wheelhouse and "ade_wheelhouse" in job.channel_names
    plain = spec.build_training_job_request(config, _inputs(), "eu-west-1")
    assert contract.HP_WHEELHOUSE not in plain["HyperParameters"]  # requests without one are as before
    clash = dataclasses.replace(inputs, channel_params={
        "ade_wheelhouse": spec.Channel("ade_wheelhouse", "s3://b/d/")})
    with pytest.raises(ConfigError, match="parameter 'ade_wheelhouse'"):
        spec.build_training_job_request(config, clash, "eu-west-1")


def test_upload_is_content_addressed_and_sends_nothing_the_second_time(tmp_path, links, s3_bucket):
    _wheel(links, "adetoy")
    house = wheelhouse.build(["adetoy"], LINUX, root=tmp_path / "cache")
    store = packaging.S3Store(boto3.client("s3"), s3_bucket, "ade-mlflow")
    first = wheelhouse.ship(house, store, io.StringIO())
    console = io.StringIO()
    second = wheelhouse.ship(house, store, console)
    assert first.uri == second.uri == f"s3://{s3_bucket}/ade-mlflow/wheelhouse/{house.digest}/"
    assert first.bytes_uploaded == house.size > 0 and second.bytes_uploaded == 0
    assert console.getvalue() == (f"wheelhouse: 1 wheel, {house.size / 1e3:.1f} kB, built in {house.build_s:.1f} s; "
                                  f"uploaded 0 bytes ({second.uri})\n")
    local = packaging.LocalStore(tmp_path / "root")
    assert wheelhouse.upload(house, local)[1] == house.size and wheelhouse.upload(house, local)[1] == 0


def test_the_wheelhouse_wire_names_stay_what_jobs_read():
    # Frozen like the other contract names (docs/job-contract.md): a job submitted by this client decodes them.
    job = contract.JobContract("s3://b/code.tar.gz", "us-east-1", "main", contract.RunInfo("r", "0", "http://m"))
    with_wheels = dataclasses.replace(job, wheelhouse=True)
    encoded = contract.encode(with_wheels)
    assert set(encoded.hyperparameters) - set(contract.encode(job).hyperparameters) == {"ade_wheelhouse"}
    assert encoded.channel_names == ["ade_wheelhouse"] and contract.SITE_DIR == "ade-site"
    decoded = contract.decode_hyperparameters({k: json.loads(v) for k, v in encoded.hyperparameters.items()})
    assert decoded == with_wheels


def test_the_job_installs_from_the_wheelhouse_with_no_index(tmp_path, monkeypatch):
    paths = contract.ContainerPaths(tmp_path)
    monkeypatch.setenv(contract.ENV_BASE_DIR, str(tmp_path))
    command, _ = deps._pip_command(["adetoy==1.0"])
    assert "--no-index" not in command  # no channel: as before, pip's own index
    paths.wheelhouse_dir.mkdir(parents=True)
    command, env = deps._pip_command(["adetoy @ file:///gone/adetoy-1.0-py3-none-any.whl"])
    assert command[-6:] == ["--no-index", "--find-links", str(paths.wheelhouse_dir), "--prefix",
                            str(paths.site_dir), "adetoy"]
    assert env is not None and "PIP_TARGET" not in env


def test_the_offline_install_lands_under_the_job_base_and_is_importable(tmp_path):
    paths = contract.ContainerPaths(tmp_path / "base")
    paths.wheelhouse_dir.mkdir(parents=True)
    _wheel(paths.wheelhouse_dir, "adetoy")
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("adetoy==1.0\n")
    code = ("import os, sys\nfrom pathlib import Path\nfrom ade_mlflow_plugin.job.deps import "
            f"install_missing_requirements\nprint(install_missing_requirements(Path({str(project)!r})))\n"
            "import adetoy\nprint(adetoy.__file__)\nprint(os.environ['PYTHONPATH'])")
    env = {**os.environ, contract.ENV_BASE_DIR: str(paths.base), "PYTHONPATH": "",
           "PIP_INDEX_URL": f"http://127.0.0.1:{_dead_port()}/simple/", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    listed, module, pythonpath = result.stdout.strip().splitlines()[-3:]
    assert listed == "['adetoy==1.0']" and "from the wheelhouse" in result.stdout
    assert module.startswith(str(paths.site_dir)) and pythonpath.startswith(str(paths.site_dir))
    assert importlib.util.find_spec("adetoy") is None  # not in this environment


def test_a_request_naming_the_wheelhouse_without_its_channel_fails_the_job(tmp_path):
    paths = contract.ContainerPaths(tmp_path)
    paths.make_dirs()
    paths.hyperparameters_file.write_text(json.dumps({contract.HP_WHEELHOUSE: '"true"'}))
    with pytest.raises(RuntimeError, match="input channel 'ade_wheelhouse'"):
        deps.wheelhouse(paths)


# ---------------------------------------------------------------- the whole flow, with PyPI
PROJECT = {
    "MLproject": "name: slugs\n\nentry_points:\n  main:\n    command: \"python use_slug.py\"\n",
    "requirements.txt": "python-slugify==8.0.4\n",
    "use_slug.py": ("import os\nimport mlflow\nimport slugify\n\nprint('use_slug:', slugify.slugify('Wheel House'), "
                    "slugify.__file__, flush=True)\nmlflow.MlflowClient().log_metric(os.environ['MLFLOW_RUN_ID'], "
                    "'slug_len', len(slugify.slugify('Wheel House')))\n"),
}


def _dead_port() -> int:
    with socket.socket() as probe:  # bound then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _submit(project: Path, root: Path, index: str) -> tuple[object, str]:
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    config = {"mode": "local", "job_root": str(root), "enable_network_isolation": True,
              "environment": {"PIP_INDEX_URL": index, "PIP_RETRIES": "0"}}
    console = io.StringIO()
    backend = AdeSageMakerBackend(console=console)
    submitted = backend.run(str(project), "main", {}, None, config, mlflow.get_tracking_uri(), "0")
    assert submitted.wait(), console.getvalue()
    return backend.last_submission, console.getvalue()


@pytest.mark.slow
def test_an_offline_local_job_installs_from_the_wheelhouse_and_the_second_sends_no_wheel(
        sqlite_tracking, tmp_path, monkeypatch):
    if importlib.util.find_spec("slugify") is not None:
        pytest.skip("python-slugify is installed in this environment: the job would not need to install it")
    monkeypatch.setenv(wheelhouse.ENV_CACHE_DIR, str(tmp_path / "wheel-cache"))
    project = tmp_path / "project"
    project.mkdir()
    for name, text in PROJECT.items():
        (project / name).write_text(text)
    dead = f"http://127.0.0.1:{_dead_port()}/simple/"

    first, said = _submit(project, tmp_path / "ade", dead)
    assert first.wheels is not None and not first.wheels.wheelhouse.cached
    names = [w.name for w in first.wheels.wheelhouse.wheels]
    assert names == ["python_slugify-8.0.4-py2.py3-none-any.whl", "text_unidecode-1.3-py2.py3-none-any.whl"]
    assert first.wheels.bytes_uploaded == first.wheels.wheelhouse.size
    assert "wheelhouse: 2 wheels, " in said and " built in " in said
    job_root = (tmp_path / "ade" / "jobs" / first.job_name).resolve()
    log = (job_root / "job.log").read_text()
    assert "from the wheelhouse" in log and "(no index)" in log, log[-3000:]
    assert "use_slug: wheel-house " + str(job_root / contract.SITE_DIR) in log, log[-3000:]
    run = mlflow.get_run(first.request["Environment"][contract.ENV_RUN_ID])
    assert run.info.status == "FINISHED" and run.data.metrics["slug_len"] == len("wheel-house")

    second, said = _submit(project, tmp_path / "ade", dead)
    assert second.wheels.wheelhouse.cached and second.wheels.bytes_uploaded == 0
    # Nothing but (perhaps) the code: its bundle is this package's source, which may change between the two.
    assert second.bytes_uploaded == second.code.bytes_uploaded
    assert "cached; uploaded 0 bytes" in said
    # The developer's environment is untouched: the job installed under its own root.
    check = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('slugify'))"],
                           capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "None"


@pytest.mark.slow  # a fresh sqlite tracking store costs ~8 s of migrations
def test_a_sagemaker_submission_ships_the_wheelhouse_once_its_job_installs_from_s3_and_a_missing_wheel_is_refused(
        tmp_path, links, s3_bucket, sqlite_tracking, monkeypatch):
    from ade_mlflow_plugin.backend.project_backend import AdeSageMakerBackend

    monkeypatch.setenv(wheelhouse.ENV_CACHE_DIR, str(tmp_path / "wheel-cache"))
    _wheel(links, "adetoy")
    project = tmp_path / "project"
    project.mkdir()
    (project / "MLproject").write_text("name: toy\n\nentry_points:\n  main:\n    command: \"python toy.py\"\n")
    (project / "toy.py").write_text("import adetoy\nprint('toy:', adetoy.ANSWER, adetoy.__file__, flush=True)\n")
    (project / "requirements.txt").write_text("adetoy==1.0\ntorch>=2.0\n")
    config = {"role_arn": "arn:aws:iam::123456789012:role/SageMakerRole", "bucket": s3_bucket,
              "region": "us-east-1", "wait": False, "SYNCHRONOUS": False, "enable_network_isolation": True,
              "environment": {"PIP_INDEX_URL": f"http://127.0.0.1:{_dead_port()}/simple/"},
              "image_uri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-gpu-py311"}
    backend = AdeSageMakerBackend(console=io.StringIO())
    sent = []
    for _ in range(2):
        backend.run(str(project), "main", {}, None, dict(config), sqlite_tracking, "0")
        sent.append(backend.last_submission.wheels.bytes_uploaded)
    submission = backend.last_submission
    assert [w.name for w in submission.wheels.wheelhouse.wheels] == ["adetoy-1.0-py3-none-any.whl"]
    assert sent == [submission.wheels.wheelhouse.size, 0]
    assert submission.bytes_uploaded == submission.code.bytes_uploaded  # the code's bundle may have changed
    channel = submission.request["InputDataConfig"][0]
    assert channel["ChannelName"] == contract.WHEELHOUSE_CHANNEL
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == submission.wheels.uri
    assert "cached; uploaded 0 bytes" in backend.console.getvalue()

    # What SageMaker would run (DescribeTrainingJob's answer, run here): the channel comes from S3, pip no index.
    from ade_mlflow_plugin.backend.local import LocalJob

    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=submission.job_name)
    job = LocalJob(described, job_root=tmp_path / "job", stream=None)
    job.start()
    final = job.wait(timeout=180)
    log = job.log_path.read_text()
    assert final["TrainingJobStatus"] == "Completed", log[-3000:]
    assert "from the wheelhouse" in log and f"toy: 42 {(tmp_path / 'job').resolve() / contract.SITE_DIR}" in log

    (project / "requirements.txt").write_text("adetoy-nowheel==1.0\n")
    (links / "adetoy-nowheel-1.0.tar.gz").write_bytes(b"sdist only")
    runs_before = len(mlflow.search_runs(["0"], output_format="list"))
    with pytest.raises(ConfigError, match="no wheel of 'adetoy-nowheel==1.0' for manylinux2014_x86_64"):
        backend.run(str(project), "main", {}, None, dict(config), sqlite_tracking, "0")
    assert len(mlflow.search_runs(["0"], output_format="list")) == runs_before  # refused before a run exists
