"""What a dataset keeps from one epoch to the next inside each process: open shard readers and
its pool of shared image buffers.

A persistent DataLoader worker iterates its dataset copy once per epoch. Reopening every shard
each epoch re-reads its sidecar index, pays the storage's open latency again and maps the file
afresh, so every page of every sample is faulted in again (about 13 us per 110 KB sample here,
as much as the rest of the pipeline costs with decoding off). ``Reuse`` keeps the most recently
used readers open instead (``keep_open`` of them, least recently used closed first) and one
``ImagePool`` per buffer size. For remote shards it also owns the read-ahead threads
(``READAHEAD_THREADS``): while the current shard is read, ``prefetch`` opens the next one
(its index and first chunk, or its whole file into the cache) and each ranged read fetches its
next chunk, so at most about two chunks (``loader.remote.files.CHUNK_BYTES``) per process are
fetched ahead (docs/architecture.md, section "Remote reads").

The state belongs to one process: a pickled copy (a spawned worker) and a forked copy (checked
by process id) start empty. Not thread-safe: one iterating thread per process.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch.utils.data import get_worker_info

from loader.reader import ShardReader
from loader.remote.location import is_local
from loader.remote.options import RemoteOptions
from loader.sources import ShardSource
from loader.worker.pools import CAPACITY, ImagePool

__all__ = ["Reuse"]

KEEP_OPEN = 64
READAHEAD_THREADS = 2  # the next chunk of the current shard, and the next shard


class Reuse:
    """Per-process readers (LRU, ``keep_open`` at most) and image pools; see the module doc."""

    def __init__(
        self,
        latency_s: float = 0.0,
        keep_open: int = KEEP_OPEN,
        remote: RemoteOptions | None = None,
    ) -> None:
        if keep_open < 0 or latency_s < 0:
            raise ValueError(
                f"expected keep_open >= 0 and latency_s >= 0, got keep_open={keep_open} "
                f"latency_s={latency_s}"
            )
        self.latency_s = latency_s
        self.keep_open = keep_open
        self.remote = remote
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._readers: OrderedDict[str, ShardReader] = OrderedDict()
        self._pools: dict[int, ImagePool] = {}
        self._executor: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"latency_s": self.latency_s, "keep_open": self.keep_open, "remote": self.remote}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.latency_s, self.keep_open = state["latency_s"], state["keep_open"]
        self.remote = state["remote"]
        self._reset()

    def _own(self) -> None:
        if self._pid != os.getpid():
            self._reset()

    def reader(self, shard: ShardSource) -> ShardReader:
        """An open reader of ``shard`` (kept open after use; do not close it)."""
        self._own()
        reader = self._readers.get(shard.url)
        if reader is not None and reader.shard == shard:
            self._readers.move_to_end(shard.url)
            return reader
        if self._executor is None and (self.remote is None or self.remote.readahead):
            self._executor = ThreadPoolExecutor(READAHEAD_THREADS, "shardfeed-readahead")
        reader = ShardReader(
            shard, latency_s=self.latency_s, remote=self.remote, executor=self._executor
        )
        self._readers[shard.url] = reader
        while len(self._readers) > max(self.keep_open, 1):
            _, old = self._readers.popitem(last=False)
            old.close()
        return reader

    def prefetch(self, shard: ShardSource, start: int, stop: int) -> None:
        """Start reading ahead into ``shard``'s samples ``[start, stop)`` in the background
        (``ShardReader.prefetch``): the reader is kept like any other, so the next
        ``reader(shard)`` gets it."""
        if is_local(shard.url) or next(reversed(self._readers), None) == shard.url:
            return  # mapped files need none; the reader in use is never shared with a thread
        self.reader(shard).prefetch(start, stop)

    def forget(self, shard: ShardSource) -> None:
        """Close and drop the reader of ``shard`` (after an error, so it is reopened)."""
        self._own()
        reader = self._readers.pop(shard.url, None)
        if reader is not None:
            reader.close()

    def pool(self, nbytes: int, capacity: int = CAPACITY) -> ImagePool | None:
        """This process's pool of ``nbytes`` image buffers inside a DataLoader worker (where
        batches leave the process), else ``None``. ``capacity``: how many buffers it may keep
        (raised, never lowered, for an existing pool)."""
        if nbytes <= 0 or get_worker_info() is None:
            return None
        self._own()
        pool = self._pools.get(nbytes)
        if pool is None:
            pool = self._pools[nbytes] = ImagePool(nbytes, capacity)
        elif pool.capacity < capacity:
            pool.capacity = capacity
        return pool

    def close(self) -> None:
        """Close every kept reader."""
        self._own()
        while self._readers:
            _, reader = self._readers.popitem()
            reader.close()
