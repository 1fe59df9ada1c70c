"""`ade-mlflow` command group.

Each verb lives in the module that owns its concern and is imported only when invoked, so
`ade-mlflow --help` stays fast and the backend/CLI never import torch.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from ade_mlflow_plugin import __version__

#: verb -> ("module:attribute" of a click.Command, one-line help shown by `ade-mlflow --help`).
COMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("ade_mlflow_plugin.launch:launch_command", "Fine-tune a model on a codebase (project `main`)."),
    "status": ("ade_mlflow_plugin.backend.commands:status_command", "Show a job's status by RUN_ID or JOB."),
    "logs": ("ade_mlflow_plugin.backend.commands:logs_command", "Print or follow a job's logs by RUN_ID or JOB."),
    "cost": ("ade_mlflow_plugin.backend.cost_command:cost_command", "Cost of a job, a run or an experiment."),
    "sync-run": ("ade_mlflow_plugin.backend.sync_run:sync_run_command",
                 "Replay a job's relay into its MLflow run by RUN_ID or JOB."),
    "reconcile": ("ade_mlflow_plugin.backend.commands:reconcile_command",
                  "End unfinished runs whose jobs ended unfollowed."),
    "prepare-data": ("ade_mlflow_plugin.dataset.cli:prepare_data_command",
                     "Mine a codebase into a train/eval dataset."),
    "make-tiny-model": ("ade_mlflow_plugin.training.tiny:make_tiny_model_command",
                        "Build a tiny deepseek-coder-shaped model for tests and the demo."),
    "promote": ("ade_mlflow_plugin.registry.cli:promote_command",
                "Promote a model version to an alias or stage, then sync it."),
    "sync": ("ade_mlflow_plugin.registry.cli:sync_command", "Copy a model version into ADE provider storage."),
    "watch": ("ade_mlflow_plugin.registry.cli:watch_command", "Poll the registry and sync alias/stage changes."),
    "webhook-server": ("ade_mlflow_plugin.registry.cli:webhook_server_command",
                       "Receive MLflow registry webhooks and sync."),
    "webhook-register": ("ade_mlflow_plugin.registry.cli:webhook_register_command",
                         "Create the MLflow webhook that calls the receiver."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (help needs no import)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[cmd_name][0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("ade_mlflow_plugin"):
                return _unavailable(cmd_name)
            raise
        return getattr(module, attr)


def _unavailable(name: str) -> click.Command:
    @click.command(name, help="(not available in this installation)")
    def _cmd() -> None:
        raise click.UsageError(f"'{name}' is not available in this version of ade-mlflow-plugin")

    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ade-mlflow")
def cli() -> None:
    """Fine-tune a code LLM on your codebase on SageMaker, tracked in MLflow."""


def main(argv: list[str] | None = None, *, command: click.Command | None = None,
         prog_name: str | None = None) -> Any:
    """Console entry: AdeError -> one line on stderr, exit 2 (bad input) or 1 (failure). ``command``
    runs one verb as a program of its own (`python -m ade_mlflow_plugin.launch`)."""
    try:
        return (command or cli).main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if not _is_ade_error(exc):
            raise
        click.echo(f"ade-mlflow: error: {exc.message}", err=True)  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]


def _is_ade_error(exc: BaseException) -> bool:
    # AdeError subclasses MlflowException (mlflow run and Python API callers catch that), so importing
    # errors.py imports mlflow (~1.3 s). Only a verb that imported errors.py can raise an AdeError,
    # so looking the module up in sys.modules keeps `--help` and usage errors free of mlflow.
    errors = sys.modules.get("ade_mlflow_plugin.errors")
    return errors is not None and isinstance(exc, errors.AdeError)


if __name__ == "__main__":  # pragma: no cover
    main()
