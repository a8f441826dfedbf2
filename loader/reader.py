"""Read the samples of one shard, by position range, as raw image bytes plus label and id.

Local shards (plain paths, ``file://``) are memory-mapped: with the sidecar index a sample's
image is a slice of the map, with no tar header parsed and no bytes copied. Remote shards (any
other fsspec URL) are read with ranged requests: the sidecar first, then the byte range of the
requested samples in chunks of ``chunk_bytes``, so memory stays bounded and nothing is fetched
byte by byte. A shard without a sidecar has its headers scanned (locally over the map, remotely
as a chunked stream); the scan gives the same in-memory index a sidecar would.

Remote requests are retried within ``RemoteOptions.retry`` (``loader.retry``); with
``RemoteOptions.cache`` a remote shard and its sidecar are first copied whole into the
node-local cache (``loader.cache``) and then memory-mapped like a local file. With an
``executor`` the reader reads ahead: ``prefetch`` opens the shard in the background, and a
ranged read fetches its next chunk while the current one is consumed (one chunk ahead).

A ``ShardReader`` is not thread-safe: use one per thread or worker process. Its read-ahead
work runs on the executor's threads, and every public method first waits for it.
"""

from __future__ import annotations

import logging
import mmap
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from loader._checks import check_int, check_non_negative
from loader._errors import MissingShardError, RemoteReadError, ShardReadError
from loader._location import is_local, local_path
from loader._remote import CHUNK_BYTES, RemoteFile
from loader._scanio import StreamScan, scan_mapped
from loader.retry import RetryPolicy
from loader.sources import ShardSource
from shards.format import BLOCK, check_index_rows, read_index
from shards.tarscan import ShardFormatError, header_name

if TYPE_CHECKING:
    from loader._netstats import NetCounters
    from loader.cache import CachedFile, ShardCache

