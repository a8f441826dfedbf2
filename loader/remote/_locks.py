"""File locks of the node-local cache (``loader.remote.cache``): ``flock`` on lock files that an
eviction may unlink. Whoever takes a lock checks, once it holds it, that the file is still the
one at its path, so two processes never each hold "the" lock on two different inodes."""

from __future__ import annotations

import fcntl
import os
import time

from loader.remote.errors import CacheError
from loader.remote.redact import redact

__all__ = ["Lock", "locked"]

_POLL_S = 0.02


def locked(path: str, operation: int) -> int | None:
    """An fd of ``path`` holding ``flock(operation)``; ``None`` when ``LOCK_NB`` finds it
    busy. The lock is taken on the file that is at ``path`` once it is held: an eviction may
    unlink a lock file, so a lock won on an unlinked inode is let go and taken again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


class Lock:
    """An exclusive ``flock`` on ``path``, waited for at most ``timeout_s``."""

    def __init__(self, path: str, timeout_s: float, what: str) -> None:
        self._path, self._timeout, self._what = path, timeout_s, what
        self._fd = -1

    def __enter__(self) -> Lock:
        deadline = time.monotonic() + self._timeout
        while True:
            fd = locked(self._path, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is not None:
                self._fd = fd
                return self
            if time.monotonic() > deadline:
                raise CacheError(
                    f"waited {self._timeout:g} s for another process holding {self._path} "
                    f"({redact(self._what)}); expected it to finish: check that process, or "
                    "raise lock_timeout_s"
                )
            time.sleep(_POLL_S)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
