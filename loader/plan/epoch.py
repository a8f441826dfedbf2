"""Epoch numbers that reach every DataLoader worker, persistent or not, with or without set_epoch.

A persistent worker holds its own copy of the dataset, so a ``set_epoch`` on the main process's
copy does not reach it through Python state. This counter lives in shared memory instead: slot 0
is the base epoch set by ``set_epoch``; slot 1 counts the epochs the main process has read
itself (``num_workers=0``) since that call, and slot ``2 + w`` those worker ``w`` has started.
Each reader writes only its own slot, so no lock is needed, and the workers of one DataLoader
compute the same ``base + started`` because each starts exactly once per epoch. The main
process has its own slot so that reading a batch in it (a quick look before training) does not
put worker 0 an epoch ahead of the others. Readers of different DataLoaders over one dataset
(say 2 workers, then 3) agree only after a ``set_epoch``.
"""

from __future__ import annotations

import torch

from loader._checks import check_int

__all__ = ["MAX_READERS", "SharedEpoch"]

MAX_READERS = 1024


class SharedEpoch:
    """Shared-memory epoch state; survives pickling into worker processes (fork or spawn)."""

    MAIN = -1
    """The reader id of the main process (a DataLoader with ``num_workers=0``)."""

    def __init__(self) -> None:
        self._slots = torch.zeros(MAX_READERS + 2, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        """Called by the main process before an epoch: every reader's next epoch is ``epoch``."""
        epoch = check_int("epoch", epoch, 0)
        self._slots[1:] = 0
        self._slots[0] = epoch

    def begin(self, reader: int) -> int:
        """Called by reader ``reader`` (a worker id, or ``MAIN``) as it starts an epoch; returns
        that epoch's number."""
        if not self.MAIN <= reader < MAX_READERS:
            raise ValueError(
                f"expected a worker id in [0, {MAX_READERS}) or MAIN={self.MAIN}, "
                f"got worker id {reader}"
            )
        slot = 2 + reader
        started = int(self._slots[slot])
        self._slots[slot] = started + 1
        return int(self._slots[0]) + started

    def peek(self) -> int:
        """The epoch the next iteration will use: the base plus the most epochs any reader has
        started since ``set`` (the same for every reader in the usual use)."""
        return int(self._slots[0]) + int(self._slots[1:].max())
