"""Ranged reads of one remote (fsspec) file with retries, and a forward-only chunked stream.

Every request goes through the file's ``RetryPolicy`` (``loader.remote.retry``): transient failures
are retried with backoff and jitter within its budget, a body cut short is resumed by asking
only for the missing bytes, and a permanent failure or a spent budget raises
``RemoteReadError`` naming the URL, the byte range and the last cause. aiohttp's own errors
never escape. HTTP(S) requests carry the policy's ``timeout_s`` (docs/architecture.md,
section "Remote reads").
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import fsspec

from loader._errors import MissingShardError, ShardReadError
from loader.remote._http import HttpStream, is_http, open_stream, ranged_get
from loader.remote.errors import RemoteReadError
from loader.remote.redact import redact
from loader.remote.retry import RetryPolicy, ShortReadError, is_transient

if TYPE_CHECKING:
    from loader.remote.netstats import NetCounters

__all__ = [
    "CHUNK_BYTES",
    "ChunkedStream",
    "RangeNotSupportedError",
    "RemoteFile",
    "open_fs",
    "pinned",
    "validator_of",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
_ETAG_KEYS = ("ETag", "etag")
_MTIME_KEYS = ("Last-Modified", "LastModified", "last_modified", "mtime", "updated")


def validator_of(info: Mapping[str, Any]) -> str | None:
    """What says a remote file is unchanged, from an fsspec ``info()``: its ETag and its
    modification time with its size, or ``None`` when the backend gives neither."""
    etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k)), None)
    mtime = next((str(info[k]) for k in _MTIME_KEYS if info.get(k)), None)
    if etag is None and mtime is None:
        return None
    return f"etag={etag};modified={mtime};size={info.get('size')}"


@functools.lru_cache(maxsize=64)
def _say_no_range(origin: str) -> None:
    """Logged once per server and process."""
    log.warning(
        "%s ignores HTTP Range requests: reading its shards front to back, one GET per shard "
        "(seeking is off: a worker's part of a shard costs the bytes before it); serve them "
        "from a server with Range support, or set cache_dir, to read only what is needed",
        origin,
    )


class RangeNotSupportedError(RemoteReadError):
    """A non-HTTP backend answered a ranged request with more bytes than asked for (an HTTP
    server that ignores Range is read front to back instead)."""


def open_fs(url: str, retry: RetryPolicy) -> tuple[Any, str]:
    """(fsspec filesystem, path) for ``url``; HTTP(S) ones time out after ``retry.timeout_s``
    per request (connect, and each read of the body)."""
    if url.startswith(("http://", "https://")):
        import aiohttp

        timeout = aiohttp.ClientTimeout(
            total=retry.timeout_s, sock_connect=retry.timeout_s, sock_read=retry.timeout_s
        )
        return fsspec.core.url_to_fs(url, client_kwargs={"timeout": timeout})
    return fsspec.core.url_to_fs(url)


class RemoteFile:
    """One fsspec URL. Every request (``size``, ``fetch``, ``read_all``) first sleeps
    ``latency_s``, to simulate a slow network file system, and is retried by ``retry``.
    ``requests`` and ``retries`` count this object's attempts; ``counters`` (shared with the
    other processes of a dataset) gets the same counts plus the bytes fetched.

    Not thread-safe: one thread at a time (a read-ahead thread takes turns with its owner).
    """

    def __init__(
        self,
        url: str,
        *,
        latency_s: float = 0.0,
        retry: RetryPolicy | None = None,
        counters: NetCounters | None = None,
    ) -> None:
        self.url = url
        self._latency_s = latency_s
        self._retry = retry or RetryPolicy()
        self._counters = counters
        self._rng = random.Random()
        self._fs: Any
        self._fs, self._path = open_fs(url, self._retry)
        self._size: int | None = None
        self._http = is_http(url)
        self._stream: HttpStream | None = None
        self.seekable = True
        self.validator: str | None = None
        self.requests = 0
        self.retries = 0

    def _wait(self) -> None:
        self.requests += 1
        if self._counters is not None:
            self._counters.add("requests")
        if self._latency_s > 0:
            time.sleep(self._latency_s)

    def _on_retry(self, exc: BaseException) -> None:
        self.retries += 1
        if self._counters is not None:
            self._counters.add("retries")

    def _got(self, n: int) -> None:
        if self._counters is not None and n:
            self._counters.add("bytes_fetched", n)

    def size(self) -> int | None:
        """File size in bytes (``None`` when the backend cannot tell); ``FileNotFoundError``
        when the file does not exist. Also sets ``validator`` (``validator_of``): one request."""

        def ask() -> Mapping[str, Any]:
            self._wait()
            try:
                info: Mapping[str, Any] = self._fs.info(self._path)
            except FileNotFoundError as exc:
                # fsspec's HTTP info() reports any failure of its last try as "not found"
                cause = exc.__cause__
                if cause is not None and is_transient(cause):
                    raise cause from None
                raise
            return info

        info = self._retry.call(
            ask, url=self.url, byte_range=None, rng=self._rng, on_retry=self._on_retry
        )
        size = info.get("size")
        self._size = None if size is None else int(size)
        self.validator = validator_of(info)
        return self._size

    def exists(self) -> bool:
        """Whether the file exists (a transient failure is retried, not taken for "no")."""
        try:
            self.size()
        except FileNotFoundError:
            return False
        return True

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``; fewer only where the file ends before ``end``. A response
        cut short (when the size is known) is resumed from where it stopped."""
        if end <= start:
            return b""
        parts: list[bytes] = []
        have = start

        def ask() -> None:
            nonlocal have
            self._wait()
            data = self._read(have, end)
            if len(data) > end - have:
                raise RangeNotSupportedError(
                    f"{redact(self.url)}: asked for bytes {have}-{end - 1}, got {len(data)} "
                    "bytes: the backend ignores ranged reads, which reading shards needs; "
                    "set cache_dir to copy whole shards first",
                    url=self.url,
                    byte_range=(start, end - 1),
                    cause="Range ignored",
                )
            self._got(len(data))
            parts.append(bytes(data))
            have += len(data)
            stop = end if self._size is None else min(end, self._size)
            if have < stop and (data or self._size is not None):
                raise ShortReadError(
                    f"body cut short at byte {have}, expected bytes up to {stop - 1}"
                )

        self._retry.call(
            ask, url=self.url, byte_range=(start, end - 1), rng=self._rng, on_retry=self._on_retry
        )
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read(self, start: int, end: int) -> bytes:
        """One attempt at bytes ``[start, end)``: a ranged request, or (over HTTP, once the
        server is seen to ignore Range) the next part of one forward GET of the whole file."""
        if not self._http:
            return bytes(self._fs.cat_file(self._path, start=start, end=end))
        if self.seekable:
            got = ranged_get(self._fs, self.url, start, end)
            if isinstance(got, bytes):
                return got
            self.seekable = False
            _say_no_range(redact("/".join(self.url.split("/", 3)[:3])))
            self._stream = got
        if self._stream is None or self._stream.pos > start:
            self.close()
            self._stream = open_stream(self._fs, self.url, self._retry.timeout_s)
        stream = self._stream
        skipped = stream.skipped
        try:
            data = stream.read(start, end)
        except BaseException:
            self.close()
            raise
        self._got(stream.skipped - skipped)
        if self._size is not None and stream.pos >= self._size:
            self.close()
        return data

    def close(self) -> None:
        """Drop the open forward GET, if any (a later read opens another)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def read_all(self, expected_size: int | None = None) -> bytes:
        """The whole file in one request (retried). With ``expected_size``, a body of another
        length is retried as cut short."""

        def ask() -> bytes:
            self._wait()
            data = bytes(self._fs.cat_file(self._path))
            self._got(len(data))
            if expected_size is not None and len(data) != expected_size:
                raise ShortReadError(f"got {len(data)} bytes, expected {expected_size}")
            return data

        return self._retry.call(
            ask, url=self.url, byte_range=None, rng=self._rng, on_retry=self._on_retry
        )


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


def checked_size(remote: RemoteFile, expected: int | None, validator: str | None = None) -> int:
    """``remote``'s size, checked against ``expected`` (the manifest's) when both are known,
    and its validator against ``validator`` (the one seen when the dataset was resolved; see
    ``changed``). ``MissingShardError`` when it does not exist; ``RemoteReadError`` (not
    retried) when the sizes or validators differ; ``ShardReadError`` when neither side knows
    the size."""
    url = remote.url
    try:
        size = remote.size()
    except FileNotFoundError:
        raise MissingShardError(f"shard {url} not found") from None
    except ShardReadError:
        raise
    except (OSError, ValueError) as exc:
        raise ShardReadError(f"cannot open shard {url}: {exc}") from exc
    if size is not None and expected is not None and size != expected:
        raise RemoteReadError(
            f"shard {url} has {size} bytes, its manifest says {expected}: the file "
            "changed or the manifest is stale; rebuild the manifest (not retried)",
            url=url,
            cause="size mismatch",
        )
    if changed(remote.validator, validator):
        raise RemoteReadError(
            f"shard {url} changed on the server since the dataset was resolved (expected "
            f"{validator}, got {remote.validator}): create the dataset again to read the new "
            "shards (not retried)",
            url=url,
            cause="validator mismatch",
        )
    if size is None:
        size = expected
    if size is None:
        raise ShardReadError(f"cannot tell the size of shard {url}; the server hides it")
    return size


def changed(now: str | None, then: str | None) -> bool:
    """Whether a file whose validator was ``then`` when its dataset was resolved has changed:
    only a real validator (``validator_of``) can say so; ``None`` or a run token cannot."""
    return pinned(then) and now is not None and now != then


def pinned(validator: str | None) -> bool:
    """Whether ``validator`` came from the server (``validator_of``), not a run token: only
    such a validator can tell that a file changed."""
    return validator is not None and not validator.startswith("run:")
