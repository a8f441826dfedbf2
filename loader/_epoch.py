"""Epoch numbers that reach every DataLoader worker, persistent or not, with or without set_epoch.

A persistent worker holds its own copy of the dataset, so a ``set_epoch`` on the main process's
copy does not reach it through Python state. This counter lives in shared memory instead: slot 0
is the base epoch set by ``set_epoch``; slot ``1 + w`` counts how many epochs reader ``w`` has
started since that call. Each reader writes only its own slot, so no lock is needed, and every
reader computes the same ``base + started`` because each starts exactly once per epoch.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_READERS", "SharedEpoch"]

MAX_READERS = 1024


class SharedEpoch:
    """Shared-memory epoch state; survives pickling into worker processes (fork or spawn)."""

    def __init__(self) -> None:
        self._slots = torch.zeros(MAX_READERS + 1, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        """Called by the main process before an epoch: every reader's next epoch is ``epoch``."""
        if epoch < 0:
            raise ValueError(f"expected epoch >= 0, got epoch={epoch}")
        self._slots[1:] = 0
        self._slots[0] = epoch

    def begin(self, reader: int) -> int:
        """Called by reader ``reader`` as it starts an epoch; returns that epoch's number."""
        if not 0 <= reader < MAX_READERS:
            raise ValueError(f"expected fewer than {MAX_READERS} workers, got worker id {reader}")
        started = int(self._slots[1 + reader])
        self._slots[1 + reader] = started + 1
        return int(self._slots[0]) + started

    def peek(self) -> int:
        """The epoch the main process's next iteration will use (reader 0's view)."""
        return int(self._slots[0]) + int(self._slots[1])
