"""HTTP(S) GETs the remote layer makes itself, over fsspec's aiohttp session and event loop.

- ``ranged_get``: bytes ``[start, end)`` with a ``Range`` header. A ``206`` must carry a
  ``Content-Range`` that starts at ``start``, ends at or before ``end - 1`` and matches the body's
  length; anything else is a ``ContentRangeError`` naming the server's answer (an ``OSError``,
  so the retry policy retries it like other server faults). A ``200`` means the server ignores
  ``Range``: the response is handed back as an ``HttpStream`` positioned at byte 0.
- ``HttpStream``: one GET of the whole file read front to back; ``read(start, end)`` skips
  forward to ``start`` (the skipped bytes are downloaded and dropped), never backward.

Not thread-safe: one thread at a time per ``HttpStream`` (docs/architecture.md, "Remote reads").
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import aiohttp
from fsspec.asyn import sync

from loader.remote.redact import redact

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ContentRangeError", "HttpStream", "is_http", "open_stream", "ranged_get"]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_SKIP_BYTES = 1 << 20


class ContentRangeError(OSError):
    """A ``206`` whose ``Content-Range`` is not the range asked for (retried)."""


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class HttpStream:
    """The body of one whole-file GET, read forward (see the module docstring). ``pos`` is the
    next byte the body yields; ``skipped`` counts bytes downloaded and dropped to seek."""

    def __init__(self, fs: Any, response: aiohttp.ClientResponse) -> None:
        self._fs = fs
        self._response: aiohttp.ClientResponse | None = response
        self.pos = 0
        self.skipped = 0

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; fewer only where the body ends. ``start >= pos``."""
        if start < self.pos:
            raise ValueError(f"expected start >= {self.pos} on a forward stream, got {start}")
        while self.pos < start:
            got = self._read(min(start - self.pos, _SKIP_BYTES))
            if not got:
                return b""
            self.skipped += len(got)
        parts = []
        while self.pos < end:
            got = self._read(end - self.pos)
            if not got:
                break
            parts.append(got)
        return b"".join(parts)

    def _read(self, n: int) -> bytes:
        response = self._response
        if response is None:
            return b""
        got: bytes = sync(self._fs.loop, response.content.read, n)
        self.pos += len(got)
        return got

    def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            response.close()


def _request_kwargs(fs: Any, headers: Mapping[str, str]) -> dict[str, Any]:
    kwargs = dict(fs.kwargs)
    merged = dict(kwargs.pop("headers", None) or {})
    merged.update(headers)
    kwargs["headers"] = merged
    return kwargs


async def _get(
    fs: Any, url: str, headers: Mapping[str, str], timeout: aiohttp.ClientTimeout | None
) -> aiohttp.ClientResponse:
    session = await fs.set_session()
    kwargs = _request_kwargs(fs, headers)
    if timeout is not None:
        kwargs["timeout"] = timeout
    response = await session.get(fs.encode_url(url), **kwargs)
    if response.status == 404:
        response.release()
        raise FileNotFoundError(redact(url))
    if response.status >= 400:
        response.release()
        response.raise_for_status()
    return response


async def _ranged(fs: Any, url: str, start: int, end: int) -> bytes | aiohttp.ClientResponse:
    response = await _get(fs, url, {"Range": f"bytes={start}-{end - 1}"}, None)
    if response.status == 200:
        return response
    try:
        answer = response.headers.get("Content-Range")
        match = _CONTENT_RANGE.match(answer or "")
        if response.status != 206 or match is None:
            raise ContentRangeError(
                f"expected 206 with Content-Range 'bytes {start}-...', got status "
                f"{response.status} with Content-Range {answer!r}"
            )
        first, last = int(match[1]), int(match[2])
        if first != start or last < first or last > end - 1:
            raise ContentRangeError(
                f"asked for bytes {start}-{end - 1}, the server answered 206 with "
                f"Content-Range {answer!r}"
            )
        body = await response.read()
        if len(body) != last - first + 1:
            raise ContentRangeError(
                f"Content-Range {answer!r} promises {last - first + 1} bytes, the body has "
                f"{len(body)}"
            )
        return body
    finally:
        response.release()


def ranged_get(fs: Any, url: str, start: int, end: int) -> bytes | HttpStream:
    """Bytes ``[start, end)`` of ``url`` (a prefix where the server answers with less), or an
    ``HttpStream`` at byte 0 when the server ignores ``Range``. ``FileNotFoundError`` for 404;
    aiohttp's ``ClientResponseError`` for other statuses >= 400."""
    got = sync(fs.loop, _ranged, fs, url, start, end)
    if isinstance(got, bytes):
        return got
    return HttpStream(fs, got)


def open_stream(fs: Any, url: str, timeout_s: float) -> HttpStream:
    """A GET of the whole of ``url`` read as a forward stream. Each read of the body waits at
    most ``timeout_s``; the whole transfer has no limit (a big shard takes its time)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
    response = sync(fs.loop, _get, fs, url, {}, timeout)
    return HttpStream(fs, response)
