"""`make demo`: the whole flow on this machine, through the real CLIs, with nothing left running.

tiny base model -> `mlflow run -b ade-sagemaker` (local mode, lora_r 8) -> v1 registered and promoted to
`production` (synced into ./ade_models) -> a second run (lora_r 16) trains on from
`models:/ade-coder-demo@production` -> v2, whose metadata names v1 as its parent -> the better version (lowest
eval_loss) promoted to `production` -> synced -> a summary.
By default the tracking store is a sqlite file, so no server is started; the command to open the UI is
printed. `--tracking-uri` points the same flow at a tracking server (the end-to-end test does that).
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from ade_mlflow_plugin.errors import AdeError, ConfigError

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO / "examples" / "local.json"
MODEL_NAME = "ade-coder-demo"
EXPERIMENT = "ade-demo"
SETTINGS = ({"lora_r": "8", "lora_alpha": "16"}, {"lora_r": "16", "lora_alpha": "32"})
# Sized for < 5 min on 2 CPU cores. The eval split is kept small on purpose: every eval example is also
# a greedy-generation sample for exact_match (before and after training), the slowest part of a run.
# eval_samples is not declared in the MLproject: the backend passes any TrainingConfig option through.
TRAINING = {"num_examples": "120", "synthetic_ratio": "0.3", "eval_fraction": "0.1", "max_steps": "30",
            "batch_size": "4", "grad_accumulation": "1", "max_seq_len": "256", "learning_rate": "0.003",
            "seed": "42", "eval_samples": "8"}
STEPS = 6
ALIAS = "production"
HEARTBEAT_S = 15.0  # a step silent for this long prints how long it has been running

Echo = Callable[[str], None]


@dataclass
class DemoRow:
    """One trained run of the demo, as the summary table shows it."""

    run_id: str
    run_name: str
    lora_r: str
    eval_loss: float
    tokens_per_second: float
    version: str
    alias: str = ""
    landed: Path | None = None
    parent: str = ""  # the registered version this one trained on from (ade.parent_version), if any


@dataclass
class DemoResult:
    tracking_uri: str
    experiment_id: str
    models_root: Path
    production_version: str
    rows: list[DemoRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def run_ids(self) -> list[str]:
        return [row.run_id for row in self.rows]

    @property
    def landed(self) -> Path:
        return self.models_root / "registry" / f"{MODEL_NAME}-v{self.production_version}"


def _step(echo: Echo, number: int, text: str) -> None:
    echo(click.style(f"\n==> {number}/{STEPS} {text}", fg="cyan", bold=True))


def run_logged(cmd: list[str], env: dict[str, str], echo: Echo, label: str,
               heartbeat_s: float = HEARTBEAT_S) -> None:
    """Run ``cmd`` in the repo, relaying its output line by line; a silent stretch prints a heartbeat.

    Ctrl-C reaches the child too (same process group: `mlflow run` then stops its job); whatever
    happens, the child has ended when this returns.
    """
    echo("$ " + " ".join(cmd))
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
    reader.start()
    try:
        _relay(lines, echo, label, started, heartbeat_s)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: give the child its own Ctrl-C handling, then end it
            try:
                proc.wait(timeout=180)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                proc.wait()
    if code != 0:
        raise AdeError(f"demo step '{label}' failed with exit code {code}; its output is above")


def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:  # split on \n only: a progress bar's \r updates stay one line, its last state
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        lines.put(line.rsplit("\r", 1)[-1])
    lines.put(None)


def _relay(lines: queue.Queue, echo: Echo, label: str, started: float, heartbeat_s: float) -> None:
    last = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() - last >= heartbeat_s:
                echo(click.style(f"    ... {label}: still working, {_clock(time.monotonic() - started)} so far",
                                 dim=True))
                last = time.monotonic()
            continue
        if line is None:
            return
        echo(line)
        last = time.monotonic()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def snapshot_codebase(dest: Path) -> Path:
    """A frozen copy of this repository's package: both runs then mine exactly the same code."""
    shutil.copytree(REPO / "ade_mlflow_plugin", dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    return dest


def backend_config(workdir: Path, job_root: Path | None) -> str:
    """examples/local.json as it is, or a copy of it in workdir with ``job_root`` set."""
    if job_root is None:
        return str(LOCAL_CONFIG.relative_to(REPO))
    config = {**json.loads(LOCAL_CONFIG.read_text()), "job_root": str(job_root)}
    path = workdir / "local.json"
    path.write_text(json.dumps(config))
    return str(path)


def train_command(setting: dict[str, str], base: Path | str, codebase: Path, config: str) -> list[str]:
    params = {**TRAINING, **setting, "codebase": str(codebase), "base_model": str(base),
              "registered_model_name": MODEL_NAME}
    args = [arg for key, value in params.items() for arg in ("-P", f"{key}={value}")]
    return [sys.executable, "-m", "mlflow", "run", ".", "-e", "main", "-b", "ade-sagemaker",
            "--backend-config", config, "--experiment-name", EXPERIMENT, *args]


def _check_dirs(workdir: Path, models_root: Path) -> None:
    for option, path in (("--workdir", workdir), ("--models-root", models_root)):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{option} '{path}' is a file; pass a folder (it is created when missing)")
    if models_root.resolve() == workdir.resolve() or workdir.resolve() in models_root.resolve().parents:
        raise ConfigError(f"--models-root '{models_root}' is inside --workdir '{workdir}', which the demo "
                          "empties first; pass a folder outside it")


def run_demo(workdir: Path, models_root: Path, tracking_uri: str | None = None, job_root: Path | None = None,
             echo: Echo = click.echo) -> DemoResult:
    """The demo flow; returns what the summary table shows. ``workdir`` is emptied first."""
    started = time.monotonic()
    workdir, models_root = Path(workdir).absolute(), Path(models_root).absolute()
    _check_dirs(workdir, models_root)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    tracking = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "ade_mlflow_plugin.cli"]
    codebase = snapshot_codebase(workdir / "codebase")
    config = backend_config(workdir, job_root)
    before = registered_versions(tracking)

    _step(echo, 1, "build a tiny base model (deepseek-coder layout, scaled down) and a tokenizer from the codebase")
    run_logged([*cli, "make-tiny-model", str(workdir / "base"), "--codebase", str(codebase)], env, echo,
               "tiny model")
    first, second = SETTINGS
    _train_step(echo, 2, first, workdir / "base", "the tiny base", codebase, config, env)
    v1 = first_version(tracking, before)
    _step(echo, 3, f"promote v{v1} to {ALIAS} (the registry hook syncs it into {models_root})")
    run_logged(_promote(cli, v1, models_root), env, echo, "promote")
    promoted = f"models:/{MODEL_NAME}@{ALIAS}"
    _train_step(echo, 4, second, promoted, f"{promoted} (v{v1}: the loop back into training)", codebase, config,
                env)
    rows, experiment_id = collect_rows(tracking, before)
    best = min(rows, key=lambda row: (row.eval_loss, int(row.version)))
    _step(echo, 5, f"promote the better version (v{best.version}, lowest eval_loss) to {ALIAS}")
    run_logged(_promote(cli, best.version, models_root), env, echo, "promote")
    _step(echo, 6, f"check the ADE provider storage at {models_root} (sync verifies the copy, downloads nothing new)")
    run_logged([*cli, "sync", f"{MODEL_NAME}@{ALIAS}", "--root", str(models_root)], env, echo, "sync")
    best.alias, best.landed = ALIAS, models_root / "registry" / f"{MODEL_NAME}-v{best.version}"
    return DemoResult(tracking, experiment_id, models_root, best.version, rows, time.monotonic() - started)


