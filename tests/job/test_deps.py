"""The launcher installs what the project asks for only when the image lacks it, with real pip.

pip is pointed at a private target dir (PIP_TARGET, pip's own setting) and no index, so the shared
environment is never touched and nothing leaves this machine.
"""
from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import time
import zipfile
from pathlib import Path

import mlflow
import pytest

from ade_mlflow_plugin.backend import packaging
from ade_mlflow_plugin.backend.local import LocalJob
from ade_mlflow_plugin.job.deps import declared_requirements, missing_requirements
from tests.conftest import FIXTURES
from tests.job.test_bad_job_input import _request, _run


def _wheel(dest: Path, name: str = "adetoy", version: str = "1.0") -> Path:
    """A real, minimal wheel (PEP 427) with one module."""
    files = {
        f"{name}/__init__.py": b"ANSWER = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    path = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, data in files.items():
            whl.writestr(member, data)
        whl.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def _project(tmp_path: Path, requirements: str) -> Path:
    project = tmp_path / "project"
    shutil.copytree(FIXTURES / "projects" / "needs_dep", project)
    (project / "requirements.txt").write_text(requirements)
    return project


def _code_uri(project: Path, tmp_path: Path) -> str:
    return packaging.build_project_tarball(project, tmp_path / "code").path.as_uri()


@pytest.fixture
def private_pip(tmp_path, monkeypatch) -> Path:
    target = tmp_path / "site"
    target.mkdir()
    monkeypatch.setenv("PIP_TARGET", str(target))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PYTHONPATH", str(target))  # the entry imports what pip put there
    return target


def test_declared_requirements_are_checked_against_the_environment(tmp_path):
    (tmp_path / "conda.yaml").write_text("dependencies:\n  - python=3.11\n  - pip:\n"
                                         "    - mlflow>=3.17\n    - adetoy-not-installed>=1\n")
    (tmp_path / "python_env.yaml").write_text("python: '3.11'\ndependencies:\n  - -r requirements.txt\n"
                                              "  - mlflow>=3.17\n")
    (tmp_path / "requirements.txt").write_text("# comment\n--index-url https://example.invalid\n"
                                               "-r more.txt\npyyaml>=6  # inline comment\n")
    (tmp_path / "more.txt").write_text("mlflow<1.0\npywin32>=1; sys_platform == 'win32'\n")
    # Each file once (requirements.txt is named twice), in order, options and comments dropped.
    assert declared_requirements(tmp_path) == [
        "mlflow>=3.17", "adetoy-not-installed>=1", "mlflow<1.0", "pywin32>=1; sys_platform == 'win32'",
        "pyyaml>=6"]
    # Present and new enough: kept; absent or too old: installed; another platform's: skipped.
    assert missing_requirements(tmp_path) == ["adetoy-not-installed>=1", "mlflow<1.0"]


@pytest.mark.slow
def test_missing_package_is_installed_before_the_entry_runs(sqlite_tracking, tmp_path, private_pip):
    wheel = _wheel(tmp_path)
    project = _project(tmp_path, f"adetoy @ {wheel.as_uri()}\nmlflow>=3.17\n")
    request, run_id = _request(tmp_path, sqlite_tracking, code_uri=_code_uri(project, tmp_path), params={})
    final = _run(request, tmp_path / "root")
    log = (tmp_path / "root" / "job.log").read_text()
    assert final["TrainingJobStatus"] == "Completed", log[-3000:]
    assert f"installing what the image lacks: adetoy @ {wheel.as_uri()}\n" in log  # mlflow is present: kept
    assert (private_pip / "adetoy" / "__init__.py").is_file()
    assert "use_dep: adetoy says 42" in log
    assert mlflow.get_run(run_id).data.metrics["adetoy_answer"] == 42


@pytest.mark.slow
def test_an_install_that_fails_fails_the_job_with_pips_reason(sqlite_tracking, tmp_path, private_pip):
    project = _project(tmp_path, "adetoy-nowhere==9.9\n")
    request, run_id = _request(tmp_path, sqlite_tracking, code_uri=_code_uri(project, tmp_path), params={})
    final = _run(request, tmp_path / "root")
    assert final["TrainingJobStatus"] == "Failed"
    reason = final["FailureReason"]
    assert "pip could not install adetoy-nowhere==9.9" in reason and "requirements.txt" in reason, reason
    assert "\n" not in reason
    assert (tmp_path / "root" / "output" / "failure").read_text().startswith("ade launcher: pip could not")
    assert mlflow.get_run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_a_stop_while_installing_ends_the_run_killed(sqlite_tracking, tmp_path, private_pip, monkeypatch):
    # An index that accepts connections and never answers: pip hangs until the stop arrives.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.delenv("PIP_NO_INDEX")
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/simple/")
        project = _project(tmp_path, "adetoy-slow==1.0\n")
        request, run_id = _request(tmp_path, sqlite_tracking, code_uri=_code_uri(project, tmp_path), params={})
        job = LocalJob(request, job_root=tmp_path / "root", stream=None)
        job.start()
        deadline = time.monotonic() + 120
        while "installing what the image lacks" not in job.log_path.read_text():
            assert time.monotonic() < deadline, job.log_path.read_text()[-2000:]
            time.sleep(0.2)
        job.stop()
        final = job.wait(timeout=60)
    assert final["TrainingJobStatus"] == "Stopped", job.log_path.read_text()[-2000:]
    assert "SIGTERM before the entry started" in job.log_path.read_text()
    assert mlflow.get_run(run_id).info.status == "KILLED"


def test_an_image_without_packaging_leaves_the_check_to_pip(tmp_path):
    """No `packaging` distribution (a bare image): every declared requirement goes to pip, which skips
    the satisfied ones itself; nothing of pip's internals is used."""
    import subprocess
    import sys

    project = _project(tmp_path, "adetoy>=1.0\nmlflow\n")
    code = ("import sys; sys.modules['packaging'] = None\n"  # makes `import packaging...` fail
            "from pathlib import Path\nfrom ade_mlflow_plugin.job.deps import missing_requirements\n"
            f"print(missing_requirements(Path({str(project)!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['adetoy>=1.0', 'mlflow']"
