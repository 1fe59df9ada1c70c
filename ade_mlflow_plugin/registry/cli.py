"""CLI verbs of the registry side: promote, sync, watch, webhook-server, webhook-register."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

# errors.py and the registry modules import mlflow (~1.3 s): they are imported inside the commands, so
# that `--help` and usage errors of the registry verbs stay fast.
if TYPE_CHECKING:
    from ade_mlflow_plugin.config.registry import ModelRegistryConfig

_root_option = click.option(
    "--root", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="ADE provider storage root (default: $ADE_MODELS_ROOT or ~/.ade/models).")
_keep_option = click.option("--keep", "keep_versions", type=int, default=3, show_default=True,
                            help="Synced versions of a model to keep on disk.")


def _config(root: Path | None, keep_versions: int = 3) -> ModelRegistryConfig:
    from ade_mlflow_plugin.config.registry import ModelRegistryConfig, default_root

    return ModelRegistryConfig(root=root or default_root(), keep_versions=keep_versions)


def _client():  # noqa: ANN202 (mlflow import kept lazy)
    from mlflow import MlflowClient

    return MlflowClient()


def _secret(var: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        from ade_mlflow_plugin.errors import ConfigError

        raise ConfigError(f"environment variable {var} is empty or not set; export the webhook secret "
                          f"in {var} (the same value given to webhook-register)")
    return value


@click.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default=None, help="Set this registry alias (MLflow's current way), e.g. production.")
@click.option("--stage", default=None, help="Legacy stage: Staging, Production, Archived or None.")
@click.option("--archive-existing", is_flag=True, help="With --stage: archive the stage's other versions.")
@click.option("--no-sync", is_flag=True, help="Only change the registry; fire no hooks.")
@_root_option
@_keep_option
def promote_command(name: str, version: str, alias: str | None, stage: str | None,
                    archive_existing: bool, no_sync: bool, root: Path | None, keep_versions: int) -> None:
    """Promote NAME VERSION to an alias or stage, then sync it to ADE storage (hooks)."""
    from ade_mlflow_plugin.hooks import get_plugin_manager
    from ade_mlflow_plugin.registry.promote import promote

    config = _config(root, keep_versions)
    pm = None if no_sync else get_plugin_manager(config)
    result = promote(_client(), name, version, alias=alias, stage=stage,
                     archive_existing=archive_existing, plugin_manager=pm)
    label = f"alias {result.alias}" if result.alias else f"stage {result.stage}"
    previous = f" (previous: v{result.previous_version})" if result.previous_version else ""
    click.echo(f"{name} v{result.version} -> {label}{previous}")
    if pm is not None:
        click.echo(f"ADE storage: {config.root / 'providers.json'}")


@click.command("sync")
@click.argument("ref", metavar="NAME@ALIAS|NAME/VERSION|RUN_ID")
@_root_option
@_keep_option
def sync_command(ref: str, root: Path | None, keep_versions: int) -> None:
    """Copy a registered model version into ADE provider storage (verified, atomic).

    A RUN_ID (32 hex characters) lands the versions that run registered in its output_dir (the run's
    ade.output_dir tag, or --root), again even when landed before.
    """
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        _land_run(ref, root)
        return
    from ade_mlflow_plugin.hooks import get_plugin_manager
    from ade_mlflow_plugin.registry.sync import ModelSyncManager

    config = _config(root, keep_versions)
    manager = ModelSyncManager(config, plugin_manager=get_plugin_manager(config, builtin_sync=False))
    result = manager.sync_ref(ref)
    click.echo(f"{result.name} v{result.version} -> {result.path} "
               f"(downloaded {result.downloaded_bytes} bytes)")


def _land_run(run_id: str, root: Path | None) -> None:
    """`sync RUN_ID`: registry/landing.py on the run's output_dir (or --root), forced."""
    from mlflow.exceptions import MlflowException

    from ade_mlflow_plugin.errors import ConfigError, is_missing, mlflow_error
    from ade_mlflow_plugin.registry.landing import land_run

    client = _client()
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_missing(exc):
            raise ConfigError(f"run {run_id} not found on the tracking server; check the run id "
                              "(or pass NAME@ALIAS or NAME/VERSION)") from exc
        raise mlflow_error(f"reading run {run_id}", exc) from exc
    landed = land_run(client, run, output_dir=root, force=True)
    if landed is None:
        raise ConfigError(f"run {run_id} has no ade.output_dir tag: pass --root DIR")
    click.echo(landed.line())


