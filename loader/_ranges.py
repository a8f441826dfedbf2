"""Private helpers for ``loader.partition``: position-range cutting.

A *position* is an index into an epoch's permuted sample sequence: the shards concatenated in
``order``. ``cum`` holds the permuted shards' cumulative sizes with a leading 0, so permuted
shard ``k`` covers positions ``[cum[k], cum[k + 1])``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["as_sizes", "cut_positions", "position_to_id"]


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
    if stop <= start:
        return []
    k0 = int(np.searchsorted(cum, start, side="right")) - 1
    k1 = int(np.searchsorted(cum, stop, side="left"))
    lo_edge = cum[k0:k1]
    lo = np.maximum(lo_edge, start)
    hi = np.minimum(cum[k0 + 1 : k1 + 1], stop)
    keep = hi > lo
    shards = order[k0:k1][keep]
    begin = (lo - lo_edge)[keep]
    end = (hi - lo_edge)[keep]
    first = first_index[shards] + begin
    return list(zip(shards.tolist(), begin.tolist(), end.tolist(), first.tolist(), strict=True))


def position_to_id(cum: np.ndarray, order: np.ndarray, first_index: np.ndarray, pos: int) -> int:
    """Global id of the sample at permuted position ``pos`` (``0 <= pos < cum[-1]``)."""
    k = int(np.searchsorted(cum, pos, side="right")) - 1
    return int(first_index[order[k]] + pos - cum[k])


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
