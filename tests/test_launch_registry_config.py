"""launch's registry_config: the name and the root are honoured, every other key is refused in one line."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config import ModelRegistryConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.launch import build_launch


def _launch(registry_config, output_dir=None, tmp_path=None):
    return build_launch(str(tmp_path), output_dir, "tiny/model", {}, registry_config, 10, 0.0, {})


def test_registry_path_is_where_the_model_lands(tmp_path):
    """The specification's registry_path names the registry folder: the model lands in it (output_dir is its
    parent, whose registry/<name>-v<N>/ is that folder), as it would in a local output_dir."""
    config = ModelRegistryConfig(registry_path=str(tmp_path / "models" / "registry"), model_name="ade-coder")
    parameters, backend = _launch(config, tmp_path=tmp_path)
    assert backend["output_dir"] == str((tmp_path / "models").resolve())
    assert parameters["registered_model_name"] == "ade-coder"
    assert "job_root" not in backend  # unlike a local output_dir in local mode: only the model goes there


def test_the_default_root_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ADE_MODELS_ROOT", str(tmp_path / "ade-root"))
    assert _launch(ModelRegistryConfig(), tmp_path=tmp_path)[1] == {}
    assert _launch({"registered_model_name": "x"}, tmp_path=tmp_path)[1] == {}


def test_the_same_folder_twice_is_fine_two_folders_are_refused(tmp_path):
    out = tmp_path / "out"
    assert _launch({"root": str(out)}, str(out), tmp_path)[1]["output_dir"] == str(out.resolve())
    with pytest.raises(ConfigError, match=r"^registry_config root '.*other' and output_dir '.*out' are two "
                                          r"places for the model to land: keep one$"):
        _launch({"root": str(tmp_path / "other")}, str(out), tmp_path)


@pytest.mark.parametrize("registry_config, key, fix", [
    ({"max_versions": 10}, "keep_versions", "pass it to those"),
    (ModelRegistryConfig(tracking_uri="https://alice:s3cr3t@mlflow:5000"), "tracking_uri", "set MLFLOW_TRACKING_URI"),
    ({"poll_interval_s": 3}, "poll_interval_s", "`ade-mlflow watch`"),
    ({"webhook_window_s": 60}, "webhook_window_s", "`ade-mlflow watch`"),
    (ModelRegistryConfig(load_entry_points=False), "load_entry_points", "`ade-mlflow watch`"),
    ({"presigned_fetch": False}, "presigned_fetch", "ADE_PRESIGNED_FETCH"),
])
def test_keys_launch_does_not_use_are_refused_in_one_line(tmp_path, registry_config, key, fix):
    with pytest.raises(ConfigError) as caught:
        _launch(registry_config, tmp_path=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"registry_config {key} is not used by launch")
    assert fix in message
    assert "s3cr3t" not in message  # the key is named, its value never echoed (a URI may carry a token)
