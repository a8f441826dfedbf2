"""A source drawn in passes without replacement (docs/architecture.md, "Mixing").

Pass ``p`` of source ``s`` is the source's shards in an order drawn from
``PCG64(SeedSequence([seed, s, p]))``, concatenated: every sample once, in runs that are
contiguous inside a shard (read sequentially; the workers' shuffle buffer mixes the samples).
The passes follow one another into an endless *stream*; epoch ``e`` of a cycling source takes
stream draws ``[e * q, (e + 1) * q)``, so a pass an epoch does not finish continues in the next
and no sample repeats before every sample of the source has been drawn. A stopping source takes
``[e * size, e * size + q)``: every epoch is a fresh pass. Positions inside a pass are cut into
shard runs by the partition's own rule (``loader.plan._ranges.cut_positions``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from loader.plan._ranges import as_sizes, cut_positions

__all__ = ["Run", "SourcePasses", "pass_order"]

_KEEP = 4  # pass layouts kept: an epoch spans one or two passes of a source

Run = tuple[int, int, int, int]
"""``(shard, start, stop, first_id)``: samples ``[start, stop)`` of a shard, ``first_id`` the
source id of ``start``."""


def pass_order(num_shards: int, seed: int, source: int, pass_: int) -> np.ndarray:
    """The shard order (int64 permutation) of pass ``pass_`` of source ``source``."""
    seq = np.random.SeedSequence([seed, source, pass_])
    return np.random.Generator(np.random.PCG64(seq)).permutation(num_shards).astype(np.int64)


class SourcePasses:
    """The endless stream of source ``source`` (its shard sizes ``shard_sizes``) for ``seed``."""

    def __init__(self, shard_sizes: Sequence[int] | np.ndarray, seed: int, source: int) -> None:
        self.sizes = as_sizes(shard_sizes)
        self.size = int(self.sizes.sum())
        if self.size < 1:
            raise ValueError(f"expected a source with samples, got shard sizes {list(self.sizes)}")
        self.seed, self.source = seed, source
        self.first_index = np.zeros(len(self.sizes), dtype=np.int64)
        np.cumsum(self.sizes[:-1], out=self.first_index[1:])
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _layout(self, pass_: int) -> tuple[np.ndarray, np.ndarray]:
        """Pass ``pass_``'s shard order and cumulative sizes (the last few kept)."""
        if pass_ in self._cache:
            return self._cache[pass_]
        if len(self._cache) >= _KEEP:
            self._cache.clear()
        order = pass_order(len(self.sizes), self.seed, self.source, pass_)
        cum = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes[order], out=cum[1:])
        self._cache[pass_] = (order, cum)
        return order, cum

    def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """``(pass, start_in_pass, stop_in_pass)`` covering stream draws ``[start, stop)``."""
        pieces = []
        while start < stop:
            p, offset = divmod(start, self.size)
            take = min(stop - start, self.size - offset)
            pieces.append((p, offset, offset + take))
            start += take
        return pieces

    def runs(self, start: int, stop: int) -> list[Run]:
        """The shard runs of stream draws ``[start, stop)``, in stream order."""
        out: list[Run] = []
        for p, a, b in self._pieces(start, stop):
            order, cum = self._layout(p)
            out.extend(cut_positions(cum, order, self.first_index, a, b))
        return out

    def ids(self, draws: np.ndarray) -> np.ndarray:
        """The source id of each stream draw in ``draws`` (int64, non-negative)."""
        draws = np.asarray(draws, dtype=np.int64)
        out = np.empty(draws.shape, dtype=np.int64)
        passes, offsets = np.divmod(draws, self.size)
        for p in np.unique(passes).tolist():
            mask = passes == p
            order, cum = self._layout(int(p))
            pos = offsets[mask]
            k = np.searchsorted(cum, pos, side="right") - 1
            out[mask] = self.first_index[order[k]] + pos - cum[k]
        return out
