"""Presigned ranged download: bytes and sha256 right against moto S3; breaks, expiry and bad servers."""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.registry import fetch
from ade_mlflow_plugin.config.registry import ModelRegistryConfig

MB = 1 << 20
SECRET = "SECRETSIGNATURE0123"


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


def test_gzip_encoded_object_is_stored_as_uploaded(s3_bucket, tmp_path):
    """MLflow uploads *.gz artifacts with Content-Encoding: gzip; the copy must be the .gz file itself."""
    import boto3

    data = gzip.compress(os.urandom(2 * MB), compresslevel=1)
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="m/data.gz", Body=data, ContentEncoding="gzip")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": "m/data.gz"})

    digest = fetch.fetch_presigned(fetch.PresignedUrl(url, {}), tmp_path / "data.gz", len(data), piece_bytes=MB)

    assert (tmp_path / "data.gz").read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_empty_object_makes_an_empty_file(tmp_path):
    dst = tmp_path / "empty"

    digest = fetch.fetch_presigned(fetch.PresignedUrl("http://127.0.0.1:9/never-called", {}), dst, 0)

    assert dst.read_bytes() == b"" and digest == hashlib.sha256(b"").hexdigest()


#: How long a held range waits for the client to hang up before sending the rest (a client that never
#: stops it). Generous: only a broken client waits it out, so a loaded machine cannot fake a stop.
HOLD_S = 30
PIECE = 256 << 10


