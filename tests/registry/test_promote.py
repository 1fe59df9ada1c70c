"""Promotion through the real CLI entry against the real MLflow server; hooks sync to ADE storage."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.hooks import get_plugin_manager, register_plugin
from ade_mlflow_plugin.registry.promote import history, promote
from tests.registry.conftest import Recorder, run_cli


def _providers(root):
    return json.loads((root / "providers.json").read_text())


def test_promote_alias_syncs_and_moves_with_history(make_version, model_name, root, capsys):
    v1, v2 = make_version(model_name), make_version(model_name)
    code, out, _ = run_cli(["promote", model_name, v1, "--alias", "production", "--root", str(root)], capsys)
    assert code == 0 and f"v{v1} -> alias production" in out
    assert _providers(root)["models"][model_name]["aliases"]["production"]["version"] == v1

    code, out, _ = run_cli(["promote", model_name, v2, "--alias", "production", "--root", str(root)], capsys)

    assert code == 0 and f"(previous: v{v1})" in out
    entry = _providers(root)["models"][model_name]["aliases"]["production"]
    assert entry["version"] == v2 and (root / "registry" / f"{model_name}-v{v2}" / "metadata.json").is_file()
    client = MlflowClient()
    assert client.get_model_version_by_alias(model_name, "production").version == v2
    [event] = history(client, model_name, v2)
    assert event["alias"] == "production" and event["previous_version"] == v1
    demotions = [k for k in client.get_model_version(model_name, v1).tags if k.startswith("ade.demotion.")]
    assert len(demotions) == 1
    meta = json.loads((root / "registry" / f"{model_name}-v{v2}" / "metadata.json").read_text())
    assert meta["aliases"] == ["production"]


def test_promote_fires_hooks_in_order(make_version, model_name, root):
    v1 = make_version(model_name)
    config = ModelRegistryConfig(root=root, load_entry_points=False)
    pm = get_plugin_manager(config)
    recorder = Recorder()
    register_plugin(pm, recorder, "recorder")

    promote(MlflowClient(), model_name, v1, alias="champion", plugin_manager=pm)

    assert recorder.named("ade_version_promoted") == [dict(name=model_name, version=v1, alias="champion",
                                                           stage=None, previous_version=None)]
    [after] = recorder.named("ade_after_sync")
    assert after["path"] == root / "registry" / f"{model_name}-v{v1}" and after["downloaded_bytes"] > 0
    assert len(recorder.named("ade_provider_registry_updated")) == 1


def test_promote_stage_archive_existing(make_version, model_name, root, capsys):
    v1, v2 = make_version(model_name), make_version(model_name)
    assert run_cli(["promote", model_name, v1, "--stage", "production", "--root", str(root)], capsys)[0] == 0
    code, out, _ = run_cli(["promote", model_name, v2, "--stage", "Production", "--archive-existing",
                            "--root", str(root)], capsys)
    assert code == 0 and f"(previous: v{v1})" in out
    client = MlflowClient()
    assert client.get_model_version(model_name, v1).current_stage == "Archived"
    assert _providers(root)["models"][model_name]["stages"]["Production"]["version"] == v2
    assert history(client, model_name, v2)[0]["stage"] == "Production"

    assert run_cli(["promote", model_name, v2, "--stage", "Archived", "--root", str(root)], capsys)[0] == 0
    assert model_name not in _providers(root)["models"]


@pytest.mark.parametrize("args, message", [
    (["1", "--alias", "a", "--stage", "Production"], "exactly one of --alias"),
    (["1"], "exactly one of --alias"),
    (["1", "--stage", "Prod"], "stage 'Prod' is not one of"),
    (["1", "--alias", "a", "--archive-existing"], "--archive-existing only applies"),
    (["99", "--alias", "a"], "99"),
])
def test_promote_bad_input_exits_2_in_one_line(make_version, model_name, root, capsys, args, message):
    make_version(model_name)
    code, _, err = run_cli(["promote", model_name, *args, "--root", str(root)], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (root / "providers.json").exists()
