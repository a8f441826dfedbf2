"""``ResumeKeeper``: the resume half of a ``ShardDataset``, an object the dataset owns.

It runs in the main process (``record``, ``state_dict``, ``load_state_dict``); the workers get
it pickled with the dataset and read only ``loaded``, the state to continue from, in their
``__iter__``. Its bookkeeping: ``_current`` is the epoch whose batches ``record`` counts,
``_progress`` that epoch's ``Progress`` (made on first use, for ``num_workers`` workers), and
``iterated`` whether an iteration began (then ``load_state_dict`` is refused: the workers
already have their plan), ``under_way`` whether an epoch began and has not yet ended. See
``loader.resume.state`` for the state and docs/architecture.md,
section "Resume".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from loader._checks import check_int
from loader.plan.ranks import rank_and_world
from loader.resume.consumed import Progress
from loader.resume.reconcile import reconcile
from loader.resume.state import LoaderState, ResumeError, Topology, fingerprint, merge_states

if TYPE_CHECKING:
    from loader.plan.epoch import SharedEpoch
    from loader.sources import DatasetSource

__all__ = ["ResumeKeeper"]


class ResumeKeeper:
    """``state_dict``/``load_state_dict``/``record`` for one dataset: its ``source``, shard
    ``sizes``, ``seed``, the epoch counter it shares with the workers, its pinned rank and world
    size (``None``: resolved when asked) and the settings that make up its ``Topology``."""

    def __init__(
        self,
        source: DatasetSource,
        sizes: np.ndarray,
        *,
        seed: int,
        epoch: SharedEpoch,
        batch_size: int,
        even: str,
        shuffle_size: int,
        rank: int | None,
        world_size: int | None,
    ) -> None:
        self.source, self.sizes, self.seed, self.epoch = source, sizes, seed, epoch
        self.batch_size, self.even, self.shuffle_size = batch_size, even, shuffle_size
        self.rank, self.world_size = rank, world_size
        self.loaded: LoaderState | None = None
        self.num_workers = 0
        self.iterated = False
        self.under_way = False
        self._progress: Progress | None = None
        self._current: int | None = None
        self._fingerprint: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_progress"] = None  # the main process's count; a worker never records
        return state

    @property
    def fingerprint(self) -> str:
        """The dataset's fingerprint (``loader.resume.state.fingerprint``), computed once."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.source)
        return self._fingerprint

    @property
    def current_epoch(self) -> int | None:
        """The epoch whose batches ``record`` counts now (the one under way); ``None`` before
        the first iteration."""
        return self._current

    def topology(self, num_workers: int, world_size: int | None = None) -> Topology:
        """The topology the dataset iterates with ``num_workers`` DataLoader workers."""
        world = world_size if world_size is not None else self._rank_and_world()[1]
        return Topology(world, num_workers, self.batch_size, self.even, self.shuffle_size)

    def begin_epoch(self, num_workers: int) -> None:
        """From now on ``record`` counts batches of the epoch that begins (called before the
        workers start it)."""
        self.iterated = True
        self.under_way = True
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.follow(self.epoch.peek())

    def end_epoch(self) -> None:
        """The loop received the epoch's last batch: the state now says the next epoch, nothing
        taken."""
        self.under_way = False
        if self._current is not None:
            self.follow(self._current + 1)

    def record(self, ids: torch.Tensor, padded: torch.Tensor, num_workers: int | None) -> None:
        """Count a batch's ``ids`` (``padded`` rows aside) as received by the training loop."""
        self._workers(num_workers)
        self.iterated = True
        self._progress_now().record(ids, padded)

    def state_dict(self, num_workers: int | None = None) -> dict[str, Any]:
        """What the training loop has received this epoch, as a dict of plain types. Under
        ``torch.distributed`` every rank must call it at the same step: the ranks' parts are
        gathered and every rank returns the same global state. With ranks from
        ``RANK``/``WORLD_SIZE`` only, it covers this rank; pass every rank's state as a list to
        ``load_state_dict``."""
        self._workers(num_workers)
        state = self._progress_now().state().to_dict()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, state)
            state = merge_states(gathered).to_dict()
        return state

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continue from ``state`` (a ``state_dict()`` result, or the list of every old rank's):
        the next iteration delivers that epoch's samples the loop had not received, cut for
        this loader's ranks, workers and batch size. Call it before the first iteration.
        Raises ``ResumeError`` for a state of another dataset or seed, a newer format, a
        corrupt state (any field of the wrong type or range, batch counts the bitmap does not
        back: ``loader.resume.reconcile``), or a call after iteration began."""
        if self.iterated:
            raise ResumeError(
                "load_state_dict() after iteration began: the workers already have their plan; "
                "call it on a new loader before its first iter()"
            )
        loaded = merge_states(state)
        mine, count = self.fingerprint, self.source.num_samples
        if loaded.fingerprint != mine or loaded.num_samples != count:
            raise ResumeError(
                f"expected a state of this dataset ({count} samples, fingerprint "
                f"{mine[:12]}), got one of {loaded.num_samples} samples, fingerprint "
                f"{loaded.fingerprint[:12]}: resume with the shards that saved it"
            )
        if loaded.seed != self.seed:
            raise ResumeError(
                f"expected a state saved with this loader's seed={self.seed}, got "
                f"seed={loaded.seed}: construct the loader with seed={loaded.seed}"
            )
        reconcile(loaded, self.sizes)
        self.loaded = loaded
        self.epoch.set(loaded.epoch)
        self._progress = None
        self._current = loaded.epoch

    def follow(self, epoch: int) -> None:
        """Count ``epoch`` from now on (a new epoch starts with nothing recorded)."""
        if self._current != epoch:
            self._progress = None
        self._current = epoch

    def _workers(self, num_workers: int | None) -> None:
        if num_workers is not None and num_workers != self.num_workers:
            self.num_workers = check_int("num_workers", num_workers, 0)
            self._progress = None

    def _rank_and_world(self) -> tuple[int, int]:
        return rank_and_world(self.rank, self.world_size)

    def _progress_now(self) -> Progress:
        if self._current is None:
            self._current = self.epoch.peek()
        rank, world = self._rank_and_world()
        if self._progress is None:
            self._progress = Progress(
                self.sizes,
                fingerprint=self.fingerprint,
                seed=self.seed,
                epoch=self._current,
                rank=rank,
                topology=self.topology(self.num_workers, world),
                resume=self.loaded,
            )
        return self._progress
