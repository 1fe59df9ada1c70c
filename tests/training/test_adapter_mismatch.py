"""Issue 18 item 5: a checkpoint location whose adapter was saved with other LoRA settings is one line
naming both shapes and the fix (a new checkpoint_s3_uri), not PyTorch's size-mismatch trace."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training.checkpoints import check_adapter_matches, mark_complete
from tests.training.conftest import FAST_ARGS, Entry, entry_env, new_run


def _saved_adapter(folder, **lora):
    from peft import LoraConfig

    LoraConfig(**lora).save_pretrained(str(folder))  # the adapter_config.json a checkpoint holds
    return folder


def test_other_rank_is_one_line_naming_both_shapes_and_the_fix(tmp_path):
    folder = _saved_adapter(tmp_path / "checkpoint-4", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    config = TrainingConfig(lora_r=16, lora_alpha=32, target_modules="q_proj,v_proj")
    with pytest.raises(ConfigError) as caught:
        check_adapter_matches(folder, config)
    message = caught.value.message
    assert "\n" not in message
    assert "r=8, alpha=16, target_modules=q_proj,v_proj" in message
    assert "r=16, alpha=32, target_modules=q_proj,v_proj" in message
    assert "checkpoint-4" in message and "new checkpoint_s3_uri" in message


def test_other_modules_or_alpha_are_refused_and_the_same_settings_pass(tmp_path):
    folder = _saved_adapter(tmp_path / "checkpoint-2", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    with pytest.raises(ConfigError, match="target_modules=k_proj"):
        check_adapter_matches(folder, TrainingConfig(lora_r=8, lora_alpha=16, target_modules="k_proj"))
    with pytest.raises(ConfigError, match="alpha=8"):
        check_adapter_matches(folder, TrainingConfig(lora_r=8, lora_alpha=8, target_modules="v_proj,q_proj"))
    check_adapter_matches(folder, TrainingConfig(lora_r=8, lora_alpha=16, target_modules="v_proj,q_proj"))
    check_adapter_matches(folder, TrainingConfig(lora_r=8, lora_alpha=16))  # all-linear: resolved by PEFT
    check_adapter_matches(None, TrainingConfig())  # no checkpoint yet: a fresh start


@pytest.mark.slow
def test_restart_with_another_rank_is_one_line_exit_2(tiny_model, prepared_dataset, tracking_uri, tmp_path):
    args = ["--dataset", str(prepared_dataset), "--base_model", str(tiny_model), "--max_steps", "2",
            "--save_steps", "1", "--registered_model_name", "", *FAST_ARGS]
    env = entry_env(tracking_uri, new_run(tracking_uri, "adapter-mismatch"), tmp_path / "ckpt", tmp_path / "m")
    first = Entry("train.py", [*args, "--lora_r", "4"], env)
    assert first.wait(timeout=180) == 0, first.output[-3000:]
    env = entry_env(tracking_uri, new_run(tracking_uri, "adapter-mismatch"), tmp_path / "ckpt", tmp_path / "m")
    second = Entry("train.py", [*args, "--lora_r", "8"], env)
    assert second.wait(timeout=180) == 2, second.output[-3000:]
    errors = [line for line in second.lines if line.startswith("ade-mlflow: error:")]
    assert len(errors) == 1 and "r=4" in errors[0] and "r=8" in errors[0] and "checkpoint_s3_uri" in errors[0]
    assert "size mismatch" not in second.output and "Traceback" not in second.output


def test_marker_alone_does_not_matter(tmp_path):
    """A folder without adapter_config.json (not a PEFT checkpoint) is left to the loader."""
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    mark_complete(folder)
    check_adapter_matches(folder, TrainingConfig())