class _Blob:
    """What the local test server serves, and how it misbehaves."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.token = "t1"  # the URL's query must carry it, else 403 (an expired presigned URL)
        self.break_first_at: int | None = None  # cut the first response after this many bytes
        self.ignore_range = False
        self.lie_length = False
        self.etags: list[str] = []  # one per request, in order; empty: no ETag header
        # Ranges starting here are held: one PIECE, then the rest only if the client has not hung up within
        # HOLD_S. A range the client stops shows as bytes never sent, whatever the machine's load: the server
        # waits on the connection's state, not on a clock.
        self.slow_from: int | None = None
        self.sent_slowly = 0
        # The range starting at 0 answers only once a held range has sent a piece, with this ETag: the
        # failure then lands while other ranges are mid-stream, the case a stop must handle.
        self.late_first_etag: str | None = None
        self.held_streaming = threading.Event()
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
                etag = blob.etags.pop(0) if blob.etags else None
            if f"token={blob.token}" not in self.path:
                self._reply(403, b"<Error>Request has expired</Error>")
                return
            start, end = 0, len(blob.data) - 1
            match = re.fullmatch(r"bytes=(\d+)-(\d+)", rng or "")
            ranged = bool(match) and not blob.ignore_range
            if ranged:
                start, end = int(match[1]), int(match[2])
            body = blob.data[start:end + 1]
            if blob.late_first_etag and start == 0:
                blob.held_streaming.wait(HOLD_S)
                etag = blob.late_first_etag
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", str(len(body) + (1 if blob.lie_length else 0)))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(blob.data)}")
            if etag:
                self.send_header("ETag", etag)
            self.end_headers()
            if cut is not None:  # promise everything, send part, drop the connection
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            if blob.slow_from is not None and start >= blob.slow_from:
                self._send_held(body)
                return
            self.wfile.write(body)

        def _send_held(self, body: bytes) -> None:
            for i in range(0, len(body), PIECE):
                if i and _hung_up(self.connection, HOLD_S if i == PIECE else 0):
                    return
                self.wfile.write(body[i:i + PIECE])
                self.wfile.flush()
                with blob.lock:
                    blob.sent_slowly += len(body[i:i + PIECE])
                blob.held_streaming.set()

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _hung_up(conn: socket.socket, wait_s: float) -> bool:
    """Whether the client closed the connection (within ``wait_s``): it sends nothing else while it reads."""
    readable, _, _ = select.select([conn], [], [], wait_s)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True  # reset by the client


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

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


def _fetch(url: str, blob: _Blob, tmp_path, **kwargs) -> str:  # noqa: ANN001, ANN003
    kwargs.setdefault("piece_bytes", MB)
    return fetch.fetch_presigned(fetch.PresignedUrl(url, {}), tmp_path / "w", len(blob.data), **kwargs)


def test_a_range_that_breaks_midway_resumes_from_its_last_byte(blob_server, tmp_path):
    blob, url = blob_server
    blob.break_first_at = MB + 5

    digest = _fetch(f"{url}?token=t1", blob, tmp_path, piece_bytes=len(blob.data), workers=1)

    assert digest == hashlib.sha256(blob.data).hexdigest()
    assert (tmp_path / "w").read_bytes() == blob.data
    # The retry asks only for what was not written yet (bytes past the last whole 1 MB piece).
    resumed = re.fullmatch(r"bytes=(\d+)-(\d+)", blob.requests[-1][1])
    assert len(blob.requests) == 2
    assert 0 < int(resumed[1]) <= MB + 5 and int(resumed[2]) == len(blob.data) - 1


def test_an_expired_url_is_renewed_once_for_all_ranges(blob_server, tmp_path):
    blob, url = blob_server
    blob.token = "t2"
    renewed = []

    def renew() -> fetch.PresignedUrl:
        renewed.append(1)
        time.sleep(0.1)  # give the other ranges time to hit the expired URL too
        return fetch.PresignedUrl(f"{url}?token=t2", {})

    digest = _fetch(f"{url}?token=t1", blob, tmp_path, renew=renew, workers=4)

    assert digest == hashlib.sha256(blob.data).hexdigest()
    assert len(renewed) == 1


def test_a_refused_url_without_renewal_fails_with_the_status(blob_server, tmp_path):
    blob, url = blob_server
    blob.token = "t2"

    with pytest.raises(fetch.FetchError, match=r"refused the presigned URL \(HTTP 403\)"):
        _fetch(f"{url}?token=t1", blob, tmp_path)


def test_a_renewal_that_fails_is_one_line(blob_server, tmp_path):
    blob, url = blob_server
    blob.token = "t2"

    def renew() -> fetch.PresignedUrl:
        raise ConnectionError(f"http://mlflow/presigned?X-Amz-Signature={SECRET} refused")

    with pytest.raises(fetch.FetchError) as info:
        _fetch(f"{url}?token=t1", blob, tmp_path, renew=renew)

    assert "could not renew the expired download URL (ConnectionError)" in str(info.value)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_a_server_that_ignores_range_is_refused(blob_server, tmp_path):
    blob, url = blob_server
    blob.ignore_range = True

    with pytest.raises(fetch.FetchError, match="HTTP 200 instead of 206; it must support Range"):
        _fetch(f"{url}?token=t1", blob, tmp_path)


def test_a_length_other_than_asked_is_refused(blob_server, tmp_path):
    blob, url = blob_server
    blob.lie_length = True

    with pytest.raises(fetch.FetchError, match="run the sync again"):
        _fetch(f"{url}?token=t1", blob, tmp_path)


def test_an_object_larger_than_listed_is_refused(blob_server, tmp_path):
    blob, url = blob_server

    with pytest.raises(fetch.FetchError, match=r"changed on the artifact store.*of 2097152\)"):
        fetch.fetch_presigned(fetch.PresignedUrl(f"{url}?token=t1", {}), tmp_path / "w", 2 * MB,
                              piece_bytes=MB)


def test_ranges_from_two_versions_of_the_object_are_refused(blob_server, tmp_path):
    blob, url = blob_server
    blob.etags = ['"v1"', '"v2"', '"v2"', '"v2"']

    with pytest.raises(fetch.FetchError, match="file changed on the artifact store during the download"):
        _fetch(f"{url}?token=t1", blob, tmp_path, workers=1)


def test_errors_never_show_the_presigned_url(tmp_path):
    with socket_closed_port() as port:
        url = f"http://127.0.0.1:{port}/b/k?X-Amz-Signature={SECRET}&X-Amz-Security-Token={SECRET}"
        with pytest.raises(fetch.FetchError) as info:
            fetch.fetch_presigned(fetch.PresignedUrl(url, {}), tmp_path / "w", 10, piece_bytes=MB)

    assert "could not reach the artifact store (ConnectionError)" in str(info.value)
    assert SECRET not in str(info.value) and "127.0.0.1" not in str(info.value)


def test_one_failed_range_stops_the_others(blob_server, tmp_path):
    blob, url = blob_server
    blob.slow_from = MB  # ranges 2-4 are held after their first piece
    blob.etags = ['"v2"'] * 4
    blob.late_first_etag = '"v1"'  # range 1 answers last, from another version of the object

    with pytest.raises(fetch.FetchError, match="file changed on the artifact store"):
        _fetch(f"{url}?token=t1", blob, tmp_path, workers=4)

    # The held ranges (1 MB, 1 MB, 99 bytes) stopped at their first piece instead of finishing.
    assert blob.sent_slowly <= 2 * PIECE + 99


def test_cancel_stops_the_download(blob_server, tmp_path):
    blob, url = blob_server
    blob.slow_from = 0
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()

    with pytest.raises(fetch.Cancelled):  # one held range, cancelled after 0.2 s
        _fetch(f"{url}?token=t1", blob, tmp_path, piece_bytes=len(blob.data), cancel=cancel)

    assert blob.sent_slowly == PIECE  # the first piece only: the cancel woke the blocked read


def test_presigned_fetch_switch_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADE_PRESIGNED_FETCH", "false")
    assert ModelRegistryConfig(root=tmp_path).presigned_fetch is False
    monkeypatch.delenv("ADE_PRESIGNED_FETCH")
    assert ModelRegistryConfig(root=tmp_path).presigned_fetch is True
    monkeypatch.setenv("ADE_PRESIGNED_FETCH", "maybe")
    with pytest.raises(ConfigError, match="ADE_PRESIGNED_FETCH='maybe' is not a boolean; set it to true"):
        ModelRegistryConfig(root=tmp_path)


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A local port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        pass
