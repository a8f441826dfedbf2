"""A shard's index: header scans of whole shards (over a memory map, or as one chunked pass
over a remote file), and the checks every index passes, scanned or loaded from a sidecar (a
sidecar also has its sha256 checked when one is known, and must end where its shard's archive
ends)."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from loader._errors import ShardReadError
from loader.remote.files import CHUNK_BYTES, ChunkedStream, RemoteFile
from loader.remote.location import is_local, local_path
from loader.remote.retry import RetryPolicy
from shards.format import BLOCK, end_of_archive
from shards.tarscan import (
    IMAGE_SUFFIXES,
    SampleGrouper,
    SampleMembers,
    ShardFormatError,
    build_index,
    group_samples,
    iter_members,
    parse_label,
    scan_buffer,
    split_key,
)

_TAIL_MIN = len(end_of_archive())  # our writer: the last sample, then two zero blocks
_TAIL_MAX = _TAIL_MIN + 20 * BLOCK  # other tar writers pad to a 10240-byte record

__all__ = [
    "Scanned",
    "StreamScan",
    "check_sha",
    "check_tail",
    "scan_location",
    "scan_mapped",
    "wrap_scan_error",
]


@dataclass(frozen=True)
class Scanned:
    """A scanned shard: its index rows, sample keys and image member names (the key when a
    sample has no image)."""

    index: np.ndarray
    keys: list[str]
    names: list[str]


def _scanned(samples: list[SampleMembers], labels: list[int]) -> Scanned:
    return Scanned(
        build_index(samples, labels),
        [s.key for s in samples],
        [s.image.name if s.image else s.key for s in samples],
    )


def scan_mapped(buf: memoryview | mmap.mmap, url: str) -> Scanned:
    """Scan a whole shard held in memory; labels come from the ``.cls`` payloads."""
    samples = group_samples(scan_buffer(buf, url), url=url)
    labels = [
        parse_label(buf[s.cls.data_offset : s.cls.data_offset + s.cls.size]) if s.cls else -1
        for s in samples
    ]
    return _scanned(samples, labels)


class StreamScan:
    """One forward pass over a remote shard, fetched in ``chunk_bytes`` requests.

    ``samples()`` yields ``(position, key, label, image, offset)`` for each sample in order;
    ``image`` holds the payload only for positions in ``images = (start, stop)`` (else
    ``b''``). The pass ends after ``until`` samples, or else at the end of the archive, where
    ``result`` is set to the whole shard's ``Scanned``.
    """

    def __init__(
        self,
        remote: RemoteFile,
        size: int,
        url: str,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        images: tuple[int, int] | None = None,
        until: int | None = None,
    ) -> None:
        self._remote = remote
        self._size = size
        self._url = url
        self._chunk = chunk_bytes
        self._images = images
        self._until = until
        self._count = 0
        self.result: Scanned | None = None

    def run(self) -> Scanned:
        """Scan to the end of the archive and return the whole shard's ``Scanned``."""
        for _ in self.samples():
            pass
        assert self.result is not None
        return self.result

    def _want(self, name: str) -> bool:
        split = split_key(name)
        if split is None:
            return False
        if split[1] == "cls":
            return True
        if self._images is None or split[1] not in IMAGE_SUFFIXES:
            return False
        start, stop = self._images
        return start <= self._count + 1 and self._count < stop

    def samples(self) -> Iterator[tuple[int, str, int, bytes, int]]:
        stream = ChunkedStream(self._remote, self._size, chunk_bytes=self._chunk)
        grouper = SampleGrouper(self._url)
        payloads: dict[int, bytes] = {}
        done: list[SampleMembers] = []
        labels: list[int] = []
        members = iter_members(stream, self._url, want=self._want)  # type: ignore[arg-type]
        while True:
            item = next(members, None)
            sample = grouper.push(item[0]) if item is not None else grouper.finish()
            if item is not None and item[1] is not None:
                payloads[item[0].data_offset] = item[1]
            if sample is not None:
                cls, image = sample.cls, sample.image
                label = parse_label(payloads[cls.data_offset]) if cls else -1
                data = payloads.get(image.data_offset, b"") if image else b""
                at = image.data_offset if image else sample.offset
                for m in sample.members:
                    payloads.pop(m.data_offset, None)
                done.append(sample)
                labels.append(label)
                yield self._count, sample.key, label, data, at
                self._count += 1
                if self._until is not None and self._count >= self._until:
                    if not self._remote.seekable:  # let a forward GET's connection go
                        self._remote.close()
                    return
            if item is None:
                self.result = _scanned(done, labels)
                return


def scan_location(url: str, retry: RetryPolicy | None = None) -> Scanned:
    """Scan the shard at ``url`` (local path or fsspec URL); ``FileNotFoundError`` when it is
    missing, ``ShardFormatError`` when it is truncated or corrupt."""
    if is_local(url):
        path = local_path(url)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return scan_mapped(memoryview(b""), url)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return scan_mapped(mapped, url)
    remote = RemoteFile(url, retry=retry)
    size = remote.size()
    if size is None:
        raise ValueError(f"cannot tell the size of shard {url}; the server hides it")
    try:
        return StreamScan(remote, size, url).run()
    finally:
        remote.close()


def wrap_scan_error(exc: Exception, url: str) -> ShardReadError:
    if isinstance(exc, ShardFormatError):
        return ShardReadError(str(exc))
    return ShardReadError(f"shard {url}: reading failed: {exc}")


def check_sha(raw: bytes, expected: str | None, url: str, index_url: str) -> None:
    """A sidecar's bytes against the ``index_sha256`` its source names (``None``: none)."""
    if expected is not None and (got := hashlib.sha256(raw).hexdigest()) != expected:
        raise ShardReadError(
            f"shard {url}: sidecar {index_url} has sha256 {got}, expected index_sha256="
            f"{expected}: the index changed or belongs to another shard; rebuild the manifest"
        )


def check_tail(
    index: np.ndarray, size: int, read: Callable[[int, int], bytes] | None, url: str, what: str
) -> None:
    """A sidecar's last sample must end where the archive's end begins: ``_TAIL_MIN`` to
    ``_TAIL_MAX`` bytes before the end of the file, all zero when ``read`` (bytes ``[a, b)`` of
    the shard) is given (an index of another shard ends elsewhere)."""
    end = int(index["end"][-1])
    tail = size - end
    fits = _TAIL_MIN <= tail <= _TAIL_MAX
    if fits and read is not None:
        fits = bytes(read(end, size)).count(0) == tail
    if not fits:
        raise ShardReadError(
            f"shard {url}: {what} does not fit it: its last sample ends at byte {end} of "
            f"{size}, expected the archive's zero end blocks from there to the end of the "
            "file: the index belongs to another shard or is stale; rebuild the shard's index"
        )
