"""The interleave of a mix whose best tree (``loader.mix.interleave``) cannot keep every source
within 2 of its share in every window: Tijdeman's chairman assignment, computed in order.

At step ``t`` (1-based) a source ``s`` with ``c`` positions so far is *released* when
``t * q_s / N - c >= sigma`` (``sigma = 1 / (2n - 2)``, ``n`` the sources with a quota) and its
*deadline* is the last step ``t`` with ``t * q_s / N <= c + 1 - sigma``; each step takes, of the
released sources, the one with the earliest deadline (ties to a priority order drawn from
``(seed, epoch)``). Tijdeman (1980) shows that this never misses a deadline, so every prefix
holds ``i * q_s / N`` of source ``s`` within ``1 - sigma`` and every window within
``2 - 1 / (n - 1)``, below 2 for any number of sources: every batch holds its rounded share of
each source, give or take one. All in integers. The cost is a Python step per position (about
2 s per million here, once per process and epoch), which is why the tree comes first.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

__all__ = ["Sequenced"]

_PRIORITY_TAG = 0x636861  # keeps the priority generator apart from the other (seed, epoch) ones


class Sequenced:
    """The chairman-assignment interleave of ``quotas`` for ``(seed, epoch)``; the same
    interface as ``Interleave``."""

    def __init__(self, quotas: Sequence[int], seed: int, epoch: int) -> None:
        self.quotas = tuple(int(q) for q in quotas)
        self.total = n = sum(self.quotas)
        live = [s for s, q in enumerate(self.quotas) if q]
        if n < 1 or min(self.quotas) < 0:
            raise ValueError(f"expected quotas >= 0 with a positive sum, got {list(quotas)}")
        seq = np.random.SeedSequence([seed, epoch, _PRIORITY_TAG])
        priority = np.random.Generator(np.random.PCG64(seq)).permutation(len(self.quotas))
        self._sources = self._schedule(live, priority.tolist())
        self._draws = np.empty(n, dtype=np.int64)
        for s in live:
            mine = self._sources == s
            self._draws[mine] = np.arange(self.quotas[s])
        k = max(2 * len(live) - 2, 1)
        self._bound = 2.0 - 2.0 / k if len(live) > 1 else 0.0

    def _schedule(self, live: list[int], priority: list[int]) -> np.ndarray:
        n, q = self.total, self.quotas
        k = max(2 * len(live) - 2, 1)
        out = np.empty(n, dtype=np.int64)
        count = dict.fromkeys(live, 0)
        waiting = [(-(-n // (k * q[s])), s) for s in live]  # release of each first position
        heapq.heapify(waiting)
        ready: list[tuple[int, int, int]] = []
        for t in range(1, n + 1):
            while waiting and waiting[0][0] <= t:
                _, s = heapq.heappop(waiting)
                c = count[s]
                heapq.heappush(ready, (((k * (c + 1) - 1) * n) // (k * q[s]), priority[s], s))
            _, _, s = heapq.heappop(ready)
            out[t - 1] = s
            c = count[s] = count[s] + 1
            if c < q[s]:
                release = -(-(k * c * n + n) // (k * q[s]))
                heapq.heappush(waiting, (max(release, t + 1), s))
        return out

    def window_bound(self, source: int) -> float:
        """Any window of ``w`` positions holds ``w * q / N`` of ``source`` within this."""
        return self._bound if self.quotas[source] else 0.0

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.asarray(positions, dtype=np.int64)
        return self._sources[pos], self._draws[pos]

    def sources(self, start: int, stop: int) -> np.ndarray:
        return self._sources[start:stop].copy()

    def count_before(self, source: int, position: int) -> int:
        return int(np.count_nonzero(self._sources[:position] == source))
