"""The resume half of ``ShardDataset``: what the training loop received, saved and loaded.

``Resumable`` is mixed into ``ShardDataset`` and runs in the main process only (workers get
``_resume``, the loaded state, pickled with the dataset, and read it in ``__iter__``). Its
bookkeeping: ``_current`` is the epoch whose batches ``record`` counts, ``_progress`` that
epoch's ``Progress`` (made on first use, for ``_num_workers`` workers), ``_iterated`` whether an
iteration began (then ``load_state_dict`` is refused: the workers already have their plan). See
``loader.resume`` for the state and docs/architecture.md, section "Resume".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from loader._checks import check_int
from loader._consumed import Progress
from loader._epoch import SharedEpoch
from loader.ranks import rank_and_world
from loader.resume import LoaderState, ResumeError, Topology, fingerprint, merge_states

if TYPE_CHECKING:
    from loader.batch import Batch
    from loader.bytebatch import ByteBatch
    from loader.sources import DatasetSource

__all__ = ["Resumable"]


class Resumable:
    """``state_dict``/``load_state_dict``/``record`` for a dataset with the attributes below."""

    source: DatasetSource
    seed: int
    batch_size: int
    even: str
    shuffle_buffer: int
    train: bool
    _sizes: np.ndarray
    _epoch: SharedEpoch
    _rank: int | None
    _world: int | None
    _resume: LoaderState | None
    _progress: Progress | None
    _current: int | None
    _num_workers: int
    _iterated: bool

    @property
    def num_samples(self) -> int:
        return self.source.num_samples

    def topology(self, num_workers: int, world_size: int | None = None) -> Topology:
        """The topology this dataset iterates with ``num_workers`` DataLoader workers."""
        world = world_size if world_size is not None else rank_and_world(self._rank, self._world)[1]
        size = self.shuffle_buffer if self.train else 0
        return Topology(world, num_workers, self.batch_size, self.even, size)

    def begin_epoch(self, num_workers: int) -> None:
        """Called by the main process as a DataLoader over this dataset starts an epoch (before
        its workers start it): from now on ``record`` counts batches of that epoch."""
        self._iterated = True
        self._num_workers = check_int("num_workers", num_workers, 0)
        self._follow(self._epoch.peek())

    def end_epoch(self) -> None:
        """Called by the main process when the loop has received the epoch's last batch: the
        state now says the next epoch, nothing taken."""
        if self._current is not None:
            self._follow(self._current + 1)

    def record(self, batch: Batch | ByteBatch, num_workers: int | None = None) -> None:
        """Count ``batch`` as received by the training loop. ``make_loader``'s loader calls it
        for every batch it hands over; with a plain ``DataLoader`` call it for every batch your
        loop takes (with the loader's ``num_workers``) and ``set_epoch`` before every epoch."""
        if num_workers is not None and num_workers != self._num_workers:
            self._num_workers = check_int("num_workers", num_workers, 0)
            self._progress = None
        self._iterated = True
        self._progress_now().record(batch.ids, batch.padded)

    def state_dict(self, num_workers: int | None = None) -> dict[str, Any]:
        """What the training loop has received this epoch (``loader.resume.LoaderState`` as a
        dict of plain types). Under ``torch.distributed`` every rank must call it at the same
        step: the ranks' parts are gathered and every rank returns the same global state. With
        ranks from ``RANK``/``WORLD_SIZE`` only, it covers this rank; pass every rank's state
        as a list to ``load_state_dict``."""
        if num_workers is not None and num_workers != self._num_workers:
            self._num_workers = check_int("num_workers", num_workers, 0)
            self._progress = None
        state = self._progress_now().state().to_dict()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, state)
            state = merge_states(gathered).to_dict()
        return state

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Resume from ``state`` (a ``state_dict()`` result, or the list of every old rank's):
        the next iteration delivers that epoch's samples the loop had not received, cut for
        this loader's ranks, workers and batch size. Call it before the first iteration.
        Raises ``ResumeError`` for a state of another dataset or seed, a newer format, a
        corrupt state, or a call after iteration began."""
        if self._iterated:
            raise ResumeError(
                "load_state_dict() after iteration began: the workers already have their plan; "
                "call it on a new loader before its first iter()"
            )
        loaded = merge_states(state)
        mine = self.fingerprint
        if loaded.fingerprint != mine or loaded.num_samples != self.num_samples:
            raise ResumeError(
                f"expected a state of this dataset ({self.num_samples} samples, fingerprint "
                f"{mine[:12]}), got one of {loaded.num_samples} samples, fingerprint "
                f"{loaded.fingerprint[:12]}: resume with the shards that saved it"
            )
        if loaded.seed != self.seed:
            raise ResumeError(
                f"expected a state saved with this loader's seed={self.seed}, got "
                f"seed={loaded.seed}: construct the loader with seed={loaded.seed}"
            )
        self._resume = loaded
        self._epoch.set(loaded.epoch)
        self._progress = None
        self._current = loaded.epoch

    @property
    def fingerprint(self) -> str:
        """The dataset's fingerprint (``loader.resume.fingerprint``)."""
        return fingerprint(self.source)

    def _follow(self, epoch: int) -> None:
        if self._current != epoch:
            self._progress = None
        self._current = epoch

    def _progress_now(self) -> Progress:
        if self._current is None:
            self._current = self._epoch.peek()
        rank, world = rank_and_world(self._rank, self._world)
        if self._progress is None:
            self._progress = Progress(
                self._sizes,
                fingerprint=self.fingerprint,
                seed=self.seed,
                epoch=self._current,
                rank=rank,
                topology=self.topology(self._num_workers, world),
                resume=self._resume,
            )
        return self._progress
