"""MLflow webhooks from the real server into the receiver; signature, window and replay checks."""
from __future__ import annotations

import json
import time
import uuid

import pytest
import requests
from mlflow import MlflowClient

from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.hooks import get_plugin_manager, register_plugin
from ade_mlflow_plugin.registry.store import AdeStore
from ade_mlflow_plugin.registry.webhooks import DeliveryVerifier, WebhookReceiver, sign
from tests.registry.conftest import Recorder, run_cli, sha256_tree

SECRET = "s3cret-for-tests"


@pytest.fixture
def receiver_with(root):
    started = []

    def start(builtin_sync: bool = True, window_s: int = 300):
        config = ModelRegistryConfig(root=root, load_entry_points=False)
        pm = get_plugin_manager(config, builtin_sync=builtin_sync)
        recorder = Recorder()
        register_plugin(pm, recorder, "recorder")
        receiver = WebhookReceiver(DeliveryVerifier(SECRET, window_s), pm,
                                   providers_reader=AdeStore(root).read_providers).start()
        started.append(receiver)
        return receiver, recorder

    yield start
    for receiver in started:
        receiver.stop()


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _providers(root):
    path = root / "providers.json"
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def test_alias_set_on_server_is_synced_by_receiver(make_version, model_name, root, receiver_with,
                                                   monkeypatch, capsys):
    receiver, recorder = receiver_with()
    monkeypatch.setenv("ADE_TEST_WEBHOOK_SECRET", SECRET)
    hook_name = f"ade-test-{uuid.uuid4().hex[:6]}"
    code, out, err = run_cli(["webhook-register", "--url", receiver.url, "--secret-env",
                              "ADE_TEST_WEBHOOK_SECRET", "--name", hook_name], capsys)
    assert code == 0, err
    client = MlflowClient()
    webhook_id = out.split("(")[1].split(")")[0]
    try:
        time.sleep(1.5)  # the server caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL=1 s
        version = make_version(model_name)
        client.set_registered_model_alias(model_name, "production", version)

        assert _wait_for(lambda: model_name in _providers(root)["models"]), receiver.stats
        entry = _providers(root)["models"][model_name]["aliases"]["production"]
        vdir = root / "registry" / f"{model_name}-v{version}"
        assert entry["version"] == version and entry["path"] == str(vdir)
        meta = json.loads((vdir / "metadata.json").read_text())
        assert {k: v["sha256"] for k, v in meta["files"].items()} == sha256_tree(vdir / "model_artifacts")
        assert _wait_for(lambda: recorder.named("ade_version_registered"))
        assert recorder.named("ade_version_registered")[0]["version"] == version

        client.delete_registered_model_alias(model_name, "production")
        assert _wait_for(lambda: model_name not in _providers(root)["models"]), receiver.stats
        assert receiver.stats.rejected == 0 and receiver.stats.failed == 0, receiver.stats.errors
    finally:
        client.delete_webhook(webhook_id)


def _post(url: str, body: bytes, *, secret: str = SECRET, delivery_id: str | None = None,
          timestamp: int | None = None, signature: str | None = None, omit: str | None = None) -> int:
    delivery_id = delivery_id or str(uuid.uuid4())
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
               "X-MLflow-Timestamp": ts,
               "X-MLflow-Signature": signature or sign(secret, delivery_id, ts, body)}
    if omit:
        headers.pop(omit)
    return requests.post(url, data=body, headers=headers, timeout=10).status_code


_BODY = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-11-29T00:00:00",
                    "data": {"name": "m", "alias": "production", "version": "1"}}).encode()


@pytest.mark.parametrize("kwargs, status", [
    ({"omit": "X-MLflow-Signature"}, 401),
    ({"omit": "X-MLflow-Delivery-Id"}, 401),
    ({"omit": "X-MLflow-Timestamp"}, 401),
    ({"secret": "wrong-secret"}, 403),
    ({"signature": "v1,AAAA"}, 403),
    ({"timestamp": int(time.time()) - 3600}, 403),
    ({"timestamp": int(time.time()) + 3600}, 403),
])
def test_bad_deliveries_are_refused_and_not_synced(receiver_with, kwargs, status):
    receiver, recorder = receiver_with(builtin_sync=False)
    assert _post(receiver.url, _BODY, **kwargs) == status
    assert receiver.wait_idle(5)
    assert recorder.calls == [] and receiver.stats.accepted == 0


def test_tampered_body_is_refused(receiver_with):
    receiver, recorder = receiver_with(builtin_sync=False)
    delivery_id, ts = str(uuid.uuid4()), str(int(time.time()))
    signature = sign(SECRET, delivery_id, ts, _BODY)
    tampered = _BODY.replace(b'"version": "1"', b'"version": "2"')
    assert _post(receiver.url, tampered, delivery_id=delivery_id, timestamp=int(ts), signature=signature) == 403
    assert recorder.calls == []


def test_replayed_delivery_is_refused(receiver_with):
    receiver, recorder = receiver_with(builtin_sync=False)
    delivery_id, ts = str(uuid.uuid4()), int(time.time())
    assert _post(receiver.url, _BODY, delivery_id=delivery_id, timestamp=ts) == 200
    assert _post(receiver.url, _BODY, delivery_id=delivery_id, timestamp=ts) == 403
    assert receiver.wait_idle(5)
    assert recorder.named("ade_version_promoted") == [dict(name="m", version="1", alias="production",
                                                           stage=None, previous_version=None)]
    assert receiver.stats.accepted == 1 and receiver.stats.rejected == 1


def test_failed_sync_keeps_the_receiver_serving(receiver_with, tracking_uri, root):
    receiver, _ = receiver_with()  # built-in sync: model "m" does not exist on the server
    assert _post(receiver.url, _BODY) == 200
    assert receiver.wait_idle(30)
    assert receiver.stats.failed == 1 and "does not exist" in receiver.stats.errors[0]
    assert not (root / "registry").exists() or not any((root / "registry").iterdir())
    assert requests.get(receiver.url, timeout=5).status_code == 200


def test_webhook_server_cli_needs_the_secret(monkeypatch, capsys, root):
    monkeypatch.delenv("ADE_TEST_NO_SECRET", raising=False)
    code, _, err = run_cli(["webhook-server", "--secret-env", "ADE_TEST_NO_SECRET", "--root", str(root)], capsys)
    assert code == 2 and err.count("\n") == 1 and "ADE_TEST_NO_SECRET" in err
    with pytest.raises(ConfigError):
        DeliveryVerifier("", 300)


def test_webhook_server_cli_serves_until_terminated(tmp_path, root, tracking_uri):
    import os
    import subprocess
    import sys

    from tests.conftest import free_port, wait_http

    port = free_port()
    env = {**os.environ, "ADE_TEST_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "ade_mlflow_plugin.cli", "webhook-server", "--secret-env",
                             "ADE_TEST_WEBHOOK_SECRET", "--root", str(root), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_http(url, timeout=60, proc=proc)
        assert _post(url, _BODY, omit="X-MLflow-Signature") == 401
        assert _post(url, _BODY, secret="nope") == 403
        assert _post(url, _BODY) == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"listening on" in err and b"webhook delivery refused" in err
