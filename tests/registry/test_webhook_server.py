"""The webhook receiver's HTTP side over real sockets: every framing, slow clients, the connection bound.

Raw bytes through `socket`, so each malformed or hostile request is exactly what a client could send.
Deadlines in these tests are long (30 s) unless a test is about a deadline: an answer that comes
without the body ever being sent proves the server did not wait for it, with no clock involved.
"""
from __future__ import annotations

import json
import select
import socket
import time
import tracemalloc
import uuid
from contextlib import ExitStack

import pytest

from ade_mlflow_plugin.config.registry import ModelRegistryConfig
from ade_mlflow_plugin.hooks import get_plugin_manager, register_plugin
from ade_mlflow_plugin.registry.webhook_server import Limits
from ade_mlflow_plugin.registry.webhooks import MAX_BODY_BYTES, DeliveryVerifier, WebhookReceiver, sign
from tests.registry.conftest import Recorder, run_cli

SECRET = "s3cret-for-framing-tests"
LONG = dict(header_timeout_s=30.0, body_timeout_s=30.0)
BODY = json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-12-06T00:00:00",
                   "data": {"name": "m", "alias": "production", "version": "1"}}).encode()


@pytest.fixture
def serve(root):
    started = []

    def start(**limits):
        pm = get_plugin_manager(ModelRegistryConfig(root=root, load_entry_points=False), builtin_sync=False)
        recorder = Recorder()
        register_plugin(pm, recorder, "recorder")
        receiver = WebhookReceiver(DeliveryVerifier(SECRET, 300), pm,
                                   limits=Limits(max_body_bytes=MAX_BODY_BYTES, **{**LONG, **limits})).start()
        started.append(receiver)
        return receiver, recorder

    yield start
    for receiver in started:
        receiver.stop()


def _address(receiver: WebhookReceiver) -> tuple[str, int]:
    host, port = receiver.url[len("http://"):].rstrip("/").rsplit(":", 1)
    return host, int(port)


def _connect(receiver: WebhookReceiver) -> socket.socket:
    sock = socket.create_connection(_address(receiver))
    sock.settimeout(20)
    return sock


def _status(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of the answer, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _ask(receiver: WebhookReceiver, raw: bytes) -> tuple[int, bytes]:
    with _connect(receiver) as sock:
        sock.sendall(raw)
        return _status(sock)


def _signed_headers(body: bytes) -> bytes:
    delivery, ts = str(uuid.uuid4()), str(int(time.time()))
    return (f"X-MLflow-Delivery-Id: {delivery}\r\nX-MLflow-Timestamp: {ts}\r\n"
            f"X-MLflow-Signature: {sign(SECRET, delivery, ts, body)}\r\n").encode()


JSON = b"Host: r\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("raw, status", [
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"\r\n", 411, id="no-length"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: -5\r\n\r\n", 400, id="negative"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: 12abc\r\n\r\n", 400, id="non-numeric"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: 5\r\nContent-Length: 7\r\n\r\n", 400,
                 id="duplicate-conflicting"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: 5000000000\r\nContent-Length: 5000000000\r\n\r\n",
                 413, id="duplicate-too-large"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: 5000000000\r\n\r\n", 413, id="too-large"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
                 id="length-and-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Transfer-Encoding: gzip\r\n\r\n", 400, id="unknown-coding"),
    pytest.param(b"POST / HTTP/1.1\r\n" + JSON + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400, id="bad-chunk"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n", 415,
                 id="not-json"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\n", 415, id="no-content-type"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="garbage"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400, id="no-host"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: r\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n", 431, id="huge-header"),
    pytest.param(b"DELETE / HTTP/1.1\r\nHost: r\r\n\r\n", 405, id="method"),
])
def test_every_framing_gets_a_4xx_before_the_body_is_read(serve, raw, status):
    receiver, recorder = serve()
    # No body is ever sent: with 30 s deadlines, an answer at all shows nothing waited for one.
    got, body = _ask(receiver, raw)
    assert got == status and "error" in json.loads(body)
    assert receiver.stats.accepted == receiver.stats.rejected == 0 and recorder.calls == []


def test_a_chunked_body_over_the_limit_is_cut_off_with_memory_flat(serve):
    receiver, _ = serve()
    chunk = b"a" * (64 << 10)
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    tracemalloc.start()
    sent, answer = 0, None
    try:
        with _connect(receiver) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\n" + JSON + b"Transfer-Encoding: chunked\r\n\r\n")
            try:
                while sent < 256 * MAX_BODY_BYTES:  # 256 MB: far more than socket buffers hold
                    sock.sendall(frame)
                    sent += len(chunk)
                    if select.select([sock], [], [], 0)[0]:
                        break  # the answer came while we were still sending
            except OSError:
                pass  # the server closed on us after answering
            answer = _status(sock)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer[0] == 413
    assert sent < 64 * MAX_BODY_BYTES, "the server kept reading past the limit"
    assert peak < 8 * MAX_BODY_BYTES, f"memory peaked at {peak} bytes"


