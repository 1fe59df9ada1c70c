"""adapters.transformers_attn: a loaded model's config still says which attention it runs."""
from __future__ import annotations

from ade_mlflow_plugin.adapters import transformers_attn

CHANGED = "transformers changed {name}: update ade_mlflow_plugin/adapters/transformers_attn.py and docs/internals.md"


def _tiny():  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config)


def test_the_model_config_names_the_attention_it_runs():
    from transformers import PretrainedConfig

    assert hasattr(PretrainedConfig, "_attn_implementation"), CHANGED.format(
        name="PretrainedConfig._attn_implementation (gone)")
    model = _tiny()
    assert transformers_attn.attn_implementation(model.config) == "sdpa"  # transformers' default
    model.set_attn_implementation("eager")  # the public setter; the getter must follow it
    assert transformers_attn.attn_implementation(model.config, "sdpa") == "eager", CHANGED.format(
        name="PretrainedConfig._attn_implementation (no longer follows set_attn_implementation)")


def test_without_the_property_the_request_is_the_answer():
    class Bare:
        pass

    assert transformers_attn.attn_implementation(Bare(), "flex_attention") == "flex_attention"
    assert transformers_attn.attn_implementation(Bare()) is None
