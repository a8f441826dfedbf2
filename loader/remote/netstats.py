"""Counts of remote requests, retries and cache traffic, summed over a dataset's processes.

``NetCounters`` lives in shared memory like ``loader.plan.epoch.SharedEpoch``: one row per reader
(row 0 the main process, row ``1 + w % (ROWS - 1)`` DataLoader worker ``w``), each written
only by its own process (whose threads take turns on a process-local lock), and the totals are
the column sums. Only loaders of more than ``ROWS - 1`` workers share rows, and may then lose
a count to a race. The table is kept under 32 KiB: with torch 2.13 a process forked from one
holding a 48 KiB shared tensor hung in ``share_memory_()`` making one of the same size.
The main process reads them between epochs (``ShardDataset.net.totals()``) to report
per-epoch figures (docs/architecture.md, section "Remote reads").
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch.utils.data import get_worker_info

__all__ = ["FIELDS", "ROWS", "NetCounters"]

ROWS = 512

FIELDS = (
    "requests",
    "retries",
    "bytes_fetched",
    "cache_hits",
    "cache_fills",
    "cache_evictions",
)


class NetCounters:
    """Shared-memory counters of ``FIELDS``; survives pickling into worker processes."""

    def __init__(self) -> None:
        self._rows = torch.zeros((ROWS, len(FIELDS)), dtype=torch.int64).share_memory_()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_rows": self._rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._rows, self._lock = state["_rows"], threading.Lock()

    def add(self, field: str, n: int = 1) -> None:
        """Add ``n`` to ``field`` in the calling process's own row."""
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % (ROWS - 1)
        with self._lock:
            self._rows[row, FIELDS.index(field)] += n

    def totals(self) -> dict[str, int]:
        """Every field summed over all processes, since this object was made."""
        sums = self._rows.sum(dim=0).tolist()
        return {name: int(v) for name, v in zip(FIELDS, sums, strict=True)}
