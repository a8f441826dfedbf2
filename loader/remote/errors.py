"""``RemoteReadError``: a remote request that failed for good, with what was asked and why."""

from __future__ import annotations

from loader._errors import ShardReadError

__all__ = ["RemoteReadError"]


class RemoteReadError(ShardReadError):
    """A remote request that failed for good: a permanent failure (403, a server that ignores
    Range, a size or checksum that does not match the manifest), or transient failures past
    the retry budget. ``url``, ``byte_range`` (``(first, last)`` inclusive, or ``None`` for a
    whole-file request), ``attempts`` and ``cause`` (the last error, as text) say which."""

    def __init__(
        self,
        message: str,
        *,
        url: str = "",
        byte_range: tuple[int, int] | None = None,
        attempts: int = 1,
        cause: str = "",
    ) -> None:
        super().__init__(message)
        self.url = url
        self.byte_range = byte_range
        self.attempts = attempts
        self.cause = cause

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (str(self), self.url, self.byte_range, self.attempts, self.cause))


def _rebuild(
    message: str, url: str, byte_range: tuple[int, int] | None, attempts: int, cause: str
) -> RemoteReadError:
    return RemoteReadError(message, url=url, byte_range=byte_range, attempts=attempts, cause=cause)
