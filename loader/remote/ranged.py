"""``RangedRead``: the samples of one position range of a remote shard, fetched in chunks.

The range's bytes ``[lo, hi)`` are fetched in requests of ``chunk_bytes`` or more (never a
request per sample); with an executor the next chunk is fetched while the current one is
consumed (read-ahead). Each yielded payload is a view into the chunk that holds it, which the
view keeps alive. Errors are ``ShardReadError`` naming the shard and the byte range
(docs/architecture.md, "Remote reads").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING

from loader._errors import ShardReadError

if TYPE_CHECKING:
    from loader.remote.files import RemoteFile

__all__ = ["RangedRead"]


class RangedRead:
    """One pass over ``span = (lo, hi)`` of ``remote``; ``head`` is ``(offset, bytes)`` already
    fetched by a read-ahead (used when it starts at ``lo``). Not thread-safe: one consumer;
    the executor only runs ``remote.fetch`` for the chunk after the current one."""

    def __init__(
        self,
        remote: RemoteFile,
        url: str,
        span: tuple[int, int],
        *,
        chunk_bytes: int,
        executor: Executor | None,
        head: tuple[int, bytes] | None = None,
    ) -> None:
        self.remote, self.url = remote, url
        self.lo, self.hi = span
        self.chunk = chunk_bytes
        self.executor = executor
        self.head = head

    def samples(
        self,
        offsets: Iterable[int],
        sizes: Iterable[int],
        labels: Iterable[int],
        where: Iterable[int],
    ) -> Iterator[tuple[memoryview | bytes, int, int]]:
        """``(payload, label, where)`` per sample of the range, in order; a sample without an
        image (offset < 0) gets ``b""``."""
        buf_start = buf_end = self.lo
        buf = memoryview(b"")
        ahead: tuple[int, Future[bytes]] | None = None
        if self.head is not None and self.head[0] == buf_end:
            ahead = (buf_end, _done(self.head[1]))
        for o, s, label, at in zip(offsets, sizes, labels, where, strict=False):
            if o < 0:
                yield b"", label, at
                continue
            if o + s > buf_end:
                got, want_end, ahead = self._fetch(buf_end, o + s, ahead)
                tail = buf[o - buf_start :] if o < buf_end else b""
                skip = max(o - buf_end, 0)
                buf = memoryview(bytes(tail) + got[skip:] if tail else got[skip:])
                buf_start, buf_end = o, want_end
            lo = o - buf_start
            yield buf[lo : lo + s], label, at
        if not self.remote.seekable:  # a forward GET of the whole shard: let its connection go
            self.remote.close()

    def _fetch(
        self, buf_end: int, need: int, ahead: tuple[int, Future[bytes]] | None
    ) -> tuple[bytes, int, tuple[int, Future[bytes]] | None]:
        """Bytes from ``buf_end`` to at least ``need`` (a chunk or more, never past ``hi``),
        taking the read-ahead's chunk when it starts there, and the next read-ahead."""
        remote, hi = self.remote, self.hi
        want_end = min(hi, max(need, buf_end + self.chunk))
        try:
            if ahead is not None and ahead[0] == buf_end:
                got = ahead[1].result()
                want_end = max(want_end, buf_end + len(got))
                if buf_end + len(got) < want_end:
                    got += remote.fetch(buf_end + len(got), want_end)
            else:
                got = remote.fetch(buf_end, want_end)
            ahead = None
            if self.executor is not None and want_end < hi:
                nxt = min(hi, want_end + self.chunk)
                ahead = (want_end, self.executor.submit(remote.fetch, want_end, nxt))
        except ShardReadError:
            raise
        except (OSError, ValueError) as exc:
            raise ShardReadError(
                f"shard {self.url}: reading bytes {buf_end}-{want_end - 1} failed: {exc}"
            ) from exc
        if len(got) != want_end - buf_end:
            raise ShardReadError(
                f"shard {self.url} is truncated: it ends at byte {buf_end + len(got)}, "
                f"a sample needs bytes up to {need}"
            )
        return got, want_end, ahead


def _done(value: bytes) -> Future[bytes]:
    future: Future[bytes] = Future()
    future.set_result(value)
    return future
