"""``MixPlan``: the mixed epoch as a sequence of ``(source, id)`` positions (docs/architecture.md,
"Mixing").

Epoch ``e`` has ``epoch_size`` positions. ``interleave_for(quotas, seed, e)`` gives each
position its source and its draw index ``k`` within that source; the source's stream
(``SourcePasses``) turns draw ``start(s, e) + k`` into an id. The positions are then cut across
ranks and workers by the partition's rule, as one shard of ``epoch_size`` samples
(``loader.plan.partition``): the plan of a worker is a set of position runs, each mapped here to
its sources' ids and shard runs. All of it is a pure function of the shard sizes, quotas, seed
and epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from loader.mix._chairman import Sequenced
from loader.mix.interleave import Interleave, interleave_for, tree_shape
from loader.mix.passes import Run, SourcePasses
from loader.mix.quotas import stop_epoch
from loader.mix.source import EXHAUSTION, MixError

__all__ = ["MixPlan"]

_KEEP = 2  # interleaves kept: the current epoch and the next


class MixPlan:
    """The epochs of a mix: one shard-size list per source, each source's quota (before the
    ``"stop"`` shortening), the seed and the exhaustion rule (``"cycle"`` or ``"stop"``)."""

    def __init__(
        self,
        shard_sizes: Sequence[Sequence[int] | np.ndarray],
        quotas: Sequence[int],
        *,
        seed: int,
        exhaustion: str = "cycle",
    ) -> None:
        if exhaustion not in EXHAUSTION:
            raise MixError(f"expected exhaustion in {EXHAUSTION}, got exhaustion={exhaustion!r}")
        if len(shard_sizes) != len(quotas) or not quotas:
            raise MixError(
                f"expected one quota per source, got {len(shard_sizes)} sources and "
                f"{len(quotas)} quotas"
            )
        self.seed, self.exhaustion = seed, exhaustion
        self.passes = [SourcePasses(sizes, seed, s) for s, sizes in enumerate(shard_sizes)]
        self.sizes = [p.size for p in self.passes]
        self.stopped_by: int | None = None
        self.quotas = [int(q) for q in quotas]
        if exhaustion == "stop":
            self.quotas, self.stopped_by = stop_epoch(self.quotas, self.sizes)
        self.epoch_size = sum(self.quotas)
        self.shape = tree_shape(self.quotas)
        self._interleaves: dict[int, Interleave | Sequenced] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_interleaves"] = {}  # each process places its epochs itself
        return state

    def start(self, source: int, epoch: int) -> int:
        """The stream draw at which ``source``'s part of epoch ``epoch`` begins."""
        step = self.quotas[source] if self.exhaustion == "cycle" else self.sizes[source]
        return epoch * step

    def pass_position(self, source: int, epoch: int) -> tuple[int, int]:
        """``(pass, offset)``: where in its passes ``source`` is when epoch ``epoch`` begins."""
        return divmod(self.start(source, epoch), self.sizes[source])

    def interleave(self, epoch: int) -> Interleave | Sequenced:
        """Epoch ``epoch``'s interleave (the last few kept)."""
        found = self._interleaves.get(epoch)
        if found is None:
            if len(self._interleaves) >= _KEEP:
                self._interleaves.clear()
            found = interleave_for(self.quotas, self.seed, epoch, self.shape)
            self._interleaves[epoch] = found
        return found

    def lookup(self, epoch: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(source, id)`` (int64 arrays) of each position of epoch ``epoch`` in ``positions``."""
        source, draw = self.interleave(epoch).locate(positions)
        ids = np.empty_like(draw)
        for s in np.unique(source).tolist():
            mask = source == s
            ids[mask] = self.passes[s].ids(draw[mask] + self.start(s, epoch))
        return source, ids

    def reads(self, epoch: int, runs: Sequence[tuple[int, int]]) -> list[list[Run]]:
        """Per source, the shard runs its positions inside the position runs ``runs`` (sorted,
        disjoint ``[start, stop)``) read, in position order."""
        inter = self.interleave(epoch)
        out: list[list[Run]] = []
        for s, passes in enumerate(self.passes):
            first = self.start(s, epoch)
            found: list[Run] = []
            for a, b in runs:
                lo, hi = inter.count_before(s, a), inter.count_before(s, b)
                if hi > lo:
                    found.extend(passes.runs(first + lo, first + hi))
            out.append(found)
        return out

    def describe(self, epoch: int) -> list[dict[str, Any]]:
        """Per source: quota, size and pass position at the start of ``epoch`` (for states and
        reports)."""
        return [
            {
                "quota": self.quotas[s],
                "size": self.sizes[s],
                "pass": self.pass_position(s, epoch)[0],
                "offset": self.pass_position(s, epoch)[1],
            }
            for s in range(len(self.passes))
        ]
