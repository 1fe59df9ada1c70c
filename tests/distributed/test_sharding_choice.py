"""sharding.py's pure parts and the stop agreement alone: what auto/none/fsdp resolve to, the QLoRA refusal,
the Trainer arguments for a sharded model (fast: no process group, no training)."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training.sharding import FSDP, NONE, check_quantization, choose, plain_need_gib


@pytest.mark.parametrize("sharding, device, world, gpu, need, mode, words", [
    ("none", "cuda", 8, 10.0, 99.0, NONE, "sharding=none"),
    ("fsdp", "cpu", 1, None, None, NONE, "with one process"),
    ("auto", "cuda", 1, 10.0, 99.0, NONE, "with one process"),
    ("fsdp", "cpu", 2, None, None, FSDP, "sharding=fsdp"),
    ("auto", "cpu", 2, None, None, NONE, "on cpu: unsharded"),
    ("auto", "cuda", 2, None, None, NONE, "no memory estimate"),
    ("auto", "cuda", 2, 80.0, 20.0, NONE, "unsharded needs ~20.0 GiB per GPU, the GPU has 80.0"),
    ("auto", "cuda", 2, 22.0, 30.5, FSDP, "unsharded would need ~30.5 GiB per GPU, the GPU has 22.0"),
])
def test_choice(sharding, device, world, gpu, need, mode, words):
    choice = choose(TrainingConfig(sharding=sharding), device, world, gpu, need)
    assert choice.mode == mode and words in choice.reason and words in choice.line()


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_base_with_fsdp_is_one_line_naming_the_fix(quantization):
    params = {"sharding": "fsdp", "quantization": quantization}
    with pytest.raises(ConfigError) as caught:
        TrainingConfig.from_params(params)  # the entries and the backend, before any run
    message = caught.value.message
    assert f"'sharding': quantization={quantization} with sharding=fsdp is not supported" in message
    assert "pass sharding=none" in message and "\n" not in message
    config = TrainingConfig(**params)  # built in code: the job still refuses it before loading
    with pytest.raises(ConfigError, match="with sharding=fsdp is not supported"):
        check_quantization(config, choose(config, "cuda", 2))


def test_auto_never_shards_a_quantized_base():
    choice = choose(TrainingConfig(quantization="4bit"), "cuda", 8, 10.0, 99.0)
    assert choice.mode == NONE and "a quantized base is not sharded" in choice.reason


def test_unsharded_or_unquantized_passes():
    for config in (TrainingConfig(sharding="none", quantization="4bit"), TrainingConfig(sharding="fsdp")):
        check_quantization(config, choose(config, "cpu", 2))


class ModelConfig(dict):
    """What plain_need_gib reads of a transformers config: to_dict()."""

    def to_dict(self) -> dict:
        return dict(self)


def test_plain_need_from_a_model_config():
    deepseek_1_3b = ModelConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24,
                                num_attention_heads=16, vocab_size=32256)
    small = plain_need_gib(TrainingConfig(batch_size=1, max_seq_len=512), deepseek_1_3b)
    assert plain_need_gib(TrainingConfig(), ModelConfig(hidden_size=8)) is None  # not a decoder it can shape
    assert small is not None and 2 < small < plain_need_gib(TrainingConfig(batch_size=8), deepseek_1_3b)


def test_sharded_model_trains_with_save_only_model(tmp_path):
    from ade_mlflow_plugin.training.trainer import training_arguments

    assert training_arguments(TrainingConfig(), tmp_path, "cpu", sharded=True).save_only_model
    assert not training_arguments(TrainingConfig(), tmp_path, "cpu").save_only_model


def test_stop_alone_needs_no_collective():
    from transformers import TrainerControl, TrainerState

    from ade_mlflow_plugin.training.callbacks import StopOnSigterm, any_rank
    from ade_mlflow_plugin.training.checkpoints import StopFlag

    assert any_rank(True) and not any_rank(False)  # no process group: the value itself
    flag, control = StopFlag(), TrainerControl()
    callback = StopOnSigterm(flag)
    assert not callback.on_step_end(None, TrainerState(), control).should_training_stop
    flag.set()
    control = callback.on_step_end(None, TrainerState(), control)
    assert control.should_save and control.should_training_stop
