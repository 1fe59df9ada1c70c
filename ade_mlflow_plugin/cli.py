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

#: verb -> "module:attribute" of a click.Command.
COMMANDS: dict[str, str] = {
    "launch": "ade_mlflow_plugin.launch:launch_command",
    "status": "ade_mlflow_plugin.backend.commands:status_command",
    "logs": "ade_mlflow_plugin.backend.commands:logs_command",
    "cost": "ade_mlflow_plugin.backend.cost_command:cost_command",
    "prepare-data": "ade_mlflow_plugin.dataset.cli:prepare_data_command",
    "make-tiny-model": "ade_mlflow_plugin.training.tiny:make_tiny_model_command",
    "promote": "ade_mlflow_plugin.registry.cli:promote_command",
    "sync": "ade_mlflow_plugin.registry.cli:sync_command",
    "watch": "ade_mlflow_plugin.registry.cli:watch_command",
    "webhook-server": "ade_mlflow_plugin.registry.cli:webhook_server_command",
    "webhook-register": "ade_mlflow_plugin.registry.cli:webhook_register_command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
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


def main(argv: list[str] | None = None) -> Any:
    """Console entry: AdeError -> one line on stderr, exit 2 (bad input) or 1 (failure)."""
    from ade_mlflow_plugin.errors import AdeError

    try:
        return cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except AdeError as exc:
        click.echo(f"ade-mlflow: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