@click.command("watch")
@_root_option
@_keep_option
@click.option("--model", "models", multiple=True, help="Registered model to watch (repeatable; default all).")
@click.option("--interval", "interval_s", type=float, default=10.0, show_default=True, help="Seconds between polls.")
@click.option("--once", is_flag=True, help="Poll once and exit.")
@click.option("--cursor", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cursor file (default: <root>/.watch-cursor.json).")
def watch_command(root: Path | None, keep_versions: int, models: tuple[str, ...], interval_s: float,
                  once: bool, cursor: Path | None) -> None:
    """Poll the registry for alias and stage changes and sync them (works for legacy stages)."""
    from ade_mlflow_plugin.config.registry import ModelRegistryConfig, default_root
    from ade_mlflow_plugin.hooks import get_plugin_manager
    from ade_mlflow_plugin.registry.watch import CURSOR_FILE, Watcher

    config = ModelRegistryConfig(root=root or default_root(), keep_versions=keep_versions,
                                 poll_interval_s=interval_s)
    config.root.mkdir(parents=True, exist_ok=True)
    watcher = Watcher(_client(), get_plugin_manager(config), cursor or config.root / CURSOR_FILE,
                      list(models))
    if once:
        for change in watcher.poll_once():
            click.echo(f"{change.kind}: {change.name} v{change.version} {change.label or ''}".rstrip())
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    click.echo(f"watching the registry every {interval_s:g} s; Ctrl-C to stop")
    watcher.run(interval_s)


@click.command("webhook-server")
@click.option("--secret-env", required=True, metavar="VAR", help="Environment variable holding the webhook secret.")
@_root_option
@_keep_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port (0: any free one, printed at start).")
@click.option("--window-s", type=int, default=300, show_default=True, help="Accepted timestamp skew.")
def webhook_server_command(secret_env: str, root: Path | None, keep_versions: int, host: str, port: int,
                           window_s: int) -> None:
    """Receive MLflow registry webhooks (HMAC-verified) and sync promoted versions."""
    from ade_mlflow_plugin.errors import ConfigError, first_line
    from ade_mlflow_plugin.config.registry import ModelRegistryConfig, default_root
    from ade_mlflow_plugin.hooks import get_plugin_manager
    from ade_mlflow_plugin.registry.store import AdeStore
    from ade_mlflow_plugin.registry.webhooks import DeliveryVerifier, WebhookReceiver

    config = ModelRegistryConfig(root=root or default_root(), keep_versions=keep_versions,
                                 webhook_window_s=window_s)
    verifier = DeliveryVerifier(_secret(secret_env), config.webhook_window_s)
    try:
        receiver = WebhookReceiver(verifier, get_plugin_manager(config), host, port,
                                   providers_reader=AdeStore(config.root).read_providers)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or first_line(exc)}); "
                          "pick another --port or --host") from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    click.echo(f"listening on {receiver.url} (ADE storage {config.root}); Ctrl-C to stop", err=True)
    try:
        receiver.serve_forever()
    except KeyboardInterrupt:
        pass


@click.command("webhook-register")
@click.option("--url", required=True, help="Where the receiver listens, e.g. http://127.0.0.1:8765/.")
@click.option("--secret-env", required=True, metavar="VAR", help="Environment variable holding the webhook secret.")
@click.option("--name", default="ade-mlflow-sync", show_default=True, help="Webhook name on the server.")
def webhook_register_command(url: str, secret_env: str, name: str) -> None:
    """Create (or update) the MLflow webhook that calls the receiver."""
    from ade_mlflow_plugin.registry.webhooks import register_webhook

    hook = register_webhook(_client(), url, _secret(secret_env), name)
    click.echo(f"webhook {hook.name} ({hook.webhook_id}) -> {hook.url}")
