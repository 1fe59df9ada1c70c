"""The README's command lines, typed as written, do what the README says they do."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from ade_mlflow_plugin.backend.fit import plan_fit
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _sharding_example() -> tuple[Path, dict[str, str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = next(m.group(0) for m in re.finditer(r"mlflow run [^\n]*\\\n[^\n]*sharding=fsdp", readme))
    words = shlex.split(example.replace("\\\n", " "))
    params = dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "-P")
    return ROOT / words[words.index("--backend-config") + 1], params


def _training(params: dict[str, str]) -> TrainingConfig:
    return TrainingConfig.from_params(params)


def test_the_sharding_example_names_a_config_that_exists_and_is_planned_sharded():
    config_file, params = _sharding_example()
    assert config_file.is_file(), f"README names {config_file.relative_to(ROOT)}, which does not exist"

    plan = plan_fit(CloudTrainingConfig.from_backend_config(json.loads(config_file.read_text())), _training(params))

    assert plan.sharding == "fsdp" and plan.tags["ade.memory_fit"] == "sharded"
    assert f"~{plan.tags['ade.memory_estimate_gib']} GiB per GPU of {plan.tags['ade.memory_gpu_gib']}" in \
        (ROOT / "README.md").read_text(encoding="utf-8")  # the figures the README quotes are today's


def test_the_sharding_example_on_the_one_gpu_example_config_is_refused_as_the_readme_says():
    _, params = _sharding_example()
    one_gpu = CloudTrainingConfig.from_backend_config(json.loads((ROOT / "examples" / "sagemaker.json").read_text()))

    with pytest.raises(ConfigError, match="ml.g5.2xlarge"):
        plan_fit(one_gpu, _training(params))
