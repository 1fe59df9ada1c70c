"""build_dataset on the polyglot fixture: ratio, cap, split, determinism, prompts, round trip."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from ade_mlflow_plugin.dataset import build_dataset, load_prepared
from ade_mlflow_plugin.dataset.select import plan, synthetic_count
from tests.dataset.conftest import DEEPSEEK_FIM, LANGUAGES, SKIPPED_MARKERS, all_text


def _build(codebase, out=None, **kw):
    kw.setdefault("num_examples", 40)
    kw.setdefault("synthetic_ratio", 0.3)
    return build_dataset(codebase, out, log_to_mlflow=False, progress=False, **kw)


def _rows(prepared):
    return [row for split in ("train", "eval") for row in prepared.dataset[split]]


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.3, 0.5, 0.77, 1.0])
def test_synthetic_ratio_is_exact(codebase, ratio):
    prepared = _build(codebase, num_examples=37, synthetic_ratio=ratio)
    sources = Counter(r["source"] for r in _rows(prepared))
    total = sum(sources.values())
    assert abs(sources["synthetic"] - ratio * total) <= 0.5
    assert sources["synthetic"] == synthetic_count(total, ratio)
    assert prepared.stats["examples"]["synthetic"] == sources["synthetic"]
    assert set(sources) <= {"mined", "synthetic"}


def test_num_examples_caps_the_total_and_shortfall_is_reported(codebase):
    capped = _build(codebase, num_examples=10)
    assert len(_rows(capped)) == 10
    assert capped.stats["examples"]["shortfall"] is None
    everything = _build(codebase, num_examples=100_000, synthetic_ratio=0.3)
    total = len(_rows(everything))
    assert 10 < total < 100_000
    assert f"yields {total} usable examples" in everything.stats["examples"]["shortfall"]
    available = everything.stats["examples"]["available"]
    # the largest total the pools allow at this ratio, after the length filter
    assert total == plan(100_000, available["mined"], available["synthetic"], 0.3) or \
        everything.stats["drops"].get("too_long", 0) + everything.stats["drops"].get("empty", 0) > 0


def test_plan_takes_the_largest_total_that_fits():
    assert plan(100, 1000, 1000, 0.3) == 100
    assert plan(100, 1000, 10, 0.3) == 34  # round(34 * 0.3) = 10 synthetic
    assert plan(100, 5, 1000, 0.5) == 11  # 6 synthetic, 5 mined
    assert plan(100, 0, 1000, 0.0) == 0
    assert plan(100, 0, 7, 1.0) == 7


def test_split_is_disjoint_by_file_and_near_the_fraction(codebase):
    prepared = _build(codebase, num_examples=60, eval_fraction=0.25)
    train_paths = set(prepared.dataset["train"]["path"])
    eval_paths = set(prepared.dataset["eval"]["path"])
    assert train_paths and eval_paths
    assert not train_paths & eval_paths
    n_eval, n_all = len(prepared.dataset["eval"]), len(_rows(prepared))
    assert 0 < n_eval < n_all / 2


def test_zero_eval_fraction_puts_everything_in_train(codebase):
    prepared = _build(codebase, num_examples=20, eval_fraction=0.0)
    assert len(prepared.dataset["eval"]) == 0 and len(prepared.dataset["train"]) == 20


def test_same_seed_same_digest_other_seed_other_digest(codebase):
    first = _build(codebase, num_examples=30, seed=7)
    again = _build(codebase, num_examples=30, seed=7)
    other = _build(codebase, num_examples=30, seed=8)
    assert first.digest == again.digest
    assert _rows(first) == _rows(again)
    assert other.digest != first.digest


def test_columns_and_every_language(codebase):
    prepared = _build(codebase, num_examples=100_000, synthetic_ratio=0.5)
    for split in ("train", "eval"):
        assert set(prepared.dataset[split].column_names) >= {"prompt", "completion", "source", "task", "path",
                                                              "language"}
    assert set(prepared.stats["units"]["by_language"]) == LANGUAGES
    assert all(n > 0 for n in prepared.stats["units"]["by_language"].values())
    languages = {r["language"] for r in _rows(prepared)}
    assert languages == LANGUAGES
    tasks = {r["task"] for r in _rows(prepared)}
    assert tasks == {"body_from_signature", "next_chunk", "fim_psm", "fim_spm", "docstring_from_code",
                     "code_from_docstring"}


def test_skipped_files_never_reach_examples(codebase):
    prepared = _build(codebase, num_examples=100_000, synthetic_ratio=0.5)
    text = all_text(prepared)
    for marker in SKIPPED_MARKERS:
        assert marker not in text, marker
    assert "LICENCE_HEADER_MARKER" not in text and "Licensed under the Apache" not in text
    drops = prepared.stats["drops"]
    assert drops["ignored"] == 3  # ignored_module.py, build/, nested local_only.py
    assert drops["vendored"] == 2 and drops["generated"] == 2 and drops["minified"] == 2
    assert drops["binary"] == 1 and drops["licence_header"] == 1
    assert "licensed_function" in text  # the file itself is still mined


def test_plain_prompts_without_tokenizer(codebase):
    prepared = _build(codebase, num_examples=100_000, synthetic_ratio=0.5)
    rows = _rows(prepared)
    body = next(r for r in rows if r["task"] == "body_from_signature" and r["path"] == "src/app/stats.py"
                and "def median" in r["prompt"])
    assert body["prompt"].startswith("def median(values):")
    assert body["completion"].startswith("    ordered = sorted(values)\n")
    fim = next(r for r in rows if r["task"] == "fim_psm")
    assert fim["prompt"].startswith("<fim_prefix>") and "<fim_suffix>" in fim["prompt"]
    assert fim["prompt"].endswith("<fim_middle>")
    spm = next(r for r in rows if r["task"] == "fim_spm")
    assert spm["prompt"].startswith("<fim_prefix><fim_suffix>")


def test_chat_template_and_deepseek_fim_tokens(codebase, chat_tokenizer):
    prepared = _build(codebase, num_examples=100_000, synthetic_ratio=0.5, tokenizer=chat_tokenizer)
    rows = _rows(prepared)
    begin, hole, end = DEEPSEEK_FIM
    for row in rows:
        if row["task"].startswith("fim_"):
            assert row["prompt"].startswith(begin) and hole in row["prompt"] and end in row["prompt"]
            assert "<fim_prefix>" not in row["prompt"]
        else:
            assert row["prompt"].startswith("<|user|>\n") and row["prompt"].endswith("<|assistant|>\n")
    psm = next(r for r in rows if r["task"] == "fim_psm")
    prefix_part, rest = psm["prompt"][len(begin):].split(hole)
    assert rest.endswith(end)
    assert prepared.stats["token_count"] == "tokenizer"
    tokens = prepared.stats["splits"]["train"]["tokens"]
    ids = chat_tokenizer(list(prepared.dataset["train"]["prompt"]), add_special_tokens=False)["input_ids"]
    assert tokens["prompt"] == sum(len(x) for x in ids)


def test_max_tokens_drops_long_examples(codebase, plain_tokenizer):
    prepared = _build(codebase, num_examples=100_000, synthetic_ratio=0.3, tokenizer=plain_tokenizer,
                      max_tokens=120)
    assert prepared.stats["drops"]["too_long"] > 0
    for row in _rows(prepared):
        n = len(plain_tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"])
        assert n <= 120 + 2  # a merge across the prompt/completion seam can differ by a token


def test_save_and_load_round_trip(codebase, tmp_path):
    out = tmp_path / "prepared"
    prepared = _build(codebase, out, num_examples=25)
    assert prepared.path == out
    stats = json.loads((out / "stats.json").read_text())
    assert stats["digest"] == prepared.digest
    assert set(stats["drops"]) >= {"ignored", "unit_secret", "duplicate_exact"}
    loaded = load_prepared(out)
    assert loaded.digest == prepared.digest
    assert loaded.dataset["train"].to_list() == prepared.dataset["train"].to_list()
    again = _build(codebase, out, num_examples=25)  # overwriting a prepared dataset is allowed
    assert again.digest == prepared.digest


def test_token_totals_exact_when_small_scaled_from_a_sample_when_large(codebase, plain_tokenizer, monkeypatch):
    from ade_mlflow_plugin.dataset import select

    prepared = _build(codebase, num_examples=30, tokenizer=plain_tokenizer)
    train = prepared.stats["splits"]["train"]["tokens"]
    rows = prepared.dataset["train"]
    exact = sum(len(x) for x in plain_tokenizer(list(rows["completion"]), add_special_tokens=False)["input_ids"])
    assert train["exact"] and train["completion"] == exact
    monkeypatch.setattr(select, "TOKEN_SAMPLE", 10)
    sampled = \
        _build(codebase, num_examples=30, tokenizer=plain_tokenizer).stats["splits"]["train"]["tokens"]
    assert not sampled["exact"] and sampled["counted_examples"] == 10
    assert 0.6 * exact < sampled["completion"] < 1.6 * exact


def test_chat_frame_equals_rendering_and_falls_back_for_transforming_templates(chat_tokenizer):
    import copy

    from ade_mlflow_plugin.dataset.prompts import Formatter

    fmt = Formatter(chat_tokenizer)
    assert fmt._frame is not None
    text = "Continue:\n```python\n  x = {'a': 1}\n```\n"
    assert fmt.instruct(text, "plain") == chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    trimming = copy.deepcopy(chat_tokenizer)
    trimming.chat_template = "{% for m in messages %}[{{ m['content'] | trim }}]{% endfor %}>"
    fmt = Formatter(trimming)
    assert fmt._frame is None and fmt.instruct("  padded  ", "plain") == "[padded]>"


def test_integral_floats_accepted_like_mlflow_params(codebase):
    as_ints = _build(codebase, num_examples=12, seed=3)
    as_floats = _build(codebase, num_examples=12.0, seed=3.0, max_tokens=2048.0)
    assert as_floats.digest == as_ints.digest and as_floats.stats["params"]["num_examples"] == 12


@pytest.mark.parametrize("kwargs, message", [
    ({"num_examples": 12.5}, "parameter 'num_examples': got 12.5, expected an integer >= 1"),
    ({"num_examples": True}, "parameter 'num_examples': got True, expected an integer >= 1"),
    ({"seed": "x"}, "parameter 'seed': got 'x', expected an integer between 0 and 4294967295"),
    ({"synthetic_ratio": float("nan")}, "parameter 'synthetic_ratio': got nan, expected a finite number"),
    ({"eval_fraction": -0.5}, "parameter 'eval_fraction': got -0.5, expected a number in [0.0, 1.0)"),
    ({"max_tokens": 8}, "parameter 'max_tokens': got 8, expected an integer >= 16"),
])
def test_bad_arguments_raise_config_error(codebase, kwargs, message):
    from ade_mlflow_plugin.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _build(codebase, **kwargs)
    assert message in info.value.message and "\n" not in info.value.message


def test_single_file_codebase_says_eval_is_empty(tmp_path):
    (tmp_path / "one.py").write_text("def f(a, b):\n    '''Add two numbers together.'''\n    c = a + b\n"
                                     "    d = c * 2\n    return d - c\n")
    prepared = _build(tmp_path, num_examples=10, synthetic_ratio=0.5)
    assert len(prepared.dataset["eval"]) == 0 and "single file" in prepared.stats["examples"]["eval_note"]


def test_parallel_mining_gives_the_same_dataset(codebase):
    one = _build(codebase, num_examples=40, workers=1)
    two = _build(codebase, num_examples=40, workers=2)
    assert two.digest == one.digest
    assert two.stats["drops"] == one.stats["drops"]


def test_token_counter_fast_path_matches_the_tokenizer_call(chat_tokenizer, codebase):
    from ade_mlflow_plugin.dataset.select import TokenCounter

    texts = [(codebase / "src" / "app" / n).read_text() for n in ("stats.py", "inventory.py")] + ["", "<｜fim▁begin｜>x"]
    expected = [len(ids) for ids in chat_tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert TokenCounter(chat_tokenizer)(texts) == expected
