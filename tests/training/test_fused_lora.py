"""Fused LoRA (training/fused_lora.py) computes what PEFT computes: loss and every gradient of a tiny model,
eager and traced by torch.compile, and each member alone when it is called out of the group's order."""
from __future__ import annotations

import pytest
import torch

from ade_mlflow_plugin.adapters.torch_compile import uncompile
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.training import speed
from ade_mlflow_plugin.training import fused_lora as fl
from ade_mlflow_plugin.training.fused_lora import fused_lora


def _batch(model, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)  # fresh inputs for each check
    ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=generator)
    return {"input_ids": ids, "labels": ids.clone()}


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_same(model, seed: int, run) -> None:
    batch = _batch(model, seed)
    plain_loss, plain_grads = _loss_and_grads(model, batch)
    fused_loss, fused_grads = run(batch)
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_groups_are_qkv_and_gate_up_of_every_layer(lora_model):
    layers = len(speed.decoder_layers(lora_model))
    with fused_lora(lora_model) as leads:
        assert sorted(len(fl.members(lead)) for lead in leads) == [2] * layers + [3] * layers
        assert all(fl.fuses_base(lead) for lead in leads)
    assert not any(name.startswith("ade_") for m in lora_model.modules() for name in vars(m))


def test_loss_and_gradients_equal_peft(lora_model):
    def fused(batch):
        with fused_lora(lora_model) as groups:
            assert len(groups) == 2 * len(speed.decoder_layers(lora_model))
            return _loss_and_grads(lora_model, batch)

    _assert_same(lora_model, 1, fused)
    _assert_same(lora_model, 2, fused)
    assert not any("forward" in vars(m) for m in lora_model.modules())


def _linears(graph_module) -> int:
    return sum(node.op == "call_function" and node.target is torch.nn.functional.linear for node in graph_module.graph.nodes)


@pytest.mark.slow  # dynamo + aot tracing of 2 layers: ~15 s on 2 loaded cores
def test_traced_by_torch_compile_equals_peft_and_fuses(lora_model):
    """dynamo sees the group (one graph per layer, no break) and autograd through it stays exact."""
    torch.compiler.reset()
    layers = speed.decoder_layers(lora_model)
    counts: list[int] = []

    def counting(graph_module, example_inputs):  # a torch.compile backend: count, then run the graph as is
        counts.append(_linears(graph_module))
        return graph_module.forward

    def compiled(batch, backend):
        with fused_lora(lora_model):
            for layer in layers:
                layer.compile(backend=backend, fullgraph=True)
            try:
                return _loss_and_grads(lora_model, batch)
            finally:
                for layer in layers:
                    uncompile(layer)

    lora_model.enable_input_require_grads()  # every layer's input needs grad: no recompile for the first one
    _assert_same(lora_model, 3, lambda batch: compiled(batch, counting))
    # One graph for both layers (a graph per layer would be recompiled past torch's limit of 8 and run
    # eagerly). PEFT: 7 projections x (base, A, B) = 21 matmuls a layer; fused: q/k/v 1 + 1 + 3,
    # gate/up 1 + 1 + 2, o and down 3 each.
    assert counts == [15], counts
    torch.compiler.reset()
    _assert_same(lora_model, 4, lambda batch: compiled(batch, "aot_eager"))  # autograd traced too
    torch.compiler.reset()


def test_a_member_called_alone_or_out_of_order_runs_peft_forward(lora_model):
    with fused_lora(lora_model) as leads:
        lead = next(lead for lead in leads if len(fl.members(lead)) == 3)
        q, k, v = fl.members(lead)
        x, other = torch.randn(2, 5, q.in_features), torch.randn(2, 5, q.in_features)
        expected = [type(m).forward(m, x) for m in (q, k, v)]
        with torch.no_grad():
            torch.testing.assert_close(k(x), expected[1])  # before q: nothing cached
            torch.testing.assert_close(q(x), expected[0])
            torch.testing.assert_close(v(other), type(v).forward(v, other))  # another input
            torch.testing.assert_close(v(x), expected[2])
            torch.testing.assert_close(k(x), expected[1])
            assert getattr(lead, fl.INPUT) is None and getattr(lead, fl.OUTS) is None  # all served: none held
            torch.testing.assert_close(k(x), expected[1])  # a second call: PEFT's own


def test_dropout_or_two_adapters_leave_peft_alone(tiny_model):
    from ade_mlflow_plugin.training.model import add_lora, load_base_model

    config = TrainingConfig(base_model=str(tiny_model), lora_dropout=0.1)
    model = add_lora(load_base_model(config, "cpu", torch.float32), config)
    with fused_lora(model) as leads:
        assert leads == []
