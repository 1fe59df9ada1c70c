"""Download one file from a presigned URL in byte ranges, taking its sha256 in order as it lands.

MLflow's own presigned multipart download (used for mlflow-artifacts:/ when the server stores
artifacts in S3) reads each 100 MB range whole into memory and writes it in one go, and the ranges
finish in any order, so a checksum can only start once the file is complete. Here every range streams to its offset in the file in 1 MB pieces, and the caller's
thread hashes the contiguous prefix while it grows: the digest is ready moments after the last byte.

Robustness: a range that breaks midway resumes from its last written byte; an expired URL is renewed
once for all ranges; every answer must be the asked bytes of the same object (Content-Range, total size,
ETag); stored bytes are written as stored (no gzip decoding: MLflow uploads ``*.gz`` files with
Content-Encoding gzip). Error messages never contain the URL: presigned URLs carry credentials.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from ade_mlflow_plugin.errors import AdeError

#: Bytes per ranged request; sync passes MLflow's MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE.
DEFAULT_PIECE_BYTES = 100 << 20
#: A range that breaks midway is resumed this many times before the download fails.
RESUMES = 3
_STREAM_BYTES = 1 << 20
#: The hasher is woken after this many new bytes (or a range's end): fewer wakes, less GIL traffic.
_WAKE_BYTES = 8 << 20
_HASH_READ = 16 << 20
#: (connect, read) seconds: a stalled store fails a range in a minute, not after minutes of retries.
_TIMEOUT_S = (10, 60)
_URL_EXPIRED = frozenset({401, 403})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
#: Errors while the body streams (urllib3's own: the body is read through resp.raw), resumed.
_BREAKS = (urllib3.exceptions.HTTPError,)


class FetchError(AdeError):
    """A presigned download failed in a way retrying will not fix."""


class Cancelled(FetchError):
    """The caller gave up on the download (another file failed, or Ctrl-C)."""


@dataclass(frozen=True)
class PresignedUrl:
    """Where the bytes are: a URL and the headers it needs."""

    url: str
    headers: dict[str, str]


class _Source:
    """The current URL, shared by all ranges; renewed once per expiry, whichever range notices it."""

    def __init__(self, first: PresignedUrl, renew: Callable[[], PresignedUrl] | None) -> None:
        self.current = first
        self._renew = renew
        self._renewals = 0
        self._lock = threading.Lock()

    def renew(self, failed: PresignedUrl, status: int) -> None:
        with self._lock:
            if self.current is not failed:
                return  # another range already renewed it
            if self._renew is None or self._renewals >= RESUMES:
                raise FetchError(f"the artifact store refused the presigned URL (HTTP {status}); check that "
                                 "the MLflow server's S3 credentials may read the bucket") from None
            try:
                self.current = self._renew()
            except Exception as exc:  # noqa: BLE001 - one line, never the URL
                raise FetchError(f"could not renew the expired download URL ({type(exc).__name__}); "
                                 "check that the MLflow server is up and run the sync again") from None
            self._renewals += 1


@dataclass(frozen=True)
class _Range:
    index: int
    start: int
    end: int  # inclusive, as in an HTTP Range header

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class _Progress:
    """Bytes written per range; the hasher waits on it; a failure anywhere stops everyone."""

    def __init__(self, ranges: list[_Range], cancel: threading.Event | None) -> None:
        self.ranges = ranges
        self.written = [0] * len(ranges)
        self.error: BaseException | None = None
        self.etag: str | None = None
        self._cancel = cancel
        self._unreported = [0] * len(ranges)
        self._cond = threading.Condition()
        self._streams: set[urllib3.HTTPResponse] = set()

    def advance(self, index: int, nbytes: int) -> None:
        with self._cond:
            self.written[index] += nbytes
            self._unreported[index] += nbytes
            if self._unreported[index] >= _WAKE_BYTES or self.written[index] == self.ranges[index].length:
                self._unreported[index] = 0
                self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = error
                for stream in self._streams:
                    _abort(stream)
            self._cond.notify_all()

    @contextmanager
    def streaming(self, stream: urllib3.HTTPResponse) -> Iterator[None]:
        """While the body streams, a failure elsewhere aborts its read at once.

        A range blocks in a read of up to _STREAM_BYTES; on a slow store that is many seconds in which the
        range would go on downloading bytes nobody will use after another range has failed.
        """
        with self._cond:
            self._streams.add(stream)
            if self.error is not None:
                _abort(stream)
        try:
            yield
        finally:
            with self._cond:
                self._streams.discard(stream)

    def stopped(self) -> bool:
        if self._cancel is not None and self._cancel.is_set() and self.error is None:
            self.fail(Cancelled("download cancelled"))
        return self.error is not None

    def same_object(self, etag: str | None) -> None:
        """Every range must come from one version of the object (the first answer's ETag)."""
        if etag is None:
            return
        with self._cond:
            self.etag = self.etag or etag
            if etag != self.etag:
                raise FetchError("the file changed on the artifact store during the download; "
                                 "run the sync again")

    def wait_past(self, pos: int) -> int:
        """Block until the contiguous prefix ends beyond ``pos``; return where it ends."""
        with self._cond:
            while True:
                if self.stopped():
                    raise self.error  # type: ignore[misc]
                mark = self._contiguous_end()
                if mark > pos:
                    return mark
                # A timeout so a cancel event set from outside is noticed without a notify.
                self._cond.wait(0.5)

    def _contiguous_end(self) -> int:
        for rng, done in zip(self.ranges, self.written):
            if done < rng.length:
                return rng.start + done
        return self.ranges[-1].end + 1 if self.ranges else 0


def _abort(stream: urllib3.HTTPResponse) -> None:
    """Wake a read blocked on ``stream`` from another thread (urllib3's public shutdown, 2.3+)."""
    try:
        stream.shutdown()
    except (ValueError, RuntimeError, OSError):
        pass  # already released or closed: nothing is reading from it


def split_ranges(size: int, piece_bytes: int) -> list[_Range]:
    """Consecutive inclusive byte ranges of at most ``piece_bytes`` covering ``size`` bytes."""
    if piece_bytes <= 0:
        raise ValueError(f"piece_bytes must be positive, got {piece_bytes}")
    return [_Range(i, start, min(start + piece_bytes, size) - 1)
            for i, start in enumerate(range(0, size, piece_bytes))]


def fetch_presigned(first: PresignedUrl, dst: Path | str, size: int, *,
                    renew: Callable[[], PresignedUrl] | None = None, piece_bytes: int = DEFAULT_PIECE_BYTES,
                    workers: int = 4, cancel: threading.Event | None = None) -> str:
    """Write the ``size`` bytes behind ``first`` to ``dst``; return their sha256 (hex).

    Ranges are fetched by up to ``workers`` threads, lowest offsets first, so the hashed prefix keeps
    growing. ``renew`` gives a fresh URL when the store refuses one (expired). Setting ``cancel`` stops
    the download at once: a failure or a cancel aborts the reads in flight. Raises FetchError (the file is
    left incomplete; the caller discards it) when the store answers with anything but the asked bytes of
    one object.
    """
    ranges = split_ranges(size, piece_bytes)
    progress = _Progress(ranges, cancel)
    source = _Source(first, renew)
    wfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _reserve(wfd, size, dst)
        rfd = os.open(dst, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ranges))),
                                    thread_name_prefix="ade-fetch") as pool:
                try:
                    for rng in ranges:
                        pool.submit(_fetch_range, source, wfd, rng, size, progress)
                    return _hash_prefix(rfd, size, progress)
                finally:
                    # After success every range is done and this is a no-op; after a failure the
                    # running ranges stop at their next piece and the queued ones return at once.
                    progress.fail(Cancelled("download cancelled"))
        finally:
            os.close(rfd)
    finally:
        os.close(wfd)


