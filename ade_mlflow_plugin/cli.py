"""`ade-mlflow` command group.

Each verb lives in the module that owns its concern and is imported only when invoked, so
`ade-mlflow --help` stays fast and the backend/CLI never import torch.
"""
from __future__ import annotations

import copy
import functools
import importlib
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Callable

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
    "sync-checkpoints": ("ade_mlflow_plugin.backend.checkpoint_sync:sync_checkpoints_command",
                         "Copy a job's kept checkpoints into a local folder by RUN_ID or JOB."),
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

#: Verbs that talk to the MLflow tracking server while a person waits: they probe it first and bound
#: MLflow's retries (its defaults, 7 retries with backoff factor 2 and a 120 s timeout, keep a command
#: silent for minutes when the server is down). prepare-data, make-tiny-model and webhook-server are
#: left alone: the first two log only inside a job's run, the server must ride out a tracking restart.
TRACKING_VERBS = frozenset({"launch", "status", "logs", "cost", "sync-run", "sync-checkpoints", "reconcile",
                            "promote", "sync", "watch", "webhook-register"})
#: MLflow's HTTP settings for a reachable server: a few quick retries for a 5xx or a restart, about 10 s.
BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
#: ... and for a server the probe could not reach: fail at the first call, within the probe's timeout.
UNREACHABLE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


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
        command = getattr(module, attr)
        return with_tracking_bounded(command) if cmd_name in TRACKING_VERBS else command


def with_tracking_bounded(command: click.Command) -> click.Command:
    """A copy of ``command`` that bounds MLflow's HTTP calls (:func:`bound_tracking_calls`) once its
    arguments are parsed, so `--help` and usage errors never wait on the server."""
    bounded = copy.copy(command)
    if command.callback is not None:
        bounded.callback = _bounded(command.callback)
    return bounded


def _bounded(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound_tracking_calls()
        return callback(*args, **kwargs)

    return run


def bound_tracking_calls(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Probe an http(s) MLFLOW_TRACKING_URI's /health (5 s) and set MLflow's retry settings the user did
    not set: a few quick retries when it answers, none and a 2 s timeout when it does not (it has just had
    5 s), so that an unreachable server fails the command's first MLflow call within about 7 s with a line
    naming the URI (each verb translates it; `status` goes on with the job alone). Returns why the server cannot be reached, None when it can (or is not http)."""
    from ade_mlflow_plugin.job.relay import unreachable_reason

    uri = environ.get("MLFLOW_TRACKING_URI", "")
    reason = unreachable_reason(uri, env={}) if uri.startswith(("http://", "https://")) else None
    for name, value in (UNREACHABLE_HTTP if reason else BOUNDED_HTTP).items():
        environ.setdefault(name, value)
    return reason


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
    if command is not None and command.name in TRACKING_VERBS:
        command = with_tracking_bounded(command)
    try:
        return (command or cli).main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"ade-mlflow: error: {_click_line(exc)}", err=True)
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except Exception as exc:
        line, code = _one_line(exc)
        if line is None:
            raise  # a bug: its traceback is what a report needs
        click.echo(f"ade-mlflow: error: {line}", err=True)
        sys.exit(code)


def _click_line(exc: click.ClickException) -> str:
    """click's message on one line (its own show() prints the usage above it), pointing at --help."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message


def _one_line(exc: Exception) -> tuple[str | None, int]:
    """(the line, exit code) of an error a user can meet; (None, 1) for a bug.

    AdeError carries its own line and code. Errors no verb translated still get one line, exit 1: an
    MLflow or AWS failure (translated by errors.py) and an OS error (a path that cannot be written, a full
    disk), which name what failed. errors.py imports mlflow (~1.3 s): it is imported here, once a verb
    failed, so that `--help` and usage errors (ClickExceptions, handled above) stay fast."""
    from ade_mlflow_plugin import errors

    if isinstance(exc, errors.AdeError):
        return exc.message, exc.exit_code
    if isinstance(exc, errors.MlflowException) and errors.is_missing(exc):  # a name or id that is not there
        return f"{errors.first_line(exc)}; check the name or id given", 2
    if isinstance(exc, errors.MlflowException):
        return errors.mlflow_error(f"MLflow call to {_tracking_uri()}", exc).message, 1
    if errors.is_aws_error(exc):
        return errors.aws_error("AWS call", exc).message, 1
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or errors.describe(exc)}{where}", 1
    return None, 1


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "the tracking store"


if __name__ == "__main__":  # pragma: no cover
    main()
