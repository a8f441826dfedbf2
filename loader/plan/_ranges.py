"""Private helpers for ``loader.plan.partition``: position-range cutting.

A *position* is an index into an epoch's permuted sample sequence: the shards concatenated in
``order``. ``cum`` holds the permuted shards' cumulative sizes with a leading 0, so permuted
shard ``k`` covers positions ``[cum[k], cum[k + 1])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "as_sizes",
    "cut_many",
    "cut_positions",
    "free_runs",
    "position_to_id",
    "to_positions",
]


def as_sizes(shard_sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """The shard sizes as a new 1-D int64 array; ValueError when empty, non-integer or negative."""
    sizes = np.asarray(shard_sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(
            f"expected a non-empty 1-D list of shard sizes, got shape {sizes.shape} "
            f"(shard_sizes={_short(shard_sizes)})"
        )
    if sizes.dtype.kind not in "iu":
        raise ValueError(
            f"expected integer shard sizes, got dtype {sizes.dtype} "
            f"(shard_sizes={_short(shard_sizes)})"
        )
    sizes = sizes.astype(np.int64)
    if sizes.min() < 0:
        bad = int(np.flatnonzero(sizes < 0)[0])
        raise ValueError(f"expected shard sizes >= 0, got shard_sizes[{bad}]={int(sizes[bad])}")
    return sizes


def cut_positions(
    cum: np.ndarray, order: np.ndarray, first_index: np.ndarray, start: int, stop: int
) -> list[tuple[int, int, int, int]]:
    """Split positions ``[start, stop)`` into per-shard runs, in sequence order.

    Returns ``(shard, start_in_shard, stop_in_shard, first_id)`` for every non-empty run, where
    ``shard`` indexes the unpermuted shard list. Empty shards produce no run.
    """
    return cut_many(cum, order, first_index, np.array([start]), np.array([stop]))


def cut_many(
    cum: np.ndarray, order: np.ndarray, first_index: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> list[tuple[int, int, int, int]]:
    """``cut_positions`` for the sorted, disjoint position runs ``[lo[i], hi[i])`` at once
    (vectorised: a resumed epoch's plan has a run per gap the stop left)."""
    keep = hi > lo
    lo, hi = lo[keep].astype(np.int64), hi[keep].astype(np.int64)
    if not len(lo):
        return []
    # Run i spans permuted shards k0[i] .. k1[i]-1 (it starts inside k0, ends inside k1 - 1).
    k0 = np.searchsorted(cum, lo, side="right") - 1
    k1 = np.searchsorted(cum, hi, side="left")
    pieces = k1 - k0
    # One row per (run, shard) piece without a Python loop: ``owner`` is the run of each piece
    # and ``k`` its shard, k0[owner] plus the piece's rank within its run.
    owner = np.repeat(np.arange(len(lo)), pieces)
    k = np.repeat(k0, pieces) + (
        np.arange(len(owner)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    )
    # Clip each piece to its run, in shard-local coordinates; a run ending on a shard edge
    # yields an empty piece there, dropped below.
    edge = cum[k]
    begin = np.maximum(edge, lo[owner]) - edge
    end = np.minimum(cum[k + 1], hi[owner]) - edge
    full = end > begin
    shards = order[k][full]
    begin, end = begin[full], end[full]
    first = first_index[shards] + begin
    return list(zip(shards.tolist(), begin.tolist(), end.tolist(), first.tolist(), strict=True))


def position_to_id(cum: np.ndarray, order: np.ndarray, first_index: np.ndarray, pos: int) -> int:
    """Global id of the sample at permuted position ``pos`` (``0 <= pos < cum[-1]``)."""
    k = int(np.searchsorted(cum, pos, side="right")) - 1
    return int(first_index[order[k]] + pos - cum[k])


def free_runs(
    cum: np.ndarray, order: np.ndarray, first_index: np.ndarray, taken: np.ndarray
) -> np.ndarray:
    """``[start, stop)`` position runs (int64 ``[k, 2]``, in sequence order) whose samples are
    not marked in ``taken``, a bool array indexed by global id."""
    total = int(cum[-1])
    sizes = np.diff(cum)
    # The global id at every position: position + (shard's first id - shard's first position).
    ids = np.arange(total, dtype=np.int64)
    ids += np.repeat(first_index[order] - cum[:-1], sizes)
    # Zero-padded free mask: its rises and falls pair up as the [start, stop) of each free run.
    free = np.zeros(total + 2, dtype=np.int8)
    free[1:-1] = ~taken[ids]
    edges = np.flatnonzero(np.diff(free))
    return edges.reshape(-1, 2).astype(np.int64)


def to_positions(
    runs: np.ndarray, vcum: np.ndarray, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map ``[start, stop)`` of a filtered sequence (the positions of ``runs`` one after the
    other; ``vcum`` their cumulative lengths with a leading 0) to real position runs
    ``[lo[i], hi[i])``."""
    if stop <= start:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i0 = int(np.searchsorted(vcum, start, side="right")) - 1
    i1 = int(np.searchsorted(vcum, stop, side="left"))
    lo = runs[i0:i1, 0] + np.maximum(start - vcum[i0:i1], 0)
    hi = runs[i0:i1, 0] + np.minimum(stop, vcum[i0 + 1 : i1 + 1]) - vcum[i0:i1]
    return lo, hi


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