def _reserve(fd: int, size: int, dst: Path | str) -> None:
    """Allocate the whole file now, so a full disk fails here with a clear line, not midway."""
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            os.ftruncate(fd, size)  # a filesystem without fallocate: sparse, as MLflow does
            return
        raise FetchError(f"cannot reserve {size} bytes for {Path(dst).name} ({exc.strerror}); free space "
                         f"under {Path(dst).parent} or pick another --root") from None


def _hash_prefix(fd: int, size: int, progress: _Progress) -> str:
    digest, pos = hashlib.sha256(), 0
    buf = bytearray(_HASH_READ)
    view = memoryview(buf)
    while pos < size:
        mark = progress.wait_past(pos)
        while pos < mark:
            got = os.preadv(fd, [view[:min(_HASH_READ, mark - pos)]], pos)
            if got <= 0:
                raise FetchError(f"could not read back bytes at offset {pos}; check the disk under the ADE root")
            digest.update(view[:got])
            pos += got
    return digest.hexdigest()


def _fetch_range(source: _Source, fd: int, rng: _Range, size: int, progress: _Progress) -> None:
    breaks = 0
    try:
        while progress.written[rng.index] < rng.length and not progress.stopped():
            url = source.current
            try:
                _stream_range(url, fd, rng, size, progress)
            except _UrlExpired as exc:
                source.renew(url, exc.status)
            except (*_BREAKS, _ShortRead) as exc:
                if progress.stopped():
                    return  # the break is our own abort after a failure elsewhere
                breaks += 1
                if breaks > RESUMES:
                    raise FetchError(f"bytes {rng.start}-{rng.end} kept breaking off ({type(exc).__name__}); "
                                     "check the connection to the artifact store and run the sync again"
                                     ) from None
                time.sleep(0.2 * breaks)
    except BaseException as exc:  # noqa: BLE001 - handed to the hasher, which raises it in the caller
        progress.fail(exc)


