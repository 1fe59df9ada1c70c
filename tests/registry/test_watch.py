"""`ade-mlflow watch`: stage and alias changes on the real server are synced; the cursor persists."""
from __future__ import annotations

import json
import warnings

from mlflow import MlflowClient

from ade_mlflow_plugin.registry.watch import Change, diff_state
from tests.registry.conftest import run_cli


def _transition(name: str, version: str, stage: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        MlflowClient().transition_model_version_stage(name, version, stage)


def _watch(model_name, root, capsys):
    code, out, err = run_cli(["watch", "--once", "--model", model_name, "--root", str(root)], capsys)
    assert code == 0, err
    return out.strip().splitlines()


def test_stage_transition_is_synced_by_watch(make_version, model_name, root, capsys):
    v1 = make_version(model_name)
    assert _watch(model_name, root, capsys) == []  # nothing promoted yet; cursor written
    assert (root / ".watch-cursor.json").is_file()

    _transition(model_name, v1, "Production")
    assert _watch(model_name, root, capsys) == [f"stage: {model_name} v{v1} Production"]

    providers = json.loads((root / "providers.json").read_text())
    entry = providers["models"][model_name]["stages"]["Production"]
    assert entry["version"] == v1 and (root / "registry" / f"{model_name}-v{v1}" / "model_artifacts").is_dir()
    assert _watch(model_name, root, capsys) == []  # the cursor remembers

    v2 = make_version(model_name)
    MlflowClient().set_registered_model_alias(model_name, "staging-candidate", v2)
    _transition(model_name, v1, "Archived")
    lines = _watch(model_name, root, capsys)
    assert lines == [f"alias: {model_name} v{v2} staging-candidate", f"stage: {model_name} v{v1} Archived",
                     f"registered: {model_name} v{v2}"]
    providers = json.loads((root / "providers.json").read_text())["models"][model_name]
    assert providers["stages"] == {} and providers["aliases"]["staging-candidate"]["version"] == v2


def test_failed_hooks_keep_the_cursor_so_the_change_is_retried(make_version, model_name, root, capsys):
    v1 = make_version(model_name)
    _transition(model_name, v1, "Staging")
    root.mkdir(parents=True)
    (root / "registry").write_text("not a directory")  # sync cannot create the version dir
    assert _watch(model_name, root, capsys) == []
    (root / "registry").unlink()
    assert _watch(model_name, root, capsys) == [f"stage: {model_name} v{v1} Staging"]


def test_diff_state_reports_previous_holders():
    old = {"aliases": {"prod": "1", "gone": "1"}, "stages": {"1": "Production", "2": "None"}}
    new = {"aliases": {"prod": "2"}, "stages": {"1": "Archived", "2": "Production", "3": "None"}}
    assert diff_state("m", old, new) == [
        Change("alias", "m", "2", "prod", "1"),
        Change("alias_removed", "m", "1", "gone"),
        Change("stage", "m", "1", "Archived", None),
        Change("stage", "m", "2", "Production", "1"),
        Change("registered", "m", "3"),
    ]
