"""One service per database: an exclusive ``flock`` on ``<db>.lock`` held while serving.

The lock is taken before the store is opened, because opening it marks every ``running`` run
``interrupted`` (the runs of a service that died): a second service on the same file would
otherwise mark the first one's live run. The kernel drops the lock when its holder exits, so a
killed service leaves nothing to clean up; the file itself stays and is reused.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DatabaseInUse", "hold_database"]


class DatabaseInUse(RuntimeError):
    """Another process holds the database's lock; the message names the file and its pid."""


@contextmanager
def hold_database(db: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``<db>.lock`` for the ``with`` body; ``DatabaseInUse`` when another process does.

    ``":memory:"`` needs no lock.
    """
    if str(db) == ":memory:":
        yield
        return
    lock = Path(f"{db}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise DatabaseInUse(
                f"expected no other shardfeed serve on db={str(db)!r}, but one is already "
                f"serving it (pid {holder}, lock {str(lock)!r}); stop it or pick another --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
