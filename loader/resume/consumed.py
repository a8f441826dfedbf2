"""One rank's record of what its training loop received in the current epoch (main process only).

``Progress`` is fed one batch at a time, as the loop receives it (``ClosingDataLoader``'s
iterator, or ``DevicePrefetcher`` when it hands a batch over). Each batch is attributed to the
worker whose plan holds its first real id (an all-padding batch to the worker whose sample its
fillers repeat, else to the worker that pads the rank), its real ids are marked taken, and that
worker's batch count and padded-row count go up. It is not thread-safe: feed it from the
thread that runs the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from loader.plan.partition import plan_rank
from loader.resume.state import LoaderState, ResumeError, Topology

if TYPE_CHECKING:
    import torch

__all__ = ["Progress"]


class Progress:
    """The epoch ``epoch`` of rank ``rank`` under ``topology``, resumed from ``resume`` when it
    is a state of this epoch (else from the start)."""

    def __init__(
        self,
        sizes: np.ndarray,
        *,
        fingerprint: str,
        seed: int,
        epoch: int,
        rank: int,
        topology: Topology,
        resume: LoaderState | None,
    ) -> None:
        n = int(sizes.sum())
        self.fingerprint, self.seed, self.epoch = fingerprint, seed, epoch
        self.rank, self.topology = rank, topology
        padded: dict[int, list[int]] | None = {}
        if resume is not None and resume.epoch == epoch:
            base, batches = resume.plan_for(topology)
            self.base = base.copy()
            self.taken = resume.taken.copy()
            if batches:  # the saved plan goes on: so do its padded rows
                padded = resume.padded
        else:
            self.base = np.zeros(n, dtype=bool)
            self.taken = np.zeros(n, dtype=bool)
            batches = {}
        self.batches = {r: list(c) for r, c in batches.items()}
        self.batches.setdefault(rank, [0] * topology.num_workers)
        self.padded = None if padded is None else {r: list(c) for r, c in padded.items()}
        if self.padded is not None:
            self.padded.setdefault(rank, [0] * topology.num_workers)
        plans = plan_rank(
            sizes,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=topology.world_size,
            num_workers=topology.num_workers,
            batch_size=topology.batch_size,
            even=topology.even,
            taken=self.base if self.base.any() else None,
        )
        starts, stops, owners = [], [], []
        self._pad_worker, self._pad_ids = 0, np.zeros(0, dtype=np.int64)
        for w, plan in enumerate(plans):
            if plan.pad:
                self._pad_worker, self._pad_ids = w, np.asarray(plan.pad_ids, dtype=np.int64)
            for seg in plan.segments:
                starts.append(seg.first_id)
                stops.append(seg.first_id + len(seg))
                owners.append(w)
        order = np.argsort(starts, kind="stable")
        self._starts = np.asarray(starts, dtype=np.int64)[order]
        self._stops = np.asarray(stops, dtype=np.int64)[order]
        self._owners = np.asarray(owners, dtype=np.int64)[order]

    def record(self, ids: torch.Tensor | np.ndarray, padded: torch.Tensor | np.ndarray) -> None:
        """Mark one received batch: its real ids taken, its worker one batch further."""
        ids_np = np.asarray(ids, dtype=np.int64).ravel()
        pad = np.asarray(padded, dtype=bool).ravel()
        real = ids_np[~pad]
        fillers = ids_np[pad][~np.isin(ids_np[pad], self._pad_ids)]
        if real.size or fillers.size:  # a filler repeats a sample of the worker that made it
            worker = self._worker_of(int(real[0] if real.size else fillers[0]))
        else:
            worker = self._pad_worker
        self.batches[self.rank][worker] += 1
        if self.padded is not None:
            self.padded[self.rank][worker] += int(pad.sum())
        self.taken[real] = True

    def state(self) -> LoaderState:
        """This rank's part: everything taken that it knows of, its own batch counts."""
        return LoaderState(
            fingerprint=self.fingerprint,
            num_samples=len(self.taken),
            seed=self.seed,
            epoch=self.epoch,
            topology=self.topology,
            ranks=(self.rank,),
            batches={self.rank: list(self.batches[self.rank])},
            base=self.base.copy(),
            taken=self.taken.copy(),
            padded=None if self.padded is None else {self.rank: list(self.padded[self.rank])},
        )

    def _worker_of(self, gid: int) -> int:
        # A batch comes from one worker, whose plan holds its ids in runs (segments): the run
        # that starts at or before ``gid`` owns it, unless ``gid`` lies past that run's end.
        i = int(np.searchsorted(self._starts, gid, side="right")) - 1
        if i < 0 or gid >= self._stops[i]:
            raise ResumeError(
                f"expected a batch of rank {self.rank}'s plan for epoch {self.epoch}, got id "
                f"{gid}: record batches of this loader only, and call set_epoch() before each "
                "epoch when the DataLoader is not make_loader's"
            )
        return int(self._owners[i])
