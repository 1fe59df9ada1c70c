"""`ade-mlflow sync RUN_ID`: the versions a run registered land in its output_dir (registry/landing.py)."""
from __future__ import annotations

import uuid

from mlflow import MlflowClient

from tests.registry.conftest import run_cli


def test_sync_run_id_lands_the_runs_versions_in_its_output_dir(make_version, model_name, tmp_path, capsys):
    version = make_version(model_name)
    run_id = MlflowClient().get_model_version(model_name, version).run_id
    out_dir = tmp_path / "out"
    MlflowClient().set_tag(run_id, "ade.output_dir", str(out_dir))
    code, out, err = run_cli(["sync", run_id], capsys)
    assert code == 0, err
    assert f"{model_name}/v{version}" in out and (out_dir / "registry" / f"{model_name}-v{version}").is_dir()
    # Again: forced, so landed again (verified, nothing to download) rather than skipped.
    code, out, err = run_cli(["sync", run_id], capsys)
    assert code == 0 and f"{model_name}/v{version} ->" in out, err


def test_sync_run_id_bad_input_is_one_line(make_version, model_name, tmp_path, capsys):
    version = make_version(model_name)
    run_id = MlflowClient().get_model_version(model_name, version).run_id
    code, _, err = run_cli(["sync", run_id], capsys)  # no ade.output_dir tag, no --root
    assert code == 2 and err.count("\n") == 1 and "--root" in err
    missing = uuid.uuid4().hex
    code, _, err = run_cli(["sync", missing, "--root", str(tmp_path / "r")], capsys)
    assert code == 2 and err.count("\n") == 1 and missing in err
