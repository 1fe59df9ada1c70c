"""A small HTTP/1.1 server for the webhook receiver: h11 parses, asyncio holds the connections.

Why not http.server: it trusts Content-Length as given (a missing, negative or odd one made the old
receiver read the whole body, or fail with no answer) and holds a thread per slow client. Why not
uvicorn (which MLflow brings): it has no deadline for a request's headers (its keep-alive timer starts
only after a first response), so a client that trickles its headers holds a connection forever. h11 is
the HTTP/1.1 parser under uvicorn and httpcore: it does the framing (Content-Length, chunked, header
limits) and refuses what is malformed; this module adds what a server on top must decide:

- one request per connection (``Connection: close``): nothing to pipeline or smuggle;
- a deadline for the request line and headers, and one for the body, each answered with 408;
- the body limit before any body byte is read when the length is declared (413), and while reading
  when it is chunked (413 once the limit is passed, the rest never read);
- POST needs a declared length (411) and a JSON content type (415); Content-Length together with
  Transfer-Encoding is refused (400), as is any framing h11 refuses (400, or 431 for large headers);
- at most ``max_connections`` open at once; one more is answered 503 at once and closed;
- every refusal is an HTTP answer with a JSON body.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11

_log = logging.getLogger(__name__)

#: (headers by lower-cased name, raw body) -> (HTTP status, JSON answer). Called on the event loop:
#: it must not block (the receiver verifies and enqueues; its worker thread does the rest).
Handler = Callable[[Mapping[str, str], bytes], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Limits:
    """What one client may cost the server."""

    # MLflow's registry webhook payloads are a few KB; 256 connections x 128 KiB bounds what bodies in
    # flight may hold at 32 MiB, while 200 slow clients still leave room for a real delivery.
    max_body_bytes: int = 128 << 10
    max_header_bytes: int = 16 << 10
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections: int = 256
    read_bytes: int = 64 << 10  # one socket read
    # After a refusal the client may still be sending: what it sends is read and dropped for this long
    # (up to max_body_bytes), so closing does not reset the connection before it has read the answer.
    linger_s: float = 1.0


class Refused(Exception):
    """A request answered without reaching the handler."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Headers(dict):
    """Request headers by lower-cased name (repeated ones joined with ", "), read case-insensitively."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


def _headers(request: h11.Request) -> Headers:
    found = Headers()
    for name, value in request.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


class HttpServer:
    """Serves ``handler`` for POST and a health answer for GET/HEAD, within ``limits``.

    The listening socket is bound at construction (so a busy port fails there, as OSError); ``start()``
    serves from a background thread, ``serve_forever()`` from the calling one.
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0,
                 limits: Limits = Limits()) -> None:
        self.handler, self.limits = handler, limits
        self.socket = socket.create_server((host, port), backlog=max(128, limits.max_connections))
        self.active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any] | None] = set()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    def start(self) -> "HttpServer":
        self._thread = threading.Thread(target=self.serve_forever, name="ade-webhook-http", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        return self

    def serve_forever(self) -> None:
        asyncio.run(self._serve())

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass  # the loop ended already
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()

    async def _serve(self) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._connection, sock=self.socket, limit=self.limits.read_bytes)
        self._ready.set()
        async with server:
            await self._stopped.wait()
            # Open connections end with the server (a slow client would otherwise hold the shutdown).
            for task in list(self._tasks):
                if task is not None:
                    task.cancel()

    # -- one connection ---------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.active += 1
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        try:
            status, answer = await self._answer_for(conn, reader, writer)
            if status:
                await self._respond(conn, writer, status, answer)
                await self._linger(reader, writer)
        except (OSError, asyncio.TimeoutError, h11.LocalProtocolError):
            pass  # the client left, or the exchange cannot be answered any more
        finally:
            self.active -= 1
            self._tasks.discard(task)
            writer.close()

    async def _answer_for(self, conn: h11.Connection, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any] | None]:
        """(status, JSON answer) for one connection's request; status 0 when the client left unasked."""
        try:
            if self.active > self.limits.max_connections:
                raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; retry later")
            return await self._exchange(conn, reader, writer)
        except Refused as exc:
            return exc.status, {"error": exc.reason}
        except h11.RemoteProtocolError as exc:
            hint = exc.error_status_hint
            return (hint if 400 <= hint < 500 else HTTPStatus.BAD_REQUEST), {"error": str(exc)}
        except (ConnectionError, asyncio.IncompleteReadError):
            return 0, None  # the client left: nobody to answer
        except Exception as exc:  # a bug must cost one answer, not the server
            _log.exception("webhook request failed")
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__}

    async def _exchange(self, conn: h11.Connection, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> tuple[int, dict[str, Any] | None]:
        request = await self._within(self._next_event(conn, reader), self.limits.header_timeout_s, "headers")
        if not isinstance(request, h11.Request):
            raise Refused(HTTPStatus.BAD_REQUEST, "no request")
        method = request.method.decode("latin-1")
        if method in ("GET", "HEAD"):  # a health check; a HEAD answer has no body
            return HTTPStatus.OK, ({"status": "ok"} if method == "GET" else None)
        if method != "POST":
            raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, f"method {method} not allowed; webhooks are POSTed")
        headers = _headers(request)
        self._check_framing(headers)
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = await self._within(self._body(conn, reader), self.limits.body_timeout_s, "body")
        return self.handler(headers, body)

    def _check_framing(self, headers: Headers) -> None:
        """Refusals decided from the headers alone, before any body byte is read."""
        length, chunked = headers.get("content-length"), headers.get("transfer-encoding")
        if length is not None and chunked is not None:
            raise Refused(HTTPStatus.BAD_REQUEST, "both Content-Length and Transfer-Encoding; send one")
        if length is None and chunked is None:
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "a POST needs Content-Length or chunked Transfer-Encoding")
        if length is not None and int(length) > self.limits.max_body_bytes:  # h11 checked it is digits
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"body of {length} bytes; at most {self.limits.max_body_bytes}")
        content_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                          f"content type {content_type or 'missing'}; webhooks are application/json")

    async def _within(self, step: Any, timeout_s: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(step, timeout_s)
        except asyncio.TimeoutError:
            raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"request {what} not received within {timeout_s:g} s") from None

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        # Headers are read in pieces no larger than their limit: h11 measures only an incomplete event,
        # so a too-large header block that arrived whole in one read would pass.
        size = self.limits.read_bytes if conn.their_state is h11.SEND_BODY else self.limits.max_header_bytes
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await reader.read(size)
            if not data and conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                raise ConnectionResetError("closed before sending anything")
            conn.receive_data(data)  # b"" tells h11 the peer closed: it raises on a cut-off request

    async def _body(self, conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
        parts, size = [], 0
        while True:
            event = await self._next_event(conn, reader)
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.max_body_bytes:
                    raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"body over {self.limits.max_body_bytes} bytes")
                parts.append(bytes(event.data))

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then drop what the client still sends (bounded in bytes and time)."""
        if writer.can_write_eof():
            writer.write_eof()
        left = self.limits.max_body_bytes

        async def drop() -> None:
            nonlocal left
            while left > 0 and (data := await reader.read(min(left, self.limits.read_bytes))):
                left -= len(data)

        await asyncio.wait_for(drop(), self.limits.linger_s)

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                       answer: dict[str, Any] | None) -> None:
        data = b"" if answer is None else json.dumps(answer).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                   ("Connection", "close")]
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # a response went out already
        reason = HTTPStatus(status).phrase.encode()
        writer.write(conn.send(h11.Response(status_code=int(status), headers=headers, reason=reason)))
        if data:
            writer.write(conn.send(h11.Data(data=data)))
        writer.write(conn.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), self.limits.body_timeout_s)
