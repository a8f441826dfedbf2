"""Counts of remote requests, retries and cache traffic, summed over a dataset's processes.

``NetCounters`` lives in shared memory like ``loader._epoch.SharedEpoch``: one row per reader
(row 0 the main process, row ``1 + w`` DataLoader worker ``w``), each written only by its own
process (whose threads take turns on a process-local lock), and the totals are the column
sums. The main process reads them between epochs (``ShardDataset.net.totals()``) to report
per-epoch figures (docs/architecture.md, section "Remote reads").
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch.utils.data import get_worker_info

from loader._epoch import MAX_READERS

__all__ = ["FIELDS", "NetCounters"]

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
        self._rows = torch.zeros((MAX_READERS + 1, len(FIELDS)), dtype=torch.int64).share_memory_()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"_rows": self._rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._rows, self._lock = state["_rows"], threading.Lock()

    def add(self, field: str, n: int = 1) -> None:
        """Add ``n`` to ``field`` in the calling process's own row."""
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id
        with self._lock:
            self._rows[row, FIELDS.index(field)] += n

    def totals(self) -> dict[str, int]:
        """Every field summed over all processes, since this object was made."""
        sums = self._rows.sum(dim=0).tolist()
        return {name: int(v) for name, v in zip(FIELDS, sums, strict=True)}
