"""Peer proof: AWS's own container toolkit (sagemaker-training, the code that starts user scripts in
AWS's PyTorch/HF training images) runs a submitted job's entry through the ade_entry.py shim."""
from __future__ import annotations

import os
import subprocess
import sys

import mlflow

from ade_mlflow_plugin.backend.local import Location
from ade_mlflow_plugin.container.contract import ContainerPaths, write_contract
from tests.conftest import submit_to_moto


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
