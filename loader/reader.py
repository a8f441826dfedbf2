"""Read the samples of one shard, by position range, as raw image bytes plus label and id.

Local shards (plain paths, ``file://``) are memory-mapped: with the sidecar index a sample's
image is a slice of the map, with no tar header parsed and no bytes copied. Remote shards (any
other fsspec URL) are read with ranged requests: the sidecar first, then the byte range of the
requested samples in chunks of ``chunk_bytes``, so memory stays bounded and nothing is fetched
byte by byte. A shard without a sidecar has its headers scanned (locally over the map, remotely
as a chunked stream); the scan gives the same in-memory index a sidecar would.

Remote requests are retried within ``RemoteOptions.retry`` (``loader.remote.retry``); with
``RemoteOptions.cache`` a remote shard and its sidecar are first copied whole into the
node-local cache (``loader.remote.cache``) and then memory-mapped like a local file. With an
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
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from itertools import repeat
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from loader._checks import check_int, check_non_negative
from loader._errors import MissingShardError, ShardReadError
from loader._scanio import StreamScan, check_sha, check_tail, scan_mapped, wrap_scan_error
from loader.remote.errors import RemoteReadError
from loader.remote.files import CHUNK_BYTES, RemoteFile, checked_size
from loader.remote.location import is_local, local_path
from loader.remote.options import RemoteOptions
from loader.remote.ranged import RangedRead
from loader.remote.redact import redact
from loader.sources import ShardSource
from shards.format import BLOCK, check_index_rows, read_index
from shards.tarscan import header_name

if TYPE_CHECKING:
    from loader.remote.cache import CachedFile

__all__ = ["RawSample", "ShardReader"]

log = logging.getLogger(__name__)


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
    sidecar or scan sample count different from ``shard.nsamples``, a sidecar whose sha256 is
    not ``shard.index_sha256`` or whose last row does not end where the archive's end begins (an
    index of another shard), or a corrupt tar header. The shard's own sha256 is checked only by
    the cache (``loader.remote.cache``); a remote shard whose validator is no longer the one
    seen when the dataset was resolved (``shard.validator``) is refused.
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
            log.debug("%s: read-ahead failed: %s", redact(self.shard.url), redact(exc))
        self._head = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                url = redact(self.shard.url)
                log.debug("%s: sample views still alive; unmapped when they go", url)
            self._map = None
        if self._remote is not None:
            self._remote.close()
        self._remote = None
        if self._cached is not None:
            self._cached.close()
            self._cached = None

    def _wait(self) -> None:
        if self._latency_s > 0:
            time.sleep(self._latency_s)

    def _open(self) -> None:
        if self._map is not None or self._remote is not None:
            return
        url = self.shard.url
        cache = self._options.cache
        if not self._local and cache is None:
            self._remote = self._options.remote_file(url, self._latency_s)
            self._size = checked_size(self._remote, self.shard.filesize, self.shard.validator)
            return
        if self._local:
            path = local_path(url)
        else:
            shard = self.shard
            self._cached = self._options.cached(
                url, self._latency_s, shard.filesize, shard.sha256, shard.validator
            )
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
        expected = self.shard.index_sha256
        try:
            if self._local:
                self._wait()
                with open(local_path(index_url), "rb") as f:
                    raw = f.read()
            elif self._options.cache is not None:
                # cached as one unit with its shard: under its own sha256, else the shard's
                shard_unit = self._cached.validator if self._cached else None
                unit = None if expected else (self.shard.sha256 or shard_unit)
                cache_index = self._options.cached
                with cache_index(
                    index_url, self._latency_s, None, expected, unit, own=False
                ) as cached:
                    with open(cached.path, "rb") as f:
                        raw = f.read()
            else:
                raw = self._options.remote_file(index_url, self._latency_s).read_all()
            check_sha(raw, expected, self.shard.url, index_url)
            index = read_index(raw)
        except FileNotFoundError:
            where = (redact(index_url), redact(self.shard.url))
            log.warning("sidecar %s is missing; scanning %s instead", *where)
            return False
        except RemoteReadError as exc:
            raise exc.prefixed(f"shard {self.shard.url}: sidecar {index_url}") from exc
        except ShardReadError:
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
            raise wrap_scan_error(exc, url) from exc
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
        if n and keys is None:
            check_tail(index, self._size, self._tail_reader(), url, what)
        self._index, self._keys, self._names = index, keys, names
        image = index["image_offset"]
        where = np.where(image >= 0, image, index["offset"])
        self._columns = (
            image.tolist(),
            index["image_size"].tolist(),
            index["label"].tolist(),
            where.tolist(),
        )

    def _tail_reader(self) -> Callable[[int, int], bytes] | None:
        """Where a sidecar's tail bytes are read: the map, else (one small request) the
        remote file when no ``index_sha256`` vouches for the index."""
        if (mapped := self._map) is not None:
            return lambda a, b: mapped[a:b]
        return self._remote.fetch if self._remote and not self.shard.index_sha256 else None

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
        assert self._remote is not None and self._index is not None
        first = self.shard.first_index
        keys = repeat("") if self._keys is None else self._keys[start:stop]
        head, self._head = self._head, None
        ranged = RangedRead(
            self._remote,
            self.shard.url,
            (int(self._index["offset"][start]), int(self._index["end"][stop - 1])),
            chunk_bytes=self._chunk,
            executor=self._executor,
            head=head,
        )
        columns = (c[start:stop] for c in self._columns)
        for pos, (data, label, at), key in zip(
            range(start, stop), ranged.samples(*columns), keys, strict=False
        ):
            yield RawSample(first + pos, pos, key, label, data, at)

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
            raise wrap_scan_error(exc, self.shard.url) from exc
        if scan.result is not None:
            self._set_index(scan.result.index, scan.result.keys, scan.result.names, "header scan")
