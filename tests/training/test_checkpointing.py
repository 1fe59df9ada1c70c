"""Activation checkpointing of some decoder layers (checkpoint_layers): what it resolves to, that it only
recomputes the chosen layers, and that loss and gradients are those of the plain path (CPU, tiny model)."""
from __future__ import annotations

import pytest
import torch

from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training import speed
from ade_mlflow_plugin.config.training import AUTO_CHECKPOINT_SHARE, TrainingConfig
from ade_mlflow_plugin.training.packing import PackedCollator, build_rows

EXAMPLES = [{"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
            {"prompt": "int main() {", "completion": " return 0; }"}] * 3


@pytest.mark.parametrize("params, layers, expected", [
    ({}, 24, 0),                                                    # LoRA: no recompute by default
    ({"quantization": "4bit"}, 24, round(AUTO_CHECKPOINT_SHARE * 24)),  # QLoRA: most layers, for memory
    ({"quantization": "4bit", "checkpoint_layers": "0"}, 24, 0),
    ({"checkpoint_layers": "5"}, 24, 5),
    ({"checkpoint_layers": "99"}, 24, 24),
    ({"gradient_checkpointing": "true", "checkpoint_layers": "3"}, 24, 24),
])
def test_checkpointed_layer_count(params, layers, expected):
    assert TrainingConfig.from_params({"base_model": "m", **params}).checkpointed_layers(layers) == expected


@pytest.mark.parametrize("value", ["-1", "some", "2.5"])
def test_bad_checkpoint_layers_is_one_clear_error(value):
    with pytest.raises(ConfigError, match=r"checkpoint_layers.*auto or a whole number >= 0"):
        TrainingConfig.from_params({"base_model": "m", "checkpoint_layers": value})


def _model(tiny_model, checkpoint_layers: str):
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    torch.manual_seed(0)
    config = TrainingConfig(base_model=str(tiny_model), checkpoint_layers=checkpoint_layers)
    model = add_lora(load_base_model(config, "cpu", torch.float32), config)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters matter for the gradients compared
            torch.nn.init.normal_(param, std=0.05)
    return model.train()


def _attention_calls(model, batch):
    """Loss, LoRA gradients and how often each layer's attention ran in one forward + backward."""
    calls = []
    hooks = [layer.self_attn.register_forward_hook(lambda *_, i=i: calls.append(i))
             for i, layer in enumerate(speed.decoder_layers(model))]
    try:
        loss = model(**batch).loss
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, [calls.count(i) for i in range(len(hooks))]


def test_only_the_chosen_layers_recompute_and_gradients_are_unchanged(tiny_model, tiny_tokenizer):
    rows, _ = build_rows(tiny_tokenizer, EXAMPLES, 48)
    batch = PackedCollator(tiny_tokenizer.pad_token_id)(rows[:2])
    plain_loss, plain_grads, plain_calls = _attention_calls(_model(tiny_model, "0"), batch)
    loss, grads, calls = _attention_calls(_model(tiny_model, "1"), batch)
    assert plain_calls == [1] * len(plain_calls) and len(calls) >= 2
    assert calls == [2] + [1] * (len(calls) - 1)  # layer 0 ran again in backward, the others did not
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == plain_grads.keys() and len(grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