class _UrlExpired(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _ShortRead(Exception):
    pass


def _stream_range(url: PresignedUrl, fd: int, rng: _Range, size: int, progress: _Progress) -> None:
    pos = rng.start + progress.written[rng.index]
    headers = {**url.headers, "Range": f"bytes={pos}-{rng.end}"}
    try:
        resp = _session().get(url.url, headers=headers, stream=True, timeout=_TIMEOUT_S)
    except requests.RequestException as exc:  # urllib3 has retried already; never show the URL
        raise FetchError(f"could not reach the artifact store ({type(exc).__name__}); check the network "
                         "and the store, then run the sync again") from None
    with resp:
        _check_answer(resp, pos, rng.end, size)
        progress.same_object(resp.headers.get("ETag"))
        with progress.streaming(resp.raw):
            # Stored bytes as stored: urllib3 would otherwise gunzip a Content-Encoding: gzip object.
            for chunk in resp.raw.stream(_STREAM_BYTES, decode_content=False):
                if progress.stopped():
                    return
                if pos + len(chunk) > rng.end + 1:
                    raise FetchError("the artifact store sent more bytes than asked; run the sync again")
                _write_all(fd, chunk, pos)
                pos += len(chunk)
                progress.advance(rng.index, len(chunk))
    if pos <= rng.end:
        raise _ShortRead()


def _check_answer(resp: requests.Response, pos: int, end: int, size: int) -> None:
    """The response holds exactly bytes pos..end of a ``size``-byte object, or this raises."""
    status = resp.status_code
    if status in _URL_EXPIRED:
        raise _UrlExpired(status)
    if status in (404, 416):
        raise FetchError(f"the file is gone or changed on the artifact store (HTTP {status}); "
                         "run the sync again")
    if status >= 400:
        raise FetchError(f"the artifact store answered HTTP {status}; check the store and run the sync again")
    if status == 200 and pos == 0 and end == size - 1:
        if int(resp.headers.get("Content-Length", size)) != size:
            raise FetchError("the file's size on the artifact store differs from the listing; run the sync again")
        return
    if status != 206:
        raise FetchError(f"the artifact store answered a byte-range request with HTTP {status} instead of "
                         "206; it must support Range requests (S3 does)")
    match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
    length = int(resp.headers.get("Content-Length", end - pos + 1))
    if not match or (int(match[1]), int(match[2]), int(match[3]), length) != (pos, end, size, end - pos + 1):
        raise FetchError("the file changed on the artifact store during the download (Content-Range "
                         f"{resp.headers.get('Content-Range')!r}, asked bytes {pos}-{end} of {size}); "
                         "run the sync again")


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


_sessions: dict[int, requests.Session] = {}
_sessions_lock = threading.Lock()


def _session() -> requests.Session:
    """One session per process, its pool wide enough for parallel files x ranges.

    urllib3 retries connection errors and 408/429/5xx answers a few times with backoff before the
    answer is read; breaks while reading are resumed by _fetch_range.
    """
    pid = os.getpid()
    with _sessions_lock:
        if pid not in _sessions:
            retry = Retry(total=3, backoff_factor=0.5, status_forcelist=(408, 429, 500, 502, 503, 504),
                          allowed_methods=frozenset({"GET"}), raise_on_status=False)
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_maxsize=64, max_retries=retry))
            session.mount("https://", HTTPAdapter(pool_maxsize=64, max_retries=retry))
            _sessions[pid] = session
        return _sessions[pid]