__all__ = [
    "MissingShardError",
    "RawSample",
    "RemoteOptions",
    "RemoteReadError",
    "ShardReadError",
    "ShardReader",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteOptions:
    """How a reader reaches remote shards: the retry policy of every request, the shared
    counters they are counted in, the node-local ``cache`` (``None``: ranged reads straight
    from the source), and whether the next chunk of a ranged read is fetched in the
    background while the current one is consumed (``readahead``)."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    counters: NetCounters | None = None
    cache: ShardCache | None = None
    readahead: bool = True

    @classmethod
    def build(
        cls,
        *,
        retry: RetryPolicy | None,
        cache_dir: str | os.PathLike[str] | None,
        cache_limit: int | None,
        counters: NetCounters | None,
        readahead: bool = True,
    ) -> RemoteOptions:
        """The options ``ShardDataset``'s arguments describe (``ValueError`` for bad ones)."""
        from loader.cache import ShardCache

        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValueError(f"expected a RetryPolicy or None, got retry={retry!r}")
        if cache_limit is not None and cache_dir is None:
            raise ValueError(f"expected cache_dir with cache_limit, got cache_limit={cache_limit}")
        cache = None
        if cache_dir is not None:
            cache = ShardCache(os.fspath(cache_dir), limit=cache_limit)
        return cls(retry or RetryPolicy(), counters, cache, readahead)


class RawSample(NamedTuple):
    """One sample as stored.

    ``data`` is the image payload. From a local shard it is a read-only ``memoryview`` into the
    reader's memory map: it stays valid as long as it is referenced, even after ``close()``
    (the map is unmapped when the last view goes), but holding views keeps the map alive, so
    copy with ``bytes(data)`` what must outlive the batch. From a remote shard it is a view into
    the fetched chunk (which it keeps alive) or ``bytes``. It is empty when the sample has no
    image member. ``key`` is ``''`` when the sidecar index was used (no header was read).
    ``offset`` is the image payload's first byte in the shard (the sample's first header byte
    when it has no image), for error messages. ``label`` is ``-1`` without a valid ``.cls``.
    """

    gid: int
    position: int
    key: str
    label: int
    data: memoryview | bytes
    offset: int


class ShardReader:
    """Opens one shard and yields the samples of a position range.

    The shard is opened lazily, on the first ``index()`` or ``read()``. ``latency_s`` simulates
    a slow network file system: every open and every ranged request sleeps that long first.
    Errors are ``ShardReadError`` (``MissingShardError`` for a missing file) naming the URL:
    truncated shard (index past the end of the file, or a scan that meets the end mid-member),
    sidecar or scan sample count different from ``shard.nsamples``, or a corrupt tar header.
    The shard's sha256 is not checked here.
    """

    def __init__(
        self,
        shard: ShardSource,
        *,
        latency_s: float = 0.0,
        chunk_bytes: int = CHUNK_BYTES,
        remote: RemoteOptions | None = None,
        executor: Executor | None = None,
    ) -> None:
        check_non_negative("latency_s", latency_s)
        check_int("chunk_bytes", chunk_bytes, 1)
        self.shard = shard
        self._options = remote or RemoteOptions()
        self._latency_s = latency_s
        self._chunk = chunk_bytes
        self._local = is_local(shard.url)
        self._map: mmap.mmap | None = None
        self._remote: RemoteFile | None = None
        self._cached: CachedFile | None = None
        self._executor = executor if self._options.readahead else None
        self._pending: Future[None] | None = None
        self._head: tuple[int, bytes] | None = None
        self._size = 0
        self._index: np.ndarray | None = None
        self._keys: list[str] | None = None
        self._names: list[str] | None = None
        self._columns: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def index(self) -> np.ndarray:
        """The ``INDEX_DTYPE`` rows of the shard (sidecar, else scanned), loaded once."""
        self._settle()
        if self._index is None:
            self._open()
            if not self._load_sidecar():
                self._scan()
        assert self._index is not None
        return self._index

    def read(self, start: int, stop: int) -> Iterator[RawSample]:
        """Samples at positions ``start <= p < stop`` in order; with an index it seeks straight
        to ``start`` (nothing before it is read).

        Opens the shard and loads its index before returning, so a missing, truncated or
        miscounted shard raises here; a shard streamed without sidecar may raise while
        iterating, when the scan reaches the damage.
        """
        n = self.shard.nsamples
        if not 0 <= start <= stop <= n:
            raise ValueError(
                f"expected 0 <= start <= stop <= nsamples={n} for {self.shard.url}, "
                f"got start={start} stop={stop}"
            )
        if start == stop:
            return iter(())
        self._settle()
        self._open()
        if self._index is None and not self._load_sidecar():
            if self._remote is not None:
                return self._read_stream(start, stop)
            self._scan()
        if self._remote is not None:
            return self._read_ranged(start, stop)
        return self._read_mapped(start, stop)

    def member_name(self, position: int) -> str:
        """The image member name of the sample at ``position`` (for error messages; may read
        one header). Falls back to ``'<sample at byte N>'``."""
        self._settle()
        self._open()
        row = self.index()[position]
        if self._names is not None:
            return self._names[position]
        where = int(row["image_offset"])
        if where >= BLOCK:
            try:
                if self._map is not None:
                    name = header_name(self._map[where - BLOCK : where])
                else:
                    assert self._remote is not None
                    name = header_name(self._remote.fetch(where - BLOCK, where))
            except (OSError, ValueError):
                name = None
            if name is not None:
                return name
        return f"<sample at byte {int(row['offset'])}>"

    def prefetch(self, start: int, stop: int) -> None:
        """Start opening the shard, loading its index and fetching the first chunk of
        ``[start, stop)`` on the executor (read-ahead); the next call of any other method
        waits for it and raises what it raised. Does nothing without an executor."""
        if self._executor is None or self._pending is not None:
            return
        self._pending = self._executor.submit(self._prepare, start, stop)

    def _prepare(self, start: int, stop: int) -> None:
        self._open()
        if self._index is None and not self._load_sidecar():
            return
        if self._remote is not None and start < stop and self._index is not None:
            lo = int(self._index["offset"][start])
            hi = min(int(self._index["end"][stop - 1]), lo + self._chunk)
            self._head = (lo, self._remote.fetch(lo, hi))

    def _settle(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Release the file. Views handed out by ``read()`` stay valid (see ``RawSample``)."""
        try:
            self._settle()
        except Exception as exc:  # the read-ahead's error; nobody reads this shard now
            log.debug("%s: read-ahead failed: %s", self.shard.url, exc)
        self._head = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                log.debug("%s: sample views still alive; unmapped when they go", self.shard.url)
            self._map = None
        self._remote = None
        if self._cached is not None:
            self._cached.close()
            self._cached = None

    def _from_cache(self, url: str, size: int | None, sha256: str | None) -> CachedFile:
        cache = self._options.cache
        assert cache is not None
        try:
            return cache.open(
                self._remote_file(url), size=size, sha256=sha256, counters=self._options.counters
            )
        except FileNotFoundError:
            raise MissingShardError(f"shard file {url} not found") from None

    def _remote_file(self, url: str) -> RemoteFile:
        o = self._options
        return RemoteFile(url, latency_s=self._latency_s, retry=o.retry, counters=o.counters)

    def _wait(self) -> None:
        if self._latency_s > 0:
            time.sleep(self._latency_s)

    def _open(self) -> None:
        if self._map is not None or self._remote is not None:
            return
        url = self.shard.url
        cache = self._options.cache
        if not self._local and cache is None:
            remote = self._remote_file(url)
            try:
                size = remote.size()
            except FileNotFoundError:
                raise MissingShardError(f"shard {url} not found") from None
            except ShardReadError:
                raise
            except (OSError, ValueError) as exc:
                raise ShardReadError(f"cannot open shard {url}: {exc}") from exc
            expected = self.shard.filesize
            if size is not None and expected is not None and size != expected:
                raise RemoteReadError(
                    f"shard {url} has {size} bytes, its manifest says {expected}: the file "
                    "changed or the manifest is stale; rebuild the manifest (not retried)",
                    url=url,
                    cause="size mismatch",
                )
            if size is None:
                size = expected
            if size is None:
                raise ShardReadError(f"cannot tell the size of shard {url}; the server hides it")
            self._remote, self._size = remote, size
            return
        if self._local:
            path = local_path(url)
        else:
            self._cached = self._from_cache(url, self.shard.filesize, self.shard.sha256)
            path = self._cached.path
        self._wait()
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingShardError(f"shard {url} not found (no file at {path})") from None
        except OSError as exc:
            raise ShardReadError(f"cannot open shard {url}: {exc.strerror}") from exc
        try:
            self._size = os.fstat(fd).st_size
            if self._size == 0:
                raise ShardReadError(f"shard {url} is empty (0 bytes): truncated or unfinished")
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        if hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)

    def _load_sidecar(self) -> bool:
        index_url = self.shard.index_url
        if index_url is None:
            return False
        try:
            if self._local:
                self._wait()
                with open(local_path(index_url), "rb") as f:
                    index = read_index(f)
            elif self._options.cache is not None:
                with self._from_cache(index_url, None, self.shard.index_sha256) as cached:
                    with open(cached.path, "rb") as f:
                        index = read_index(f)
            else:
                index = read_index(self._remote_file(index_url).read_all())
        except FileNotFoundError:
            log.warning("sidecar %s is missing; scanning %s instead", index_url, self.shard.url)
            return False
        except RemoteReadError:
            raise
        except (OSError, ValueError) as exc:
            raise ShardReadError(f"shard {self.shard.url}: bad sidecar {index_url}: {exc}") from exc
        self._set_index(index, None, None, f"sidecar {index_url}")
        return True

    def _scan(self) -> None:
        url = self.shard.url
        try:
            if self._map is not None:
                scanned = scan_mapped(self._map, url)
            else:
                assert self._remote is not None
                scan = StreamScan(self._remote, self._size, url, chunk_bytes=self._chunk)
                scanned = scan.run()
        except ShardReadError:
            raise
        except (OSError, ValueError) as exc:
            raise _wrap(exc, url) from exc
        self._set_index(scanned.index, scanned.keys, scanned.names, "header scan")

    def _set_index(
        self, index: np.ndarray, keys: list[str] | None, names: list[str] | None, what: str
    ) -> None:
        url, n = self.shard.url, self.shard.nsamples
        if len(index) != n:
            raise ShardReadError(
                f"shard {url}: {what} has {len(index)} samples, expected nsamples={n}"
            )
        try:
            check_index_rows(index, self._size, url, what)
        except ValueError as exc:
            raise ShardReadError(str(exc)) from None
        self._index, self._keys, self._names = index, keys, names
        image = index["image_offset"]
        where = np.where(image >= 0, image, index["offset"])
        self._columns = (
            image.tolist(),
            index["image_size"].tolist(),
            index["label"].tolist(),
            where.tolist(),
        )

    def _read_mapped(self, start: int, stop: int) -> Iterator[RawSample]:
        assert self._map is not None
        view = memoryview(self._map)
        first = self.shard.first_index
        offsets, sizes, labels, where = (c[start:stop] for c in self._columns)
        keys = repeat("") if self._keys is None else self._keys[start:stop]
        for pos, o, s, label, at, key in zip(
            range(start, stop), offsets, sizes, labels, where, keys, strict=False
        ):
            yield RawSample(first + pos, pos, key, label, view[o : o + s], at)

    def _read_ranged(self, start: int, stop: int) -> Iterator[RawSample]:
        remote = self._remote
        assert remote is not None and self._index is not None
        first, url = self.shard.first_index, self.shard.url
        offsets, sizes, labels, where = (c[start:stop] for c in self._columns)
        keys = repeat("") if self._keys is None else self._keys[start:stop]
        hi = int(self._index["end"][stop - 1])
        buf_start = buf_end = int(self._index["offset"][start])
        buf = memoryview(b"")
        ahead: tuple[int, Future[bytes]] | None = None
        if self._head is not None and self._head[0] == buf_end:
            ahead = (buf_end, _done(self._head[1]))
        self._head = None
        for pos, o, s, label, at, key in zip(
            range(start, stop), offsets, sizes, labels, where, keys, strict=False
        ):
            if o < 0:
                yield RawSample(first + pos, pos, key, label, b"", at)
                continue
            if o + s > buf_end:
                want_end = min(hi, max(o + s, buf_end + self._chunk))
                try:
                    if ahead is not None and ahead[0] == buf_end:
                        got = ahead[1].result()
                        want_end = max(want_end, buf_end + len(got))
                        if buf_end + len(got) < want_end:
                            got += remote.fetch(buf_end + len(got), want_end)
                    else:
                        got = remote.fetch(buf_end, want_end)
                    ahead = None
                    if self._executor is not None and want_end < hi:
                        nxt = min(hi, want_end + self._chunk)
                        ahead = (want_end, self._executor.submit(remote.fetch, want_end, nxt))
                except ShardReadError:
                    raise
                except (OSError, ValueError) as exc:
                    raise ShardReadError(
                        f"shard {url}: reading bytes {buf_end}-{want_end - 1} failed: {exc}"
                    ) from exc
                if len(got) != want_end - buf_end:
                    raise ShardReadError(
                        f"shard {url} is truncated: it ends at byte {buf_end + len(got)}, "
                        f"sample {pos} needs bytes up to {o + s}"
                    )
                tail = buf[o - buf_start :] if o < buf_end else b""
                skip = max(o - buf_end, 0)
                buf = memoryview(bytes(tail) + got[skip:] if tail else got[skip:])
                buf_start, buf_end = o, want_end
            lo = o - buf_start
            yield RawSample(first + pos, pos, key, label, buf[lo : lo + s], at)

    def _read_stream(self, start: int, stop: int) -> Iterator[RawSample]:
        assert self._remote is not None
        scan = StreamScan(
            self._remote,
            self._size,
            self.shard.url,
            chunk_bytes=self._chunk,
            images=(start, stop),
            until=stop if stop < self.shard.nsamples else None,
        )
        first = self.shard.first_index
        try:
            for pos, key, label, data, at in scan.samples():
                if pos >= start:
                    yield RawSample(first + pos, pos, key, label, data, at)
        except ShardReadError:
            raise
        except (OSError, ValueError) as exc:
            raise _wrap(exc, self.shard.url) from exc
        if scan.result is not None:
            self._set_index(scan.result.index, scan.result.keys, scan.result.names, "header scan")


def _done(value: bytes) -> Future[bytes]:
    future: Future[bytes] = Future()
    future.set_result(value)
    return future


def _wrap(exc: Exception, url: str) -> ShardReadError:
    if isinstance(exc, ShardFormatError):
        return ShardReadError(str(exc))
    return ShardReadError(f"shard {url}: reading failed: {exc}")