def _train_step(echo: Echo, number: int, setting: dict[str, str], base: Path | str, base_label: str,
                codebase: Path, config: str, env: dict[str, str]) -> None:
    knobs = ", ".join(f"{k}={v}" for k, v in setting.items())
    _step(echo, number, f"fine-tune {base_label} through `mlflow run -b ade-sagemaker` in local mode with {knobs}")
    run_logged(train_command(setting, base, codebase, config), env, echo, f"training {knobs}")


def _promote(cli: list[str], version: str, models_root: Path) -> list[str]:
    return [*cli, "promote", MODEL_NAME, version, "--alias", ALIAS, "--root", str(models_root)]


def first_version(tracking: str, before: set[str]) -> str:
    """The version the first run registered (the only one since ``before``)."""
    new = sorted(registered_versions(tracking) - before, key=int)
    if len(new) != 1:
        raise AdeError(f"expected the first run to register one version of {MODEL_NAME}, found {len(new)}; "
                       "see the training output above")
    return new[0]


def registered_versions(tracking: str) -> set[str]:
    """Versions of the demo model already in the registry (a tracking server may have earlier demos)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    return {str(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")}


def collect_rows(tracking: str, before: set[str]) -> tuple[list[DemoRow], str]:
    """The versions this demo registered, with their runs' figures, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    rows, experiment_id = [], ""
    for version in client.search_model_versions(f"name='{MODEL_NAME}'"):
        if str(version.version) in before:
            continue
        run = client.get_run(version.run_id)
        experiment_id = run.info.experiment_id
        speeds = [m.value for m in client.get_metric_history(run.info.run_id, "tokens_per_second")]
        rows.append(DemoRow(run.info.run_id, run.info.run_name or "", run.data.params.get("lora_r", "?"),
                            run.data.metrics.get("eval_loss", float("inf")),
                            sum(speeds) / len(speeds) if speeds else 0.0, str(version.version),
                            parent=(version.tags or {}).get("ade.parent_version", "")))
    if len(rows) != len(SETTINGS):
        raise AdeError(f"expected {len(SETTINGS)} registered versions of {MODEL_NAME}, found {len(rows)}; "
                       "see the training output above")
    return sorted(rows, key=lambda row: int(row.version)), experiment_id


