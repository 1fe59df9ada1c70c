"""Held-out metrics (training/evaluation.py): batched greedy generation gives each prompt the completion it
gets alone, in the examples' own order."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.training import evaluation


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


EXAMPLES = [
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {"prompt": "# A longer prompt, so that the batch has to pad the others on the left\nclass Stack:\n"
               "    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
     "completion": "        self.items.append(item)\n"},
    {"prompt": "x =", "completion": " 1"},
    {"prompt": "fn main() {\n", "completion": "    println!(\"hello\");\n}\n"},
    {"prompt": "import os\n\ndef home():\n    return", "completion": " os.environ['HOME']\n"},
]


def test_batched_completions_equal_one_at_a_time_in_order(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    alone = evaluation.completions(model, tokenizer, EXAMPLES, max_new_tokens=12, batch_size=1)
    together = evaluation.completions(model, tokenizer, EXAMPLES, max_new_tokens=12, batch_size=4)
    assert together == alone
    assert len({len(t) for t in alone}) > 1  # the limits differ per example: each row cut to its own


def test_generation_leaves_the_model_as_it_found_it(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    assert evaluation.exact_match(model, tokenizer, [], 8) is None
    model.train()
    model.config.use_cache = False
    score = evaluation.exact_match(model, tokenizer, EXAMPLES, 8)
    assert 0.0 <= score <= 1.0
    assert model.training and model.config.use_cache is False  # training goes on as it was


def test_generation_runs_under_sdpa_and_gives_the_attention_back(tiny_model) -> None:
    """Flex attention (training's) is compiled per shape: generation switches a LoRA model to sdpa for its
    decode steps, with the same completions, and back to the model's own attention after."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ade_mlflow_plugin.adapters.transformers_attn import attn_implementation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager"),
                           LoraConfig(r=4, target_modules="all-linear"))
    seen = []
    hook = model.get_base_model().register_forward_pre_hook(
        lambda module, args: seen.append(attn_implementation(module.config)))
    own = evaluation.completions(model, tokenizer, EXAMPLES, max_new_tokens=6, attention=None)
    assert set(seen) == {"eager"}
    seen.clear()
    switched = evaluation.completions(model, tokenizer, EXAMPLES, max_new_tokens=6)
    hook.remove()
    assert set(seen) == {evaluation.EVAL_ATTENTION} and switched == own
    assert attn_implementation(model.get_base_model().config) == "eager"


def test_packed_eval_rows_score_as_one_example_per_row_under_the_eval_attention(tiny_model) -> None:
    """eval_loss under sdpa on packed rows: transformers must mask each example from the others by the position
    ids, or the before/after eval_loss would silently mix examples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ade_mlflow_plugin.training.packing import build_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=evaluation.EVAL_ATTENTION)
    examples = [{"prompt": f"def f{i}(x):\n" * (i % 4 + 1), "completion": f"    return x + {i}\n" * (i + 1)}
                for i in range(10)]
    packed, stats = build_rows(tokenizer, examples, 256, True)
    alone, _ = build_rows(tokenizer, examples, 256, False)
    assert len(packed) < len(alone) == stats.examples  # several examples share a row
    assert evaluation.eval_loss(model, packed, tokenizer.pad_token_id) == \
        pytest.approx(evaluation.eval_loss(model, alone, tokenizer.pad_token_id), rel=1e-5)


def test_an_attention_the_model_cannot_run_leaves_it_on_its_own(tiny_lm, caplog) -> None:
    """flash_attention_2 is not installed here: the eval runs under the model's attention, with a log line."""
    import logging

    from ade_mlflow_plugin.adapters.transformers_attn import attn_implementation

    model, _ = tiny_lm
    own = attn_implementation(model.config)
    with caplog.at_level(logging.INFO, logger=evaluation.__name__):
        with evaluation.attention_as(model, "flash_attention_2"):
            assert attn_implementation(model.config) == own
    assert attn_implementation(model.config) == own
    assert "flash_attention_2 unavailable" in caplog.text


def test_eval_loss_without_whole_logits_equals_the_models_own_loss(tiny_model) -> None:
    """eval_loss runs the LM head in chunks over the target tokens (no batch x seq x vocab logits): the same
    figure as cross-entropy over the model's logits; a head it cannot take falls back to those logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ade_mlflow_plugin.training.packing import build_rows

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    rows, _ = build_rows(tokenizer, EXAMPLES * 3, 128, True)
    collate = evaluation.PackedCollator(tokenizer.pad_token_id)
    batch = collate(rows)
    expected = evaluation._logits_loss_sum(model, batch) / int((batch["labels"][:, 1:] != evaluation.IGNORE).sum())
    assert evaluation._plain_head(model) is not None
    assert evaluation.eval_loss(model, rows, tokenizer.pad_token_id, batch_size=2) == pytest.approx(expected, rel=1e-5)
    model.config.final_logit_softcapping = 30.0  # a head the chunked loss cannot take (Llama ignores the value)
    assert evaluation._plain_head(model) is None
    assert evaluation.eval_loss(model, rows, tokenizer.pad_token_id) == pytest.approx(expected, rel=1e-5)


def test_generation_chunks_shrink_to_what_the_free_memory_holds() -> None:
    # prompts sorted short to long; a chunk's rows are padded to its longest prompt and run to its largest limit
    order, prompt_lens, limits = [0, 1, 2, 3, 4, 5], [10, 20, 30, 400, 500, 600], [5, 5, 5, 5, 5, 100]
    asked = []

    def fits(tokens: int) -> int:  # the memory holds 1100 tokens of rows at a time
        asked.append(tokens)
        return 1100 // tokens

    chunks = list(evaluation.generate_chunks(order, prompt_lens, limits, 4, fits))

    assert chunks == [[0, 1, 2], [3, 4], [5]]  # every index once, in order, as many as fit (4 at most)
    assert asked == [405, 35, 700, 505]  # 4 rows of 400 + 5 tokens do not fit, 3 of 30 + 5 do; then 3 of 600 +
    # 100 do not, 2 of 500 + 5 do
    assert list(evaluation.generate_chunks(order, prompt_lens, limits, 4)) == [[0, 1, 2, 3], [4, 5]]  # no GPU
    assert list(evaluation.generate_chunks([0, 1], [5000, 6000], [5, 5], 4, lambda tokens: 0)) == [[0], [1]]
