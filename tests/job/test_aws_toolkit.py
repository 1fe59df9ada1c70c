"""Peer proof: AWS's own container toolkit (sagemaker-training, the code that starts user scripts in
AWS's PyTorch/HF training images) runs a submitted job's entry through the ade_entry.py shim."""
from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from ade_mlflow_plugin.backend.local import Location
from ade_mlflow_plugin.job.contract import ContainerPaths, write_contract
from tests.conftest import submit_to_moto

# A whole job, a subprocess `mlflow run` or a training entry: not in `make test-fast`.
pytestmark = pytest.mark.slow


def test_toolkit_starts_the_shim_and_the_entry_runs(aws, sqlite_tracking, tmp_path):
    submitted, described = submit_to_moto("ade-toolkit", sqlite_tracking)

    # What SageMaker does before it starts the image: the contract files and the channels.
    paths = ContainerPaths(tmp_path / "opt_ml")
    write_contract(paths, described)
    for channel in described["InputDataConfig"]:
        Location(channel["DataSource"]["S3DataSource"]["S3Uri"], None).download_to(
            paths.channel_dir(channel["ChannelName"]))

    # moto drops Environment from its answer; the launcher reads the run from the hyperparameters then.
    env = {**os.environ, **described.get("Environment", {}), "SAGEMAKER_BASE_DIR": str(paths.base),
           "SM_STUDIO_LOCAL_MODE": "true", "TRAINING_JOB_NAME": submitted.job_name}
    result = subprocess.run([sys.executable, "-m", "sagemaker_training.cli.train"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "ade_entry.py" in output and "trained on 3 lines" in output
    assert (paths.code_dir / "ade_entry.py").is_file()  # the toolkit unpacked our archive itself
    assert (paths.model_dir / "weights.txt").read_text().startswith("lr=0.1")
    assert (paths.checkpoint_dir / "last.txt").is_file()
    assert mlflow.get_run(submitted.run_id).info.status == "FINISHED"


def test_toolkit_does_not_pass_sigterm_on_which_is_why_jobs_start_through_the_bootstrap(sqlite_tracking, tmp_path):
    """aws/sagemaker-training-toolkit#125: a stop signal to the toolkit never reaches the user script.
    (test_bootstrap.py shows the same signal reaching the entry when the launcher is PID 1.)"""
    import signal
    import time

    from ade_mlflow_plugin.backend import packaging
    from tests.job.test_bad_job_input import COUNTER, _request

    archive = packaging.build_project_tarball(COUNTER, tmp_path / "code").path
    request, _ = _request(tmp_path, sqlite_tracking, code_uri=str(archive),
                          params={"steps": "400", "step_seconds": "0.25"})
    paths = ContainerPaths(tmp_path / "opt_ml")
    write_contract(paths, request)
    log = tmp_path / "toolkit.log"
    env = {**os.environ, **request["Environment"], "SAGEMAKER_BASE_DIR": str(paths.base),
           "SM_STUDIO_LOCAL_MODE": "true", "TRAINING_JOB_NAME": request["TrainingJobName"]}
    with open(log, "w") as out:
        toolkit = subprocess.Popen([sys.executable, "-m", "sagemaker_training.cli.train"], cwd=tmp_path, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    entry_group = None
    try:
        deadline = time.monotonic() + 180
        while "counter: step 2\n" not in log.read_text():
            assert time.monotonic() < deadline and toolkit.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        entry_group = int(paths.entry_pgid_file.read_text())
        toolkit.send_signal(signal.SIGTERM)
        toolkit.wait(timeout=30)
        time.sleep(2.0)  # the counter reacts within one 0.25 s step when the signal arrives
        text = log.read_text()
        assert "SIGTERM, checkpoint" not in text
        os.killpg(entry_group, 0)  # the entry is still running, unaware of the stop
    finally:
        for group in (entry_group, toolkit.pid):  # the orphaned launcher and entry: ours to end
            try:
                if group:
                    os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
