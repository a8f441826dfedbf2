"""Ranged reads of one remote (fsspec) file, and a forward-only chunked stream over it."""

from __future__ import annotations

import time
from typing import Any

import fsspec

__all__ = ["CHUNK_BYTES", "ChunkedStream", "RangeNotSupportedError", "RemoteFile"]

CHUNK_BYTES = 8 << 20


class RangeNotSupportedError(ValueError):
    """The server answered a ranged request with more bytes than asked for."""


class RemoteFile:
    """One fsspec URL. Every request (``size``, ``fetch``, ``read_all``) first sleeps
    ``latency_s``, to simulate a slow network file system.

    Not thread-safe; one instance per reading process.
    """

    def __init__(self, url: str, *, latency_s: float = 0.0) -> None:
        self.url = url
        self._latency_s = latency_s
        self._fs: Any
        self._fs, self._path = fsspec.core.url_to_fs(url)
        self.requests = 0

    def _wait(self) -> None:
        self.requests += 1
        if self._latency_s > 0:
            time.sleep(self._latency_s)

    def size(self) -> int | None:
        """File size in bytes (``None`` when the backend cannot tell); ``FileNotFoundError``
        when the file does not exist."""
        self._wait()
        size = self._fs.size(self._path)
        return None if size is None else int(size)

    def exists(self) -> bool:
        self._wait()
        return bool(self._fs.exists(self._path))

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` in one request; fewer only where the file ends before ``end``."""
        if end <= start:
            return b""
        self._wait()
        data = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) > end - start:
            raise RangeNotSupportedError(
                f"{self.url}: asked for bytes {start}-{end - 1}, got {len(data)} bytes: the server "
                "ignores HTTP Range requests, which reading shards needs"
            )
        return bytes(data)

    def read_all(self) -> bytes:
        """The whole file in one request."""
        self._wait()
        return bytes(self._fs.cat_file(self._path))


class ChunkedStream:
    """A forward-only binary stream over ``RemoteFile`` that fetches ``chunk_bytes`` per request.

    Seeking forward past the buffered data skips the bytes in between without fetching them.
    Supports what ``shards.tarscan.iter_members`` needs: ``read``, ``seek``, ``tell``,
    ``seekable``.
    """

    def __init__(self, remote: RemoteFile, size: int, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._remote = remote
        self._size = size
        self._chunk = max(chunk_bytes, 1)
        self._buf = b""
        self._buf_start = 0
        self._pos = 0

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._pos = self._size + offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self._size if n < 0 else min(self._pos + n, self._size)
        if end <= self._pos:
            return b""
        buf_end = self._buf_start + len(self._buf)
        if not (self._buf_start <= self._pos and end <= buf_end):
            overlaps = self._buf_start <= self._pos < buf_end
            keep = self._buf[self._pos - self._buf_start :] if overlaps else b""
            fetch_from = buf_end if overlaps else self._pos
            fetch_to = min(self._size, max(end, fetch_from + self._chunk))
            self._buf = keep + self._remote.fetch(fetch_from, fetch_to)
            self._buf_start = self._pos
        lo = self._pos - self._buf_start
        data = self._buf[lo : lo + end - self._pos]
        self._pos += len(data)
        return data
