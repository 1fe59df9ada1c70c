"""Receiver for MLflow Model Registry webhooks, and their registration on the MLflow server.

MLflow signs each delivery: X-MLflow-Signature = ``v1,`` + base64(HMAC-SHA256(secret,
f"{delivery_id}.{timestamp}.{body}")). The receiver refuses a missing signature (401), a wrong one,
a timestamp outside the window or a replayed delivery id (403), answers 200 at once and hands the
event to a worker thread that fires the hooks (the built-in plugin then syncs). Malformed HTTP, odd
framings, oversized bodies, slow clients and non-JSON content are answered by webhook_server.py
before a delivery gets here.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from ade_mlflow_plugin.errors import ConfigError, describe, mlflow_error
from ade_mlflow_plugin.registry.webhook_server import HttpServer, Limits

_log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
EVENTS = ("model_version_alias.created", "model_version_alias.deleted", "model_version.created")
MAX_BODY_BYTES = 1 << 20
DEFAULT_WEBHOOK_NAME = "ade-mlflow-sync"


class Rejected(Exception):
    """A delivery that must not be processed; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The X-MLflow-Signature value MLflow sends for this delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class DeliveryVerifier:
    """Checks signature, timestamp window and delivery-id replay. Thread-safe."""

    def __init__(self, secret: str, window_s: int, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ConfigError("the webhook secret is empty; set it in the variable named by --secret-env")
        self._secret = secret
        self._window = window_s
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def verify(self, headers: Any, body: bytes) -> None:
        signature = headers.get(SIGNATURE_HEADER)
        delivery_id = headers.get(DELIVERY_ID_HEADER)
        timestamp = headers.get(TIMESTAMP_HEADER)
        if not signature or not delivery_id or not timestamp:
            raise Rejected(HTTPStatus.UNAUTHORIZED, "missing signature, delivery id or timestamp header")
        expected = sign(self._secret, delivery_id, timestamp, body)
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise Rejected(HTTPStatus.FORBIDDEN, "signature does not match")
        now = self._clock()
        try:
            sent = int(timestamp)
        except ValueError:
            raise Rejected(HTTPStatus.FORBIDDEN, "timestamp is not unix seconds") from None
        if abs(now - sent) > self._window:
            raise Rejected(HTTPStatus.FORBIDDEN, f"timestamp is {int(now - sent)} s off (window {self._window} s)")
        with self._lock:
            # Ids older than the window need not be kept: their timestamps are refused anyway.
            self._seen = {k: t for k, t in self._seen.items() if now - t <= self._window}
            if delivery_id in self._seen:
                raise Rejected(HTTPStatus.FORBIDDEN, "delivery id already seen (replay)")
            self._seen[delivery_id] = sent


@dataclass
class ReceiverStats:
    accepted: int = 0
    rejected: int = 0
    processed: int = 0
    failed: int = 0
    errors: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=100))  # the latest


class WebhookReceiver:
    """HTTP server + worker thread. ``start()`` for tests and embedding, ``serve_forever()`` for the CLI.

    The HTTP side is webhook_server.HttpServer (h11 on asyncio): framing, body limit, deadlines and
    connection bound are kept there, before a delivery reaches :meth:`handle`.
    """

    def __init__(self, verifier: DeliveryVerifier, plugin_manager: Any, host: str = "127.0.0.1",
                 port: int = 0, providers_reader: Callable[[], dict[str, Any]] | None = None,
                 limits: Limits | None = None) -> None:
        self.verifier = verifier
        self.pm = plugin_manager
        self.stats = ReceiverStats()
        self._providers = providers_reader or (lambda: {})
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._server = HttpServer(self.handle, host, port, limits or Limits(max_body_bytes=MAX_BODY_BYTES))
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self._server.address
        return f"http://{host}:{port}/"

    def start(self) -> "WebhookReceiver":
        self._start_worker()
        self._server.start()
        return self

    def serve_forever(self) -> None:
        self._start_worker()
        try:
            self._server.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.stop()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every accepted event was processed (for tests and orderly shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    # -- request side ---------------------------------------------------------------------------
    def handle(self, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        """Verify and enqueue one delivery; returns (HTTP status, JSON answer). Never blocks."""
        try:
            self.verifier.verify(headers, body)
            event = _parse_event(body)
        except Rejected as exc:
            self.stats.rejected += 1
            _log.warning("webhook delivery refused: %s", exc.reason)
            return exc.status, {"error": exc.reason}
        with self._idle:
            self._pending += 1
        self.stats.accepted += 1
        self._queue.put(event)
        return HTTPStatus.OK, {"accepted": True}

    # -- worker side ----------------------------------------------------------------------------
    def _start_worker(self) -> None:
        thread = threading.Thread(target=self._work, name="ade-webhook-worker", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self.dispatch(event)
                self.stats.processed += 1
            except Exception as exc:  # one failed sync must not stop the receiver
                self.stats.failed += 1
                self.stats.errors.append(describe(exc))
                _log.error("webhook event %s failed: %s", event.get("event"), describe(exc))
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def dispatch(self, event: dict[str, Any]) -> None:
        """Fire the hooks for one verified event."""
        kind, data = event["event"], event["data"]
        name, version = data.get("name"), _str_or_none(data.get("version"))
        if kind == "model_version_alias.created":
            alias = data["alias"]
            previous = (self._providers().get("models", {}).get(name, {})
                        .get("aliases", {}).get(alias, {}).get("version"))
            self.pm.hook.ade_version_promoted(name=name, version=version, alias=alias, stage=None,
                                              previous_version=previous if previous != version else None)
        elif kind == "model_version_alias.deleted":
            self.pm.hook.ade_alias_removed(name=name, alias=data["alias"], version=version)
        elif kind == "model_version.created":
            self.pm.hook.ade_version_registered(name=name, version=version, run_id=data.get("run_id"),
                                                tags=dict(data.get("tags") or {}))
        else:
            _log.info("ignoring webhook event %s", kind)


def _parse_event(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
        event = f"{payload['entity']}.{payload['action']}"
        data = payload["data"]
    except (ValueError, KeyError, TypeError):
        raise Rejected(HTTPStatus.BAD_REQUEST, "body is not an MLflow webhook payload") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise Rejected(HTTPStatus.BAD_REQUEST, "payload data has no model name")
    return {"event": event, "data": data}


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def register_webhook(client: Any, url: str, secret: str, name: str = DEFAULT_WEBHOOK_NAME) -> Any:
    """Create (or update, when one with ``name`` exists) the webhook on the MLflow server."""
    from mlflow.exceptions import MlflowException

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"webhook URL {url!r} must start with http:// or https://")
    try:
        existing = [w for w in _all_webhooks(client) if w.name == name]
        if existing:
            return client.update_webhook(existing[0].webhook_id, url=url, events=list(EVENTS),
                                         secret=secret, status="ACTIVE")
        return client.create_webhook(name=name, url=url, events=list(EVENTS), secret=secret,
                                     description="ade-mlflow-plugin: sync promoted versions to ADE storage")
    except MlflowException as exc:
        raise mlflow_error("registering the webhook", exc, "webhooks need an MLflow server with a SQL backend "
                           "store (and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true for private addresses)") from exc


def _all_webhooks(client: Any) -> list[Any]:
    found, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found
