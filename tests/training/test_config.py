"""TrainingConfig: MLflow's string params parse; every bad value is one line naming the param and the fix."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.config.training import TrainingConfig


def test_mlflow_float_strings_parse_to_whole_numbers():
    config = TrainingConfig.from_params({"lora_r": "16.0", "batch_size": "4", "max_steps": "0.0", "seed": "7",
                                         "epochs": "1.5", "merge_adapter": "true", "quantization": "4bit",
                                         "registered_model_name": ""})
    assert (config.lora_r, config.batch_size, config.max_steps, config.seed) == (16, 4, 0, 7)
    assert config.epochs == 1.5 and config.merge_adapter is True and config.quantization == "4bit"
    assert config.registered_model_name == ""


def test_defaults_suit_deepseek_coder_on_one_24gb_gpu():
    config = TrainingConfig()
    assert config.base_model == "deepseek-ai/deepseek-coder-1.3b-instruct"
    assert (config.lora_r, config.lora_alpha, config.target_modules, config.quantization) == (16, 32.0, "all-linear", "none")
    assert config.batch_size * config.grad_accumulation == 16 and config.max_seq_len == 2048 and config.packing


def test_target_modules_list():
    assert TrainingConfig.from_params({"target_modules": "q_proj, v_proj"}).target_module_list == ["q_proj", "v_proj"]
    assert TrainingConfig().target_module_list == "all-linear"


@pytest.mark.parametrize("name, value, expected", [
    ("lora_r", "16.5", "an integer between 1 and 1024"),
    ("lora_r", "0", "an integer between 1 and 1024"),
    ("batch_size", "four", "an integer >= 1"),
    ("lora_alpha", "0", "a positive number"),
    ("quantization", "3bit", "'none' or '8bit' or '4bit'"),
    ("merge_adapter", "maybe", "true or false"),
    ("learning_rate", "0", "(0.0, 1.0]"),
    ("lora_dropout", "1", "[0.0, 1.0)"),
    ("eval_fraction", "-0.1", "[0.0, 1.0)"),
    ("max_seq_len", "8", "an integer >= 16"),
    ("target_modules", "q proj", "all-linear or module names"),
    ("epochs", "nan", "finite"),
])
def test_bad_values_name_param_and_fix(name, value, expected):
    with pytest.raises(ConfigError) as err:
        TrainingConfig.from_params({name: value})
    message = err.value.message
    assert f"'{name}'" in message and expected in message and "\n" not in message


def test_unknown_param_gets_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'lora_alpha'"):
        TrainingConfig.from_params({"lora_alfa": "16"})


def test_zero_epochs_without_max_steps_is_refused():
    with pytest.raises(ConfigError, match="'epochs': must be > 0 when max_steps is 0"):
        TrainingConfig.from_params({"epochs": "0"})
    assert TrainingConfig.from_params({"epochs": "0", "max_steps": "5"}).max_steps == 5


def test_lead_reexports_config():
    from ade_mlflow_plugin import config

    assert config.TrainingConfig is TrainingConfig


def test_config_tiny_and_tracking_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, ade_mlflow_plugin.config, ade_mlflow_plugin.config.training, "
            "ade_mlflow_plugin.training.tiny, ade_mlflow_plugin.training.tracking; "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("entry_point, extra", [
    ("main", {"codebase": "tests/fixtures/codebases/polyglot"}),
    ("train", {"dataset": "tests/fixtures/codebases/polyglot"}),
])
def test_mlproject_commands_with_defaults_parse(entry_point, extra):
    """The command MLflow renders from MLproject (defaults, '' for no registration) parses as-is."""
    import shlex

    from mlflow.projects.utils import load_project

    from ade_mlflow_plugin.training.entry import parse_config
    from tests.conftest import REPO_ROOT

    command = load_project(str(REPO_ROOT)).get_entry_point(entry_point).compute_command(
        {**extra, "registered_model_name": ""}, str(REPO_ROOT))
    argv = shlex.split(command)
    assert argv[1] == f"entrypoints/{entry_point}.py"
    config = parse_config(entry_point, argv[2:])
    assert config == TrainingConfig(**{**extra, "codebase": config.codebase, "dataset": config.dataset})
    assert (config.target_modules, config.registered_model_name, config.merge_adapter) == ("all-linear", "", False)
