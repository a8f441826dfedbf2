"""A shard's index: header scans of whole shards (over a memory map, or as one chunked pass
over a remote file), and the checks every index passes, scanned or loaded from a sidecar."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from loader._errors import ShardReadError
from loader.remote.files import CHUNK_BYTES, ChunkedStream, RemoteFile
from loader.remote.location import is_local, local_path
from loader.remote.retry import RetryPolicy
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

__all__ = [
    "Scanned",
    "StreamScan",
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
    return StreamScan(remote, size, url).run()


def wrap_scan_error(exc: Exception, url: str) -> ShardReadError:
    if isinstance(exc, ShardFormatError):
        return ShardReadError(str(exc))
    return ShardReadError(f"shard {url}: reading failed: {exc}")
