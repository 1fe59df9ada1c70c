"""Issue 18 items 1-2: every run has a curve (adaptive logging, the last step always logged), periodic eval
on a share of the eval split, the best checkpoint by eval_loss kept and loaded, early stopping; eval's
share of the training time is printed."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.training.checkpoints import StopFlag
from ade_mlflow_plugin.training.trainer import plan


class Metrics:
    """A metric sink: (name, step) -> value."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, int], float] = {}

    def log(self, metrics, step):
        for name, value in metrics.items():
            self.values[(name, step)] = float(value)

    def steps(self, name: str) -> list[int]:
        return sorted(step for key, step in self.values if key == name)


def test_intervals_adapt_to_the_run_length_and_given_values_win():
    auto = TrainingConfig()
    assert auto.intervals(6) == (1, 1, 1)  # every step logged, evaluated and saved
    assert auto.intervals(40) == (1, 4, 4)  # ~10 evals, a checkpoint at each
    assert auto.intervals(1000) == (10, 100, 100)  # 100 points per curve
    assert auto.intervals(5000)[0] == 50
    assert TrainingConfig(logging_steps="7", eval_steps="0").intervals(1000) == (7, 0, 100)
    assert TrainingConfig(save_steps="25").intervals(1000) == (10, 25, 25)  # each checkpoint evaluated


def test_eval_rows_are_capped_to_a_small_share_of_the_compute():
    config = TrainingConfig(max_steps=1000, batch_size=4, grad_accumulation=4)
    cadence = plan(config, rows=10**6, eval_rows=5000)
    # 16 rows a step, 1000 steps, 10 evals: 5% x 3 x 16000 / 10 = 240 rows an eval
    assert (cadence.eval_steps, cadence.eval_rows) == (100, 240)
    assert plan(config, rows=10**6, eval_rows=3).eval_rows == 3
    assert plan(TrainingConfig(max_steps=6, batch_size=1), rows=10, eval_rows=100).eval_rows == 2  # at least 2
    assert plan(config, rows=10**6, eval_rows=0).eval_steps == 0 and not plan(config, 10**6, 0).load_best


@pytest.mark.parametrize("params,words", [
    ({"early_stopping_patience": "2", "eval_steps": "0"}, "needs periodic eval and load_best"),
    ({"early_stopping_patience": "2", "load_best": "false"}, "needs periodic eval and load_best"),
    ({"eval_steps": "10", "save_steps": "25"}, "must be a multiple of eval_steps=10"),
    ({"logging_steps": "0"}, "auto or a whole number >= 1"),
])
def test_bad_combinations_are_one_line(params, words):
    with pytest.raises(ConfigError) as caught:
        TrainingConfig.from_params(params)
    assert words in caught.value.message and "\n" not in caught.value.message


def _setup(tiny_model, prepared_dataset, **params):
    from transformers import set_seed

    from ade_mlflow_plugin.dataset import load_prepared
    from ade_mlflow_plugin.training.model import load_for_training
    from ade_mlflow_plugin.training.pipeline import _rows

    config = TrainingConfig.from_params({"base_model": str(tiny_model), "batch_size": "2", "grad_accumulation": "1",
                                         "max_seq_len": "256", "learning_rate": "0.01", "warmup_ratio": "0",
                                         "lora_r": "4", **params})
    set_seed(config.seed)
    model, tokenizer, device = load_for_training(config)
    rows, eval_rows, _ = _rows(config, tokenizer, load_prepared(prepared_dataset))
    return config, model, tokenizer, device, rows, eval_rows


class Spoil:
    """From step `after` on, every step pushes the LoRA weights further off: later evals are worse."""

    def __init__(self, after: int) -> None:
        self.after = after

    def on_step_end(self, args, state, control, model=None, **kwargs):
        import torch

        if state.global_step > self.after:
            with torch.no_grad():
                for name, weight in model.named_parameters():
                    if "lora_" in name:
                        weight.add_(torch.randn_like(weight) * 0.5)
        return control

    def __getattr__(self, name):  # the other TrainerCallback events: nothing to do
        return lambda *args, **kwargs: None


def _train(config, model, tokenizer, device, rows, eval_rows, tmp_path, callbacks=()):
    from ade_mlflow_plugin.training.trainer import train

    metrics = Metrics()
    state, stopped = train(config, model, tokenizer, rows, output_dir=tmp_path, device=device,
                           metric_logger=metrics, stop=StopFlag(), eval_rows=eval_rows, callbacks=callbacks)
    assert not stopped
    return state, metrics


@pytest.mark.slow
def test_a_six_step_run_has_a_curve_ending_at_the_last_step(tiny_model, prepared_dataset, tmp_path):
    config, *loaded = _setup(tiny_model, prepared_dataset, max_steps="6")
    state, metrics = _train(config, *loaded, tmp_path)
    assert metrics.steps("train_loss") == [1, 2, 3, 4, 5, 6]
    assert {"learning_rate", "tokens_per_second"} <= {name for name, _ in metrics.values}
    long = TrainingConfig.from_params({"base_model": str(tiny_model), "max_steps": "7", "logging_steps": "3"})
    config, *loaded = _setup(tiny_model, prepared_dataset, max_steps="7", logging_steps="3", eval_steps="0")
    _, metrics = _train(config, *loaded, tmp_path / "given")
    assert metrics.steps("train_loss") == [3, 6, 7] and long.logging_steps == "3"  # given wins; last logged


