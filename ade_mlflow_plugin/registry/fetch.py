"""Download one file from a presigned URL in byte ranges, taking its sha256 in order as it lands.

MLflow's presigned multipart download (``HttpArtifactRepository._multipart_download``, used for
mlflow-artifacts:/ when the server stores artifacts in S3) reads each 100 MB range whole into memory
and writes it in one go, and the ranges finish in any order, so a checksum can only start once the
file is complete. Here every range streams to its offset in the file in 1 MB pieces, and the caller's
thread hashes the contiguous prefix while it grows: the digest is ready moments after the last byte.
A range that breaks midway resumes from the last byte written; an expired URL is renewed.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests
from mlflow.utils.request_utils import cloud_storage_http_request

from ade_mlflow_plugin.errors import AdeError

#: Bytes per ranged request; MLflow's MLFLOW_MULTIPART_DOWNLOAD_CHUNK_SIZE is passed in by the caller.
DEFAULT_PIECE_BYTES = 100 << 20
#: A range that breaks midway is resumed this many times before the download fails.
RESUMES = 3
_STREAM_BYTES = 1 << 20
#: The hasher is woken after this many new bytes (or a range's end): fewer wakes, less GIL traffic.
_WAKE_BYTES = 8 << 20
_HASH_READ = 16 << 20
_TIMEOUT_S = 60
_URL_EXPIRED = frozenset({401, 403})


class FetchError(AdeError):
    """A presigned download failed in a way retrying will not fix."""


@dataclass
class PresignedUrl:
    """Where the bytes are: a URL, the headers it needs and, when it expires, how to get a new one."""

    url: str
    headers: dict[str, str]
    renew: Callable[[], "PresignedUrl"] | None = None


@dataclass(frozen=True)
class _Range:
    index: int
    start: int
    end: int  # inclusive, as in an HTTP Range header

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class _Progress:
    """Bytes written per range; the hasher waits on it, a failure anywhere stops everyone."""

    def __init__(self, ranges: list[_Range]) -> None:
        self.ranges = ranges
        self.written = [0] * len(ranges)
        self.error: BaseException | None = None
        self._unreported = [0] * len(ranges)
        self._cond = threading.Condition()

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
            self._cond.notify_all()

    def wait_past(self, pos: int) -> int:
        """Block until the contiguous prefix ends beyond ``pos``; return where it ends."""
        with self._cond:
            while True:
                if self.error is not None:
                    raise self.error
                mark = self._contiguous_end()
                if mark > pos:
                    return mark
                self._cond.wait()

    def _contiguous_end(self) -> int:
        for rng, done in zip(self.ranges, self.written):
            if done < rng.length:
                return rng.start + done
        return self.ranges[-1].end + 1 if self.ranges else 0


def split_ranges(size: int, piece_bytes: int) -> list[_Range]:
    """Consecutive inclusive byte ranges of at most ``piece_bytes`` covering ``size`` bytes."""
    if piece_bytes <= 0:
        raise ValueError(f"piece_bytes must be positive, got {piece_bytes}")
    return [_Range(i, start, min(start + piece_bytes, size) - 1)
            for i, start in enumerate(range(0, size, piece_bytes))]


def fetch_presigned(source: PresignedUrl, dst: Path | str, size: int, *,
                    piece_bytes: int = DEFAULT_PIECE_BYTES, workers: int = 4) -> str:
    """Write the ``size`` bytes behind ``source`` to ``dst``; return their sha256 (hex).

    Ranges are fetched by up to ``workers`` threads, lowest offsets first, so the hashed prefix keeps
    growing. Raises FetchError (the file is left incomplete; the caller discards it) when the server
    answers with something other than the asked bytes or a range keeps breaking.
    """
    ranges = split_ranges(size, piece_bytes)
    progress = _Progress(ranges)
    wfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(wfd, size)
        rfd = os.open(dst, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ranges))),
                                    thread_name_prefix="ade-fetch") as pool:
                futures = [pool.submit(_fetch_range, source, wfd, rng, size, progress) for rng in ranges]
                try:
                    return _hash_prefix(rfd, size, progress)
                finally:
                    progress.fail(FetchError("download cancelled"))  # no-op after success: all done
                    for future in futures:
                        future.cancel()
        finally:
            os.close(rfd)
    finally:
        os.close(wfd)


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


def _fetch_range(source: PresignedUrl, fd: int, rng: _Range, size: int, progress: _Progress) -> None:
    breaks = 0
    try:
        while progress.written[rng.index] < rng.length:
            if progress.error is not None:
                return
            try:
                _stream_range(source, fd, rng, size, progress)
            except _UrlExpired as exc:
                if source.renew is None or breaks >= RESUMES:
                    raise FetchError(f"the artifact store refused the presigned URL (HTTP {exc}); check that "
                                     "the MLflow server's S3 credentials may read the bucket") from None
                fresh = source.renew()
                source.url, source.headers = fresh.url, fresh.headers
                breaks += 1
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, _ShortRead) as exc:
                breaks += 1
                if breaks > RESUMES:
                    raise FetchError(f"bytes {rng.start}-{rng.end} kept breaking off ({exc}); check the "
                                     "connection to the artifact store and run the sync again") from exc
                time.sleep(0.2 * breaks)
    except BaseException as exc:  # noqa: BLE001 - handed to the hasher, which raises it in the caller
        progress.fail(exc)


class _UrlExpired(Exception):
    pass


class _ShortRead(Exception):
    pass


def _stream_range(source: PresignedUrl, fd: int, rng: _Range, size: int, progress: _Progress) -> None:
    pos = rng.start + progress.written[rng.index]
    headers = {**source.headers, "Range": f"bytes={pos}-{rng.end}"}
    # MLflow's helper: a session that retries connection errors and 408/429/5xx with backoff.
    with cloud_storage_http_request("get", source.url, stream=True, headers=headers,
                                    timeout=_TIMEOUT_S) as resp:
        if resp.status_code in _URL_EXPIRED:
            raise _UrlExpired(resp.status_code)
        resp.raise_for_status()
        whole_file = pos == 0 and rng.end == size - 1
        if resp.status_code != 206 and not whole_file:
            raise FetchError(f"the artifact store answered a byte-range request with HTTP {resp.status_code} "
                             "instead of 206; it must support Range requests (S3 does)")
        want = rng.end - pos + 1
        length = resp.headers.get("Content-Length")
        if length is not None and int(length) != want:
            raise FetchError(f"the artifact store sent {length} bytes for a {want}-byte range; "
                             "the object changed during the download, run the sync again")
        for chunk in resp.iter_content(_STREAM_BYTES):
            if progress.error is not None:
                return
            if pos + len(chunk) > rng.end + 1:
                raise FetchError("the artifact store sent more bytes than asked; run the sync again")
            _write_all(fd, chunk, pos)
            pos += len(chunk)
            progress.advance(rng.index, len(chunk))
    if pos <= rng.end:
        raise _ShortRead(f"stream ended at byte {pos} of {rng.start}-{rng.end}")


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done