def summary(result: DemoResult) -> str:
    """The table printed at the end, and where to look next."""
    header = (f"{'run':<36}{'lora_r':>7}{'eval_loss':>11}{'tokens/s':>10}{'version':>9}  {'trained on':<12}"
              f"{'alias':<11}synced to")
    lines = [header, "-" * (len(header) + 20)]
    for row in result.rows:
        name = f"{row.run_name} ({row.run_id[:8]})"
        trained_on = f"v{row.parent}" if row.parent else "base"
        lines.append(f"{name:<36}{row.lora_r:>7}{row.eval_loss:>11.4f}{row.tokens_per_second:>10.0f}"
                     f"{row.version:>9}  {trained_on:<12}{row.alias or '-':<11}{row.landed or '-'}")
    runs = json.dumps(result.run_ids, separators=(",", ":"))
    compare = f"#/compare-runs?runs={runs}&experiments=[\"{result.experiment_id}\"]"
    if result.tracking_uri.startswith(("http://", "https://")):
        ui = f"open {result.tracking_uri.rstrip('/')}/{compare}"
    else:
        ui = (f"{sys.executable} -m mlflow ui --backend-store-uri {result.tracking_uri} --port 5000\n"
              f"  then open http://127.0.0.1:5000/{compare}   (Ctrl-C stops the UI)")
    lines += ["", f"production model: {result.landed} (metadata.json, performance_metrics.json, model_artifacts/)",
              f"providers file:   {result.models_root / 'providers.json'}",
              "compare the two runs in the MLflow UI:", f"  {ui}",
              f"demo finished in {_clock(result.seconds)}"]
    return "\n".join(lines)


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=REPO / ".ade" / "demo", show_default=True,
              help="Scratch folder (emptied first): base model, codebase snapshot, sqlite tracking store.")
@click.option("--models-root", type=click.Path(path_type=Path), default=REPO / "ade_models", show_default=True,
              help="ADE provider storage the production model is synced into.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking server to use instead of a sqlite file in the workdir.")
@click.option("--job-root", type=click.Path(path_type=Path), default=None,
              help="Local-mode job root (default: examples/local.json's, ./.ade).")
def demo_command(workdir: Path, models_root: Path, tracking_uri: str | None, job_root: Path | None) -> None:
    """Run the demo flow end to end on this machine."""
    click.echo(summary(run_demo(workdir, models_root, tracking_uri, job_root)))


def main(argv: list[str] | None = None) -> None:
    """`python -m examples.demo`: errors as one line, exit 2 for bad input, 1 for a failure."""
    try:
        demo_command.main(args=argv, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except AdeError as exc:
        click.echo(f"ade-mlflow demo: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