@pytest.mark.slow
def test_forty_steps_evaluate_periodically_and_end_as_the_best_checkpoint(tiny_model, prepared_dataset, tmp_path,
                                                                          capsys):
    from safetensors.torch import load_file

    config, model, *rest = _setup(tiny_model, prepared_dataset, max_steps="40", keep_checkpoints="2")
    state, metrics = _train(config, model, *rest, tmp_path, callbacks=[Spoil(after=16)])
    evals = {e["step"]: e["eval_loss"] for e in state.log_history if "eval_loss" in e}
    assert list(evals) == [4, 8, 12, 16, 20, 24, 28, 32, 36, 40]
    # logged but the last: the pipeline logs the published model's eval_loss on the whole split there
    assert metrics.steps("eval_loss") == list(evals)[:-1]
    assert all(("perplexity", step) in metrics.values for step in list(evals)[:-1])
    best = min(evals, key=evals.get)
    assert best <= 16 and state.best_model_checkpoint.endswith(f"checkpoint-{best}")
    assert evals[40] > evals[best]
    saved = load_file(str(tmp_path / f"checkpoint-{best}" / "adapter_model.safetensors"))
    weights = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(weights)
    for name, tensor in saved.items():
        live = next(p for n, p in weights.items() if n.replace(".default", "") == name)
        assert (live.detach().cpu() == tensor).all(), name  # the model is the best step's
    print(capsys.readouterr().out[-2000:])


@pytest.mark.slow
def test_early_stopping_stops_a_run_whose_eval_stops_improving(tiny_model, prepared_dataset, tmp_path):
    config, *loaded = _setup(tiny_model, prepared_dataset, max_steps="40", early_stopping_patience="2")
    state, metrics = _train(config, *loaded, tmp_path, callbacks=[Spoil(after=8)])
    assert state.global_step < 40
    assert max(e["step"] for e in state.log_history if "eval_loss" in e) == state.global_step


@pytest.mark.slow
def test_eval_share_of_the_demo_run(tiny_model, tmp_path, caplog):
    """The demo's training settings (examples/demo.py TRAINING) on the tiny model: periodic eval's share of
    the training time, printed; the cap on eval rows keeps it small."""
    import logging

    from ade_mlflow_plugin.dataset import build_dataset
    from tests.training.conftest import CODEBASE
    from transformers import AutoTokenizer

    out = tmp_path / "demo-data"
    build_dataset(CODEBASE, out, num_examples=120, synthetic_ratio=0.3, eval_fraction=0.1, seed=42,
                  tokenizer=AutoTokenizer.from_pretrained(tiny_model), max_tokens=256, log_to_mlflow=False,
                  progress=False)
    config, *loaded = _setup(tiny_model, out, max_steps="30", batch_size="4", learning_rate="0.003")
    with caplog.at_level(logging.INFO, logger="ade_mlflow_plugin.training.trainer"):
        _train(config, *loaded, tmp_path / "ckpt")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("periodic eval:"))
    plan_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("plan:"))
    print(f"\n{plan_line}\n{line}")
    share = float(line.split("s, ")[1].split("%")[0]) / 100
    assert 0 < share < 1  # measured and printed; the share itself depends on the machine's load


@pytest.mark.slow
def test_the_published_and_registered_model_is_the_best_checkpoint(tiny_model, prepared_dataset, tracking_uri,
                                                                    tmp_path):
    """The train entry end to end: the run names the chosen step (ade.best_step, the lowest periodic
    eval_loss), the model in SM_MODEL_DIR (what the run logs and registers) is that checkpoint's adapter."""
    import json

    import torch
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    from tests.training.conftest import FAST_ARGS, Entry, entry_env, new_run

    run_id = new_run(tracking_uri, "load-best")
    name = f"best-{run_id[:8]}"
    entry = Entry("train.py", ["--dataset", str(prepared_dataset), "--base_model", str(tiny_model), "--max_steps",
                               "12", "--registered_model_name", name, *FAST_ARGS],
                  entry_env(tracking_uri, run_id, tmp_path / "ckpt", tmp_path / "model"))
    assert entry.wait(timeout=300) == 0, entry.output[-3000:]
    client = MlflowClient(tracking_uri)
    best = int(client.get_run(run_id).data.tags["ade.best_step"])
    last = max((tmp_path / "ckpt").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    evals = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    assert len(evals) >= 3 and best == min(evals, key=evals.get)
    assert f"load_best: the model is step {best}'s" in entry.output
    published = load_file(str(tmp_path / "model" / "adapter_model.safetensors"))
    chosen = load_file(str(tmp_path / "ckpt" / f"checkpoint-{best}" / "adapter_model.safetensors"))
    assert published.keys() == chosen.keys()
    assert all(torch.equal(published[k].float(), chosen[k].float()) for k in chosen)
    assert client.get_model_version(name, "1").run_id == run_id
