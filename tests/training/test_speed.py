"""Speed options of the training path give the same numbers as the plain path (CPU, tiny model).

The fused LM head + cross-entropy against the model's own loss and gradients; compiled decoder layers
against eager ones; both undone after training; the switches. (Packed logits equal the example run
alone: tests/training/test_packing.py; FlexAttention's packed logits are checked on the GPU by
benchmarks/train_throughput.py, since compiling it on 2 CPU cores takes minutes.)
"""
from __future__ import annotations

import pytest
import torch

from ade_mlflow_plugin.adapters.torch_compile import is_compiled
from ade_mlflow_plugin.training import speed
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training.packing import PackedCollator, build_rows

EXAMPLES = [
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {"prompt": "### Instruction:\nWrite a loop\n### Response:\n", "completion": "for i in range(3):\n    print(i)\n"},
    {"prompt": "int main() {", "completion": " return 0; }"},
    {"prompt": "func Hello() string {", "completion": "\n\treturn \"hi\"\n}"},
]


@pytest.fixture
def batch(tiny_tokenizer):
    rows, _ = build_rows(tiny_tokenizer, EXAMPLES * 3, 48)
    return PackedCollator(tiny_tokenizer.pad_token_id, pad_to_multiple_of=16)(rows[:3])


def _loss_and_grads(model, batch, **extra):
    model.zero_grad()
    loss = model(**batch, **extra).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("num_items", [None, 37])
def test_fused_loss_and_gradients_equal_the_models_own(lora_model, batch, num_items):
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    plain_loss, plain_grads = _loss_and_grads(lora_model, batch, **extra)
    with speed.fused_loss(lora_model) as applied:
        assert applied
        out = lora_model(**batch, **extra)
        assert out.logits is None  # proof the fused path ran, not the model's
        fused_loss, fused_grads = _loss_and_grads(lora_model, batch, **extra)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_loss_chunks_agree_with_one_chunk():
    torch.manual_seed(1)
    hidden = torch.randn(2, 50, 16, requires_grad=True)
    weight = torch.randn(300, 16)
    labels = torch.randint(0, 300, (2, 50))
    labels[:, :7] = speed.IGNORE
    ref = torch.nn.functional.cross_entropy((hidden[:, :-1] @ weight.t()).reshape(-1, 300), labels[:, 1:].reshape(-1),
                                            ignore_index=speed.IGNORE)
    ref_grad, = torch.autograd.grad(ref, hidden)
    old = speed.LOGITS_PER_CHUNK
    try:
        speed.LOGITS_PER_CHUNK = 300 * 256  # several chunks of 256 tokens... and one partial
        hidden_long = torch.randn(3, 400, 16, requires_grad=True)
        labels_long = torch.randint(0, 300, (3, 400))
        fused = speed.linear_cross_entropy(hidden_long, weight, labels_long)
        plain = torch.nn.functional.cross_entropy((hidden_long[:, :-1] @ weight.t()).reshape(-1, 300),
                                                  labels_long[:, 1:].reshape(-1))
        torch.testing.assert_close(fused, plain)
    finally:
        speed.LOGITS_PER_CHUNK = old
    loss = speed.linear_cross_entropy(hidden, weight, labels)
    grad, = torch.autograd.grad(loss, hidden)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_fused_loss_leaves_eval_and_the_model_as_they_were(lora_model, batch):
    lm = speed.causal_lm(lora_model)
    with speed.fused_loss(lora_model):
        lora_model.eval()
        with torch.no_grad():
            out = lora_model(**batch)
        assert out.logits is not None and out.loss is not None  # eval keeps logits (evaluation.py needs them)
        lora_model.train()
    assert "forward" not in vars(lm)


def test_trained_lm_head_is_left_to_the_model(tiny_model):
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    config = TrainingConfig(base_model=str(tiny_model), target_modules="q_proj,lm_head")
    model = add_lora(load_base_model(config, "cpu", torch.float32), config)
    with speed.fused_loss(model) as applied:
        assert not applied


@pytest.mark.slow  # inductor compiles C++ for the CPU: about a minute on 2 cores
def test_compiled_layers_loss_equals_eager(lora_model, batch):
    torch.compiler.reset()
    eager_loss, eager_grads = _loss_and_grads(lora_model, batch)
    with speed.compiled_layers(lora_model) as count:
        assert count == 2
        compiled_loss, compiled_grads = _loss_and_grads(lora_model, batch)
    assert not any(is_compiled(layer) for layer in speed.decoder_layers(lora_model))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
    torch.compiler.reset()


def test_bf16_adapters_cast_lora_weights_to_the_base_dtype(tiny_model):
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    config = TrainingConfig(base_model=str(tiny_model))
    model = add_lora(load_base_model(config, "cpu", torch.bfloat16), config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {p.dtype for p in trainable} == {torch.float32}  # PEFT's default, what the option changes
    with speed.speedups(model, config, "cpu") as applied:
        assert applied == ["bf16_adapters", "fused_loss"]
        assert {p.dtype for p in trainable} == {torch.bfloat16}


def test_switches_turn_each_option_off(lora_model):
    off = TrainingConfig.from_params({"flex_attention": "false", "compile_layers": "false", "fused_loss": "false",
                                      "bf16_adapters": "false"})
    with speed.speedups(lora_model, off, "cuda") as applied:
        assert applied == []
        assert "forward" not in vars(speed.causal_lm(lora_model))
    assert speed.attention_implementation(off, "cuda") is None
    on = TrainingConfig()
    assert speed.attention_implementation(on, "cuda") == "flex_attention"
    assert speed.attention_implementation(on, "cpu") is None
    assert speed.pad_multiple(on, "cuda") == 128 and speed.pad_multiple(on, "cpu") == 1
