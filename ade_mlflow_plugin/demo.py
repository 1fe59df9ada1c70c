"""`make demo`: the whole flow on this machine, through the real CLIs, with nothing left running.

tiny base model -> `mlflow run -b ade-sagemaker` (local mode) twice (lora_r 8 vs 16) -> both registered
-> the better one promoted to `production` -> synced into ./ade_models -> a summary table.
The tracking store is a sqlite file, so no server is started; the command to open the UI is printed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "ade-coder-demo"
SETTINGS = ({"lora_r": "8", "lora_alpha": "16"}, {"lora_r": "16", "lora_alpha": "32"})
TRAINING = {"num_examples": "160", "synthetic_ratio": "0.3", "max_steps": "30", "batch_size": "4",
            "grad_accumulation": "1", "max_seq_len": "256", "learning_rate": "0.003", "eval_fraction": "0.15"}


def _step(text: str) -> None:
    click.secho(f"\n==> {text}", fg="cyan", bold=True)


def _run(cmd: list[str], env: dict[str, str]) -> None:
    click.echo("$ " + " ".join(cmd))
    subprocess.run(cmd, env=env, cwd=REPO, check=True)


def _train(setting: dict[str, str], base: Path, codebase: Path, env: dict[str, str]) -> None:
    params = {**TRAINING, **setting, "codebase": str(codebase), "base_model": str(base),
              "registered_model_name": MODEL_NAME}
    args = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    _run([sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "-b", "ade-sagemaker",
          "--backend-config", "examples/local.json", "--experiment-name", "ade-demo", *args], env)


def _summary(tracking: str, root: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking)
    production = client.get_model_version_by_alias(MODEL_NAME, "production")
    click.echo(f"\n{'run':<34}{'lora_r':>7}{'eval_loss':>11}{'tokens/s':>10}{'version':>9}  alias")
    for version in sorted(client.search_model_versions(f"name='{MODEL_NAME}'"), key=lambda v: int(v.version)):
        run = client.get_run(version.run_id)
        metrics = run.data.metrics
        alias = "production" if str(version.version) == str(production.version) else ""
        click.echo(f"{run.info.run_id:<34}{run.data.params.get('lora_r', '?'):>7}"
                   f"{metrics.get('eval_loss', float('nan')):>11.4f}{metrics.get('tokens_per_second', 0):>10.0f}"
                   f"{version.version:>9}  {alias}")
    landed = root / "registry" / f"{MODEL_NAME}-v{production.version}"
    click.echo(f"\nproduction model landed in {landed}")
    click.echo(f"open the MLflow UI:  {sys.executable} -m mlflow ui --backend-store-uri {tracking} --port 5000")


def _best_version(tracking: str) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    best = min(versions, key=lambda v: client.get_run(v.run_id).data.metrics.get("eval_loss", float("inf")))
    return str(best.version)


@click.command()
@click.option("--workdir", default=str(REPO / ".ade" / "demo"), show_default=True)
@click.option("--models-root", default=str(REPO / "ade_models"), show_default=True)
def main(workdir: str, models_root: str) -> None:
    """Run the demo flow end to end on this machine."""
    started = time.monotonic()
    work = Path(workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    codebase = REPO / "ade_mlflow_plugin"
    cli = [sys.executable, "-m", "ade_mlflow_plugin.cli"]
    _step("1/5 build a tiny base model (deepseek-coder layout, scaled down) and a tokenizer from the codebase")
    _run([*cli, "make-tiny-model", str(work / "base"), "--codebase", str(codebase)], env)
    for i, setting in enumerate(SETTINGS, start=2):
        _step(f"{i}/5 fine-tune through `mlflow run -b ade-sagemaker` in local mode with {setting}")
        _train(setting, work / "base", codebase, env)
    best = _best_version(tracking)
    _step(f"4/5 promote the better version (v{best}, lowest eval_loss) to production")
    _run([*cli, "promote", MODEL_NAME, best, "--alias", "production", "--root", models_root], env)
    _step(f"5/5 sync it into the ADE provider storage at {models_root} (promote synced it; this verifies)")
    _run([*cli, "sync", f"{MODEL_NAME}@production", "--root", models_root], env)
    _summary(tracking, Path(models_root))
    click.echo(f"demo finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
