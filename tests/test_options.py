"""The options kit: every field of every config is declared once with a parser, help and a default
that parses; aliases, did-you-mean and one-line errors work the same for every config."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from ade_mlflow_plugin.config import (CloudTrainingConfig, DatasetConfig, EvaluateConfig, ModelRegistryConfig,
                                      TrainingConfig)
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.options import (add_arguments, from_mapping, option, options_class, options_of, parse_value,
                                       whole)

CONFIGS = [CloudTrainingConfig, TrainingConfig, ModelRegistryConfig, DatasetConfig, EvaluateConfig]
FIELDS = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls)]
IDS = [f"{cls.__name__}.{name}" for cls, name in FIELDS]


@pytest.mark.parametrize("cls, name", FIELDS, ids=IDS)
def test_every_field_has_a_parser_help_and_a_default_that_parses(cls, name):
    opt = options_of(cls)[name]
    assert callable(opt.parser)
    assert opt.help.strip(), f"{cls.__name__}.{name} has no help text"
    default = opt.default_factory() if opt.default_factory is not None else opt.default
    parsed = parse_value(cls, name, default)
    assert parse_value(cls, name, parsed) == parsed  # parsers are idempotent: construction re-parses


@pytest.mark.parametrize("cls, name", FIELDS, ids=IDS)
def test_every_field_refuses_a_wrong_value_in_one_line_naming_it(cls, name):
    with pytest.raises(ConfigError) as info:
        parse_value(cls, name, object())
    assert f"{name}" in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__name__ for c in CONFIGS])
def test_defaults_construct_and_every_option_is_on_the_command_line(cls):
    cls()  # every default parses inside the constructor too
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    help_text = " ".join(parser.format_help().split())
    for name, opt in options_of(cls).items():
        assert f"--{name}" in help_text and " ".join(opt.help.split()) in help_text


def test_the_seeds_max_runtime_alias_works_in_the_constructor_and_the_backend_config():
    seed = CloudTrainingConfig(instance_type="ml.g4dn.xlarge", instance_count=1, max_runtime=86400)
    assert (seed.instance_type, seed.instance_count, seed.max_runtime_s) == ("ml.g4dn.xlarge", 1, 86400)
    local = CloudTrainingConfig.from_backend_config({"mode": "local", "max_runtime": "3600"})
    assert local.max_runtime_s == 3600
    with pytest.raises(ConfigError, match="'max_runtime' and 'max_runtime_s' are the same setting: keep one"):
        CloudTrainingConfig.from_backend_config({"mode": "local", "max_runtime": 60, "max_runtime_s": 60})


@pytest.mark.parametrize("build, message", [
    (lambda: CloudTrainingConfig.from_backend_config({"mode": "local", "instance_typ": "ml.g5.xlarge"}),
     "backend config: unknown key 'instance_typ' (did you mean 'instance_type'?)"),
    (lambda: TrainingConfig.from_params({"lora_alfa": "16"}),
     "unknown training parameter 'lora_alfa' (did you mean 'lora_alpha'?)"),
    (lambda: ModelRegistryConfig.from_dict({"keep_version": 2}),
     "unknown registry config key(s) keep_version; valid keys are keep_versions, load_entry_points, "
     "poll_interval_s, presigned_fetch, registered_model_name, root, tracking_uri, webhook_window_s "
     "(did you mean 'keep_versions'?)"),
])
def test_unknown_key_gets_a_did_you_mean(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.message == message and info.value.exit_code == 2


@pytest.mark.parametrize("build, message", [
    (lambda: CloudTrainingConfig(instance_count=0),
     "backend config 'instance_count': got 0, expected an integer between 1 and 100"),
    (lambda: CloudTrainingConfig.from_backend_config({"mode": "local", "use_spot": "yes"}),
     "backend config 'use_spot': got \"yes\", expected true or false"),
    (lambda: TrainingConfig(lora_r=0), "parameter 'lora_r': got 0, expected an integer between 1 and 1024"),
    (lambda: TrainingConfig.from_params({"quantization": "16bit"}),
     "parameter 'quantization': got '16bit', expected 'none' or '8bit' or '4bit'"),
    (lambda: ModelRegistryConfig(webhook_window_s=0),
     "webhook_window_s must be an integer between 1 and 3600, got 0; set it to e.g. 300"),
])
def test_bad_values_are_one_line_in_the_configs_style_from_mappings_and_constructors(build, message):
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.message == message


def test_mlflow_strings_parse_and_case_is_forgiven_for_choices():
    config = TrainingConfig.from_params({"lora_r": "8.0", "quantization": "4BIT", "packing": "no"})
    assert (config.lora_r, config.quantization, config.packing) == (8, "4bit", False)


def test_a_field_declared_without_the_kit_is_refused_at_import():
    with pytest.raises(TypeError, match=r"fields \['b'\] are not declared with options.option"):
        @options_class
        @dataclasses.dataclass
        class Half:
            a: int = option(1, whole(0), "declared")
            b: int = 2


def test_combination_checks_run_after_parsing():
    with pytest.raises(ConfigError, match="'subnets' and 'security_group_ids' go together"):
        from_mapping(CloudTrainingConfig, {"mode": "local", "subnets": ["subnet-0abc"]})