def test_a_signed_chunked_delivery_is_accepted(serve):
    receiver, recorder = serve()
    raw = (b"POST / HTTP/1.1\r\n" + JSON + _signed_headers(BODY) + b"Transfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n")
    assert _ask(receiver, raw)[0] == 200
    assert receiver.wait_idle(10) and recorder.named("ade_version_promoted")


def test_health_checks_answer_get_and_head(serve):
    receiver, _ = serve()
    assert _ask(receiver, b"GET / HTTP/1.1\r\nHost: r\r\n\r\n") == (200, b'{"status": "ok"}')
    assert _ask(receiver, b"HEAD / HTTP/1.1\r\nHost: r\r\n\r\n") == (200, b"")


@pytest.mark.parametrize("raw, what", [
    (b"POST / HTTP/1.1\r\nHost: r\r\n", "headers"),
    (b"POST / HTTP/1.1\r\n" + JSON + b"Content-Length: 100\r\n\r\n{\"entity\"", "body"),
], ids=["headers", "body"])
def test_a_slow_client_is_answered_408_at_its_deadline(serve, raw, what):
    receiver, _ = serve(header_timeout_s=0.2, body_timeout_s=0.2)
    status, body = _ask(receiver, raw)
    assert status == 408 and what in json.loads(body)["error"]


def test_200_slow_clients_do_not_stop_a_signed_delivery(serve):
    receiver, recorder = serve()
    with ExitStack() as stack:
        slow = []
        for _ in range(200):
            slow.append(stack.enter_context(_connect(receiver)))
            slow[-1].sendall(b"POST / HTTP/1.1\r\nHost: r\r\nX-Slow: ")  # and never more
        raw = b"POST / HTTP/1.1\r\n" + JSON + _signed_headers(BODY) + b"Content-Length: %d\r\n\r\n" % len(BODY)
        assert _ask(receiver, raw + BODY)[0] == 200
        assert receiver.wait_idle(10) and recorder.named("ade_version_promoted")
        # Stopping the server ends their connections too (a slow client does not hold the shutdown).
        receiver.stop()
        for sock in slow:
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass


def test_connections_past_the_bound_are_answered_503(serve):
    receiver, _ = serve(max_connections=3)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(_connect(receiver)).sendall(b"POST / HTTP/1.1\r\n")
        status, body = _ask(receiver, b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
        assert status == 503 and "too many connections" in json.loads(body)["error"]
    # Once they are gone the server answers again (their closing is noticed asynchronously).
    deadline = time.monotonic() + 30
    while _ask(receiver, b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_webhook_server_port_out_of_range_is_one_line(root, capsys, monkeypatch):
    monkeypatch.setenv("ADE_TEST_WEBHOOK_SECRET", SECRET)
    code, _, err = run_cli(["webhook-server", "--secret-env", "ADE_TEST_WEBHOOK_SECRET", "--root", str(root),
                            "--port", "70000"], capsys)
    assert code == 2 and "--port" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["busy-port", "unknown-host"])
def test_webhook_server_that_cannot_listen_is_one_line(root, capsys, monkeypatch, where):
    monkeypatch.setenv("ADE_TEST_WEBHOOK_SECRET", SECRET)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        host = "127.0.0.1" if where == "busy-port" else "no-such-host.invalid"
        code, _, err = run_cli(["webhook-server", "--secret-env", "ADE_TEST_WEBHOOK_SECRET", "--root", str(root),
                                "--host", host, "--port", str(port)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"cannot listen on {host}:{port}" in err


def _mutations(seed: int, count: int) -> list[bytes]:
    """Seeded random damage to a well-formed signed delivery: cut, flipped, inserted and doubled bytes."""
    import random

    rng = random.Random(seed)
    valid = (b"POST / HTTP/1.1\r\n" + JSON + _signed_headers(BODY) + b"Content-Length: %d\r\n\r\n" % len(BODY)
             + BODY)
    found = []
    for _ in range(count):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            kind = rng.choice(("cut", "flip", "insert", "double"))
            if kind == "cut":
                del raw[at:]
            elif kind == "flip" and at < len(raw):
                raw[at] = rng.choice(b"\r\n\0 :;,-x9\x7f\xff")
            elif kind == "insert":
                raw[at:at] = rng.choice((b"\r\n", b"\n", b"Content-Length: 9\r\n", b"Transfer-Encoding: chunked\r\n",
                                         b" ", b"\0", b"\r\n\r\n"))
            else:
                raw[at:at] = raw[at:at + rng.randint(1, 40)]
            if not raw:
                raw = bytearray(b"\r\n")
        found.append(bytes(raw))
    return found


def test_damaged_requests_get_an_answer_below_500_and_the_server_goes_on(serve):
    receiver, _ = serve()
    for raw in _mutations(seed=19, count=300):
        with _connect(receiver) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)  # nothing more comes: the server must answer what it has
            status, _ = _status(sock)
        assert 200 <= status < 500, raw
    assert _ask(receiver, b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")[0] == 200
