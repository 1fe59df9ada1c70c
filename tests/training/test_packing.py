"""Tokenising, loss masking and packing; a packed example's logits equal the example run alone."""
from __future__ import annotations

import math
import random

import pytest
import torch

from ade_mlflow_plugin.training.packing import (IGNORE, Encoded, PackedCollator, best_fit_decreasing, build_rows,
                                                encode, pack)

EXAMPLES = [
    {"prompt": "def add(a, b):\n", "completion": "    return a + b\n"},
    {"prompt": "### Instruction:\nWrite a loop\n### Response:\n", "completion": "for i in range(3):\n    print(i)\n"},
    {"prompt": "int main() {", "completion": " return 0; }"},
    {"prompt": "func Hello() string {", "completion": "\n\treturn \"hi\"\n}"},
]


def test_loss_only_on_completion_tokens_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = encode(tok, EXAMPLES[0]["prompt"], EXAMPLES[0]["completion"], 256)
    prompt_len = len(tok(EXAMPLES[0]["prompt"])["input_ids"])
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id
    assert enc.labels[:prompt_len] == [IGNORE] * prompt_len
    assert enc.labels[prompt_len:] == enc.input_ids[prompt_len:]
    assert tok.decode(enc.input_ids[prompt_len:], skip_special_tokens=True) == EXAMPLES[0]["completion"]


def test_chat_templated_prompt_gets_one_bos(tiny_tokenizer):
    prompt = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                add_generation_prompt=True)
    enc = encode(tiny_tokenizer, prompt, "ok", 256)
    assert enc.input_ids.count(tiny_tokenizer.bos_token_id) == 1


def test_too_long_prompt_dropped_and_long_completion_truncated(tiny_tokenizer):
    assert encode(tiny_tokenizer, "x = 1\n" * 100, "y", 16) is None
    enc = encode(tiny_tokenizer, "a", "b = 2\n" * 100, 16)
    assert len(enc.input_ids) == 16 and enc.truncated


def test_packing_restarts_positions_and_respects_max_len(tiny_tokenizer):
    rows, stats = build_rows(tiny_tokenizer, EXAMPLES * 5, 64, packing=True)
    assert stats.examples == 20 and stats.rows < 20 and 0 < stats.fill <= 1
    for row in rows:
        assert len(row["input_ids"]) <= 64
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["input_ids"][i] == tiny_tokenizer.bos_token_id for i in starts)
        assert all(row["labels"][i] == IGNORE for i in starts)
    unpacked, _ = build_rows(tiny_tokenizer, EXAMPLES * 5, 64, packing=False)
    assert len(unpacked) == 20
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(r["input_ids"]) for r in unpacked)


def _segments(row):
    """The examples of a packed row, cut where position ids restart."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    return [row["input_ids"][a:b] for a, b in zip(starts, starts[1:])]


def test_best_fit_decreasing_packs_every_example_once_and_fills_rows():
    rng = random.Random(3)
    lengths = [rng.randint(200, 2048) for _ in range(1000)]  # the benchmark's spread
    rows = best_fit_decreasing(lengths, 2048)
    assert sorted(i for row in rows for i in row) == list(range(1000))
    assert all(sum(lengths[i] for i in row) <= 2048 for row in rows)
    fill = sum(lengths) / (len(rows) * 2048)
    assert fill > 0.95, fill  # in-order packing of the same lengths fills ~0.75
    assert len(rows) <= math.ceil(sum(lengths) / 2048) * 1.05  # within 5% of the bound no packing can beat
    assert best_fit_decreasing(lengths, 2048) == rows  # deterministic


def test_pack_keeps_every_token_and_label_in_its_example():
    encoded = [Encoded(list(range(100 * k, 100 * k + n)), [IGNORE] + list(range(100 * k + 1, 100 * k + n)))
               for k, n in enumerate([30, 5, 64, 12, 40, 33, 1, 64])]
    rows = pack(encoded, 64)
    got = sorted(tuple(seg) for row in rows for seg in _segments(row))
    assert got == sorted(tuple(e.input_ids) for e in encoded)
    assert len(rows) == 4 and all(len(r["input_ids"]) <= 64 for r in rows)  # 249 tokens: 4 rows is optimal
    for row in rows:
        assert [t for t in row["labels"] if t != IGNORE] == [t for t in row["input_ids"] if t % 100 != 0]
    assert [r["input_ids"] for r in pack(encoded, 64, packing=False)] == [e.input_ids for e in encoded]


def _alone_and_packed(model, tok, use_cache):
    [row] = pack([encode(tok, e["prompt"], e["completion"], 256) for e in EXAMPLES], 256)
    encoded = [Encoded(ids, []) for ids in _segments(row)]  # in the row's order
    short = {"input_ids": row["input_ids"][:10], "labels": row["labels"][:10], "position_ids": list(range(10))}
    batch = PackedCollator(tok.pad_token_id)([row, short])  # the short row gets a padding segment
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=use_cache).logits
        offset, pairs = 0, []
        for enc in encoded:
            alone = model(input_ids=torch.tensor([enc.input_ids]), use_cache=False).logits[0]
            pairs.append((alone, packed[0, offset:offset + len(enc.input_ids)]))
            offset += len(enc.input_ids)
        short_alone = model(input_ids=torch.tensor([short["input_ids"]]), use_cache=False).logits[0]
    return pairs, (short_alone, packed[1, :10])


@pytest.fixture(scope="module")
def model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def test_packed_example_logits_equal_the_example_alone(model, tiny_tokenizer):
    pairs, (short_alone, short_padded) = _alone_and_packed(model, tiny_tokenizer, use_cache=False)
    for alone, packed in pairs:
        torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(short_padded, short_alone, atol=1e-4, rtol=1e-4)


def test_with_cache_on_packed_examples_attend_to_each_other(model, tiny_tokenizer):
    # The control: why training sets use_cache=False. If this ever passes equal, the check above proves nothing.
    pairs, _ = _alone_and_packed(model, tiny_tokenizer, use_cache=True)
    assert not torch.allclose(pairs[1][1], pairs[1][0], atol=1e-4)
