"""`ade-mlflow make-tiny-model`: deepseek-coder layout scaled down, tokenizer trained on the codebase."""
from __future__ import annotations

import json

import pytest

from ade_mlflow_plugin.cli import main
from ade_mlflow_plugin.training.tiny import FIM, corpus
from tests.training.conftest import CODEBASE


def test_tiny_model_loads_through_from_pretrained(tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.rope_parameters["rope_type"] == "linear" and not config.tie_word_embeddings
    assert config.vocab_size == len(tiny_tokenizer)
    code = "func (s *Server) Start() error {\n\treturn nil\n}\n"
    assert tiny_tokenizer.decode(tiny_tokenizer(code, add_special_tokens=False)["input_ids"]) == code
    assert all(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) == 1 for t in FIM)
    # byte-level BPE trained on the codebase: its frequent words are single tokens
    assert len(tiny_tokenizer("return", add_special_tokens=False)["input_ids"]) == 1
    assert tiny_tokenizer.chat_template and json.loads((tiny_model / "ade_tiny.json").read_text())["parameters"] > 0


def test_secret_lines_stay_out_of_the_tokenizer_corpus(tmp_path):
    (tmp_path / "app.py").write_text('def f():\n    return 1\n\nAWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n')
    text = "".join(corpus(tmp_path))
    assert "def f()" in text and "AKIAIOSFODNN7EXAMPLE" not in text


@pytest.mark.parametrize("setup, message", [
    ("file", "is not a directory"),
    ("nonempty", "not an empty folder"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, message):
    out = tmp_path / "out"
    codebase = CODEBASE
    if setup == "file":
        codebase = tmp_path / "x.py"
        codebase.write_text("x = 1\n")
    else:
        out.mkdir()
        (out / "keep").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["make-tiny-model", str(out), "--codebase", str(codebase)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
