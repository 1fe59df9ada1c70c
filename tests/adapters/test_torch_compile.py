"""adapters.torch_compile: nn.Module.compile() still keeps its result where uncompile() resets it."""
from __future__ import annotations

import torch

from ade_mlflow_plugin.adapters import torch_compile


class Scale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((4,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * self.weight) + 1


CHANGED = "torch changed nn.Module.{name}: update ade_mlflow_plugin/adapters/torch_compile.py and docs/internals.md"


def test_compile_sets_the_attribute_and_uncompile_runs_eagerly_again():
    assert torch_compile.can_uncompile(), CHANGED.format(name="_compiled_call_impl (gone)")
    graphs: list[int] = []

    def counting_backend(gm, example_inputs):  # noqa: ANN001, ANN202 - torch.compile's backend contract
        graphs.append(len(example_inputs))
        return gm.forward

    torch.compiler.reset()
    layer = Scale()
    layer.compile(backend=counting_backend)
    assert torch_compile.is_compiled(layer), CHANGED.format(name="compile() (no longer sets _compiled_call_impl)")
    layer(torch.ones(2, 4))
    assert graphs, CHANGED.format(name="compile() (the compiled call is not used)")
    assert torch_compile.uncompile(layer) and not torch_compile.is_compiled(layer)
    compiled = len(graphs)
    out = layer(torch.ones(3, 4))  # a new shape: a compiled layer would trace again
    assert len(graphs) == compiled, CHANGED.format(name="_compiled_call_impl (None no longer means eager)")
    torch.testing.assert_close(out, torch.full((3, 4), 3.0))
    torch.compiler.reset()
