"""``RemoteReadError``: a remote request that failed for good, with what was asked and why."""

from __future__ import annotations

from loader._errors import ShardReadError
from loader.remote.redact import redact

__all__ = ["CacheError", "RemoteReadError"]


class RemoteReadError(ShardReadError):
    """A remote request that failed for good: a permanent failure (403, a size, checksum or
    validator that does not match), or transient failures past the retry budget. ``url``,
    ``byte_range`` (``(first, last)`` inclusive, or ``None`` for a whole-file request),
    ``attempts`` and ``cause`` (the last error, as text) say which; ``url``, ``cause`` and the
    message are redacted (``loader.remote.redact``)."""

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
        self.url = redact(url)
        self.byte_range = byte_range
        self.attempts = attempts
        self.cause = redact(cause)

    def prefixed(self, prefix: str) -> RemoteReadError:
        """The same failure, its message led by ``prefix`` (what the file was read for)."""
        return RemoteReadError(
            f"{prefix}: {self}",
            url=self.url, byte_range=self.byte_range, attempts=self.attempts, cause=self.cause,
        )  # fmt: skip

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (str(self), self.url, self.byte_range, self.attempts, self.cause))


class CacheError(ShardReadError):
    """The cache cannot hold or check a file; the message names it and what to do."""


def _rebuild(
    message: str, url: str, byte_range: tuple[int, int] | None, attempts: int, cause: str
) -> RemoteReadError:
    return RemoteReadError(message, url=url, byte_range=byte_range, attempts=attempts, cause=cause)
