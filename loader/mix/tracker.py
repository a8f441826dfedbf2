"""``MixTracker``: delivery counts per source of a mix, against each source's plan
(docs/architecture.md, "Mixing", "Tracker").

One ``DuplicateTracker`` per source counts the deliveries of each id within that source. An
epoch of a mix may plan an id more than once (a quota above the source's size, or a pass that
ends inside the epoch), so duplicates and missing samples are counted against the planned
number of each id: ``duplicates = sum(max(0, got - planned))``, ``missing =
sum(max(0, planned - got))``; with exactly the plan delivered both are 0. ``state_dict`` and
``load_state_dict`` carry the counts across a stop, as ``DuplicateTracker``'s do. Not
thread-safe: feed it from the training loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loader.tracker import DuplicateTracker

if TYPE_CHECKING:
    import torch

    from loader.mix.plan import MixPlan

__all__ = ["MixTracker", "SourceCounts"]


@dataclass(frozen=True)
class SourceCounts:
    """One source's counts in one epoch."""

    source: int
    quota: int
    delivered: int
    unique: int
    duplicates: int
    missing: int
    padded: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class MixTracker:
    """Counts the rows of each source per epoch of ``plan`` (``start_epoch``, ``update`` per
    batch, ``end_epoch``); ``start_epoch(0)`` is implied."""

    def __init__(self, plan: MixPlan) -> None:
        self.plan = plan
        self.trackers = [DuplicateTracker(size) for size in plan.sizes]
        self.history: list[list[SourceCounts]] = []
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Open ``epoch``: counters at zero, each id's planned count from the plan."""
        self.epoch = epoch
        for tracker in self.trackers:
            tracker.start_epoch(epoch)
        source, ids = self.plan.lookup(epoch, np.arange(self.plan.epoch_size))
        self._planned = [
            np.bincount(ids[source == s], minlength=size) for s, size in enumerate(self.plan.sizes)
        ]

    def update(
        self,
        source: np.ndarray | torch.Tensor,
        ids: np.ndarray | torch.Tensor,
        padded: np.ndarray | torch.Tensor,
    ) -> None:
        """Count one batch: each row's ``source``, ``id`` within it and ``padded`` flag."""
        src = np.asarray(source, dtype=np.int64).ravel()
        ids_np = np.asarray(ids, dtype=np.int64).ravel()
        pad = np.asarray(padded, dtype=bool).ravel()
        if not (src.shape == ids_np.shape == pad.shape):
            raise ValueError(
                f"expected one source and padded flag per id ({ids_np.size}), got "
                f"{src.size} sources and {pad.size} flags"
            )
        if src.size and (src.min() < 0 or src.max() >= len(self.trackers)):
            raise ValueError(
                f"expected sources in [0, {len(self.trackers)}), got {sorted(set(src.tolist()))}"
            )
        for s in np.unique(src).tolist():
            mine = src == s
            self.trackers[s].update(ids_np[mine], pad[mine])

    def counts(self) -> list[SourceCounts]:
        """The counts of the epoch so far, per source."""
        out = []
        for s, tracker in enumerate(self.trackers):
            got = tracker.counters.astype(np.int64)
            planned = self._planned[s]
            now = tracker.counts()
            out.append(
                SourceCounts(
                    source=s,
                    quota=self.plan.quotas[s],
                    delivered=now.delivered,
                    unique=now.unique,
                    duplicates=int(np.maximum(got - planned, 0).sum()),
                    missing=int(np.maximum(planned - got, 0).sum()),
                    padded=now.padded,
                )
            )
        return out

    def end_epoch(self) -> list[SourceCounts]:
        """Close the epoch: its counts per source, appended to ``history``; the next epoch
        opens."""
        counts = self.counts()
        self.history.append(counts)
        self.start_epoch(self.epoch + 1)
        return counts

    def all_ranks(self) -> MixTracker:
        """A new tracker holding this epoch's counts over every rank: each source's
        ``DuplicateTracker.all_ranks()`` (one all-reduce per source; this rank's counts when
        ``torch.distributed`` is not initialised). Collective: every rank calls it at the same
        point. Its ``counts()`` are the job's per source, the view a stats report sends with
        ``sources_merged=True``."""
        merged = MixTracker.__new__(MixTracker)
        merged.plan, merged.epoch, merged._planned = self.plan, self.epoch, self._planned
        merged.trackers = [tracker.all_ranks() for tracker in self.trackers]
        merged.history = list(self.history)
        return merged

    def state_dict(self) -> dict[str, Any]:
        """The open epoch, each source's ``DuplicateTracker`` state and the history."""
        return {
            "epoch": self.epoch,
            "sources": [t.state_dict() for t in self.trackers],
            "history": [[c.to_dict() for c in counts] for counts in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s result; ``ValueError`` for a state of another
        number of sources (or a source's own refusal: another size, corrupt counters)."""
        parts = state.get("sources") if isinstance(state, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.trackers):
            got = len(parts) if isinstance(parts, list) else parts
            raise ValueError(
                f"expected a tracker state of {len(self.trackers)} sources, got {got}: load "
                "the state of this mix"
            )
        self.start_epoch(int(state["epoch"]))
        for tracker, part in zip(self.trackers, parts, strict=True):
            tracker.load_state_dict(part)
        self.history = [[SourceCounts(**c) for c in counts] for counts in state["history"]]
