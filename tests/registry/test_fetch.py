"""Presigned ranged download: bytes and sha256 right against moto S3; breaks, expiry and bad servers."""
from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ade_mlflow_plugin.registry import fetch
from ade_mlflow_plugin.registry.config import ModelRegistryConfig
from ade_mlflow_plugin.errors import ConfigError

MB = 1 << 20


def test_ranges_cover_the_file_once():
    ranges = fetch.split_ranges(10 * MB + 7, 3 * MB)

    assert [(r.start, r.end) for r in ranges] == [(0, 3 * MB - 1), (3 * MB, 6 * MB - 1),
                                                  (6 * MB, 9 * MB - 1), (9 * MB, 10 * MB + 6)]
    assert fetch.split_ranges(0, MB) == []


@pytest.mark.parametrize("piece_mb, workers", [(1, 3), (64, 4)])
def test_presigned_s3_object_lands_whole_with_its_sha256(s3_bucket, tmp_path, piece_mb, workers):
    import boto3

    data = os.urandom(5 * MB + 12345)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="model/weights.bin", Body=data)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": "model/weights.bin"})
    dst = tmp_path / "weights.bin"

    digest = fetch.fetch_presigned(fetch.PresignedUrl(url, {}), dst, len(data),
                                   piece_bytes=piece_mb * MB, workers=workers)

    assert dst.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()


def test_empty_object_makes_an_empty_file(tmp_path):
    dst = tmp_path / "empty"

    digest = fetch.fetch_presigned(fetch.PresignedUrl("http://127.0.0.1:9/never-called", {}), dst, 0)

    assert dst.read_bytes() == b"" and digest == hashlib.sha256(b"").hexdigest()


class _Blob:
    """What the local test server serves, and how it misbehaves."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.token = "t1"  # the URL's query must carry it, else 403 (an expired presigned URL)
        self.break_first_at: int | None = None  # cut the first response after this many bytes
        self.ignore_range = False
        self.lie_length = False
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()


def _handler(blob: _Blob) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            with blob.lock:
                blob.requests.append((self.path, rng))
                cut, blob.break_first_at = blob.break_first_at, None
            if f"token={blob.token}" not in self.path:
                self._reply(403, b"<Error>Request has expired</Error>")
                return
            start, end = 0, len(blob.data) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
            if match and not blob.ignore_range:
                start, end = int(match[1]), int(match[2])
            body = blob.data[start:end + 1]
            self.send_response(206 if match and not blob.ignore_range else 200)
            self.send_header("Content-Length", str(len(body) + (1 if blob.lie_length else 0)))
            self.end_headers()
            if cut is not None:  # promise everything, send part, drop the connection
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        pass  # the client dropping a refused response midway is what these tests do


@pytest.fixture
def blob_server() -> Iterator[tuple[_Blob, str]]:
    blob = _Blob(os.urandom(3 * MB + 99))
    server = _QuietServer(("127.0.0.1", 0), _handler(blob))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield blob, f"http://127.0.0.1:{server.server_address[1]}/bucket/weights.bin"
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_a_range_that_breaks_midway_resumes_from_its_last_byte(blob_server, tmp_path):
    blob, url = blob_server
    blob.break_first_at = MB + 5

    digest = fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}), tmp_path / "w", len(blob.data),
                                   piece_bytes=len(blob.data), workers=1)

    assert digest == hashlib.sha256(blob.data).hexdigest()
    assert (tmp_path / "w").read_bytes() == blob.data
    # The retry asks only for what was not written yet (bytes past the last whole 1 MB piece).
    resumed = re.fullmatch(r"bytes=(\d+)-(\d+)", blob.requests[-1][1])
    assert len(blob.requests) == 2
    assert 0 < int(resumed[1]) <= MB + 5 and int(resumed[2]) == len(blob.data) - 1


def test_an_expired_url_is_renewed(blob_server, tmp_path):
    blob, url = blob_server
    blob.token = "t2"
    renewed = []

    def renew() -> fetch.PresignedUrl:
        renewed.append(1)
        return fetch.PresignedUrl(f"{url}?token=t2", {})

    digest = fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}, renew), tmp_path / "w",
                                   len(blob.data), piece_bytes=MB, workers=2)

    assert digest == hashlib.sha256(blob.data).hexdigest()
    assert renewed


def test_a_refused_url_without_renewal_fails_with_the_status(blob_server, tmp_path):
    blob, url = blob_server
    blob.token = "t2"

    with pytest.raises(fetch.FetchError, match=r"refused the presigned URL \(HTTP 403\)"):
        fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}), tmp_path / "w", len(blob.data),
                              piece_bytes=MB)


def test_a_server_that_ignores_range_is_refused(blob_server, tmp_path):
    blob, url = blob_server
    blob.ignore_range = True

    with pytest.raises(fetch.FetchError, match="HTTP 200 instead of 206; it must support Range"):
        fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}), tmp_path / "w", len(blob.data),
                              piece_bytes=MB)


def test_a_length_other_than_asked_is_refused(blob_server, tmp_path):
    blob, url = blob_server
    blob.lie_length = True

    with pytest.raises(fetch.FetchError, match="object changed during the download"):
        fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}), tmp_path / "w", len(blob.data),
                              piece_bytes=MB)


def test_presigned_fetch_switch_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADE_PRESIGNED_FETCH", "false")
    assert ModelRegistryConfig(root=tmp_path).presigned_fetch is False
    monkeypatch.delenv("ADE_PRESIGNED_FETCH")
    assert ModelRegistryConfig(root=tmp_path).presigned_fetch is True
    monkeypatch.setenv("ADE_PRESIGNED_FETCH", "maybe")
    with pytest.raises(ConfigError, match="ADE_PRESIGNED_FETCH='maybe' is not a boolean; set it to true"):
        ModelRegistryConfig(root=tmp_path)


def test_failed_fetch_leaves_no_thread_behind(blob_server, tmp_path):
    blob, url = blob_server
    blob.ignore_range = True
    before = {t.name for t in threading.enumerate()}

    with pytest.raises(fetch.FetchError):
        fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}), tmp_path / "w", len(blob.data),
                              piece_bytes=MB, workers=4)

    assert not [t for t in threading.enumerate() if t.name.startswith("ade-fetch") and t.name not in before]
    assert Path(tmp_path / "w").exists()  # the caller (sync's staging dir) discards it
