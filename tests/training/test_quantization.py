"""quantization=4bit/8bit: bitsandbytes' NF4 path trains on this CPU-only machine; without bitsandbytes
the entry stops with one line naming the option and the fix (exit 2) before touching MLflow."""
from __future__ import annotations

import sys

import pytest
import torch

from ade_mlflow_plugin.training import entry
from ade_mlflow_plugin.config.training import TrainingConfig


def test_4bit_nf4_loads_and_a_qlora_step_trains_on_cpu(tiny_model, tiny_tokenizer):
    pytest.importorskip("bitsandbytes")  # an installed dependency here (setup.cfg [train])
    import bitsandbytes as bnb

    from ade_mlflow_plugin.training.model import load_for_training
    from ade_mlflow_plugin.training.packing import PackedCollator, build_rows

    assert not torch.cuda.is_available()
    config = TrainingConfig.from_params({"base_model": str(tiny_model), "quantization": "4bit", "lora_r": "4"})
    model, tokenizer, device = load_for_training(config)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert device == "cpu" and quantized and quantized[0].weight.quant_type == "nf4"
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    rows, _ = build_rows(tokenizer, [{"prompt": "def add(a, b):\n", "completion": "    return a + b\n"}] * 4, 64)
    batch = PackedCollator(tokenizer.pad_token_id)(rows)
    lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    before = lora_b.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, lora_b.detach())


@pytest.mark.parametrize("option", ["4bit", "8bit"])
def test_missing_bitsandbytes_is_one_line_naming_the_option(monkeypatch, capsys, tmp_path, option):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    code = entry.train(["--dataset", str(tmp_path), "--quantization", option])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"quantization={option} needs bitsandbytes" in err and "quantization=none" in err


def test_bad_argument_is_one_line_exit_2(capsys):
    assert entry.main(["--codebase", "x", "--lora_r", "sixteen"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'lora_r'" in err and len(err.splitlines()) == 1
    assert entry.main(["--no_such_option", "1"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
