"""SQLite store of benchmark runs and training-job reports; what it holds survives a restart.

``Store`` is one file seen through its tables: benchmark runs (``server.runs``) and job
reports (``server.jobstore``), over one connection (``server._sqlite``). The file carries a
``schema_version`` table. Opening a file written by a newer release raises
:class:`StoreError`; an older one is migrated step by step (``server._schema``). Opening also
marks every run still ``running`` as ``interrupted``: the process that ran it is gone.

Concurrency: one connection, shared by the threads of one process and guarded by a lock, so
every method is atomic with respect to the others. Two processes on one file are safe (SQLite
locks, WAL journal) but only one of them should run benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from server._schema import SCHEMA_VERSION, StoreError
from server.jobstore import JobLimitError, JobStore
from server.runs import FINISHED, STATUSES, RunRecord, RunStore

__all__ = [
    "FINISHED",
    "SCHEMA_VERSION",
    "STATUSES",
    "JobLimitError",
    "RunRecord",
    "Store",
    "StoreError",
]

_INTERRUPTED = "the service stopped while this run was going"


class Store(RunStore, JobStore):
    """Runs and job reports in one SQLite file (``":memory:"`` for a throwaway store)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, clock=clock)
        try:
            self.interrupted_at_open = self.mark_running_interrupted(_INTERRUPTED)
        except BaseException:
            self.close()
            raise
