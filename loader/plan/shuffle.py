"""The in-worker shuffle as an order over a worker's plan, so a resumed worker can skip ahead.

A worker's samples pass through a bounded shuffle buffer of ``size`` slots: the first ``size``
fill it, then each further sample swaps with a slot drawn from ``rng`` and the slot's old sample
is emitted; at the end the buffer is shuffled and emitted. ``emission_order`` draws the same
order over sample *indices* (no data), so the order of a worker's epoch is known before a byte is
read, and the first ``skip`` emitted samples of a resumed worker can be left unread
(``kept_segments``) while the rest come out exactly as in an uninterrupted run. ``reorder`` puts
sequentially read samples into that order holding at most ``size`` of them at once (a sample
waits only while the buffer would have held it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from loader.plan.partition import Segment, WorkerPlan
    from loader.reader import RawSample

__all__ = [
    "batch_ids",
    "emission_order",
    "kept_segments",
    "plan_ids",
    "reorder",
    "worker_seed",
]

_DRAWS = 1024  # slots drawn per call: one call per sample costs ~2 us


def worker_seed(seed: int, epoch: int, rank: int, worker: int, left_out: int = 0) -> list[int]:
    """The seed of a worker's shuffle generator; ``left_out`` (the samples a resumed plan was
    cut without) gives a plan cut afresh an order of its own."""
    return [seed, epoch, rank, worker] + ([left_out] if left_out else [])


def emission_order(n: int, size: int, rng: np.random.Generator) -> Iterator[int]:
    """Indices ``0..n-1`` in the order a shuffle buffer of ``size`` slots emits them
    (``size <= 1``: in order, drawing nothing)."""
    if size <= 1:
        yield from range(n)
        return
    buf = list(range(min(size, n)))
    draws: list[int] = []
    for i in range(size, n):
        if not draws:
            draws = rng.integers(size, size=_DRAWS).tolist()[::-1]
        j = draws.pop()
        yield buf[j]
        buf[j] = i
    rng.shuffle(buf)
    yield from buf


def plan_ids(plan: WorkerPlan) -> np.ndarray:
    """The global ids of ``plan``'s samples in reading order (int64)."""
    if not plan.segments:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(
        [np.arange(s.first_id, s.first_id + len(s), dtype=np.int64) for s in plan.segments]
    )


def kept_segments(plan: WorkerPlan, skipped: np.ndarray) -> list[Segment]:
    """``plan``'s segments less the samples whose plan index is marked in ``skipped`` (bool,
    one per sample), split into runs that are read one after the other."""
    from loader.plan.partition import Segment

    out: list[Segment] = []
    offset = 0
    for seg in plan.segments:
        keep = np.zeros(len(seg) + 2, dtype=np.int8)
        keep[1:-1] = ~skipped[offset : offset + len(seg)]
        edges = np.flatnonzero(np.diff(keep)).reshape(-1, 2)
        for a, b in edges.tolist():
            out.append(Segment(seg.shard, seg.start + a, seg.start + b, seg.first_id + a))
        offset += len(seg)
    return out


def reorder(samples: Iterator[RawSample], order: Iterator[int]) -> Iterator[RawSample]:
    """Yield the samples whose global ids ``order`` names, in that order, reading ``samples``
    (sequential, exactly the ids of ``order``) only as far as needed."""
    pending: dict[int, RawSample] = {}
    for gid in order:
        sample = pending.pop(gid, None)
        while sample is None:
            got = next(samples)
            if got.gid == gid:
                sample = got
            else:
                pending[got.gid] = got
        yield sample


def batch_ids(
    plan: WorkerPlan, batch_size: int, size: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(ids, padded)`` of each batch a worker yields for ``plan`` (pads last), with no bad
    samples: what ``ShardDataset`` delivers, computed without reading. For planning and tests."""
    ids = plan_ids(plan)
    ordered = ids[np.fromiter(emission_order(len(ids), size, rng), np.int64, len(ids))]
    stream = np.concatenate([ordered, np.asarray(plan.pad_ids, dtype=np.int64)])
    padded = np.arange(len(stream)) >= len(ordered)
    return [
        (stream[i : i + batch_size], padded[i : i + batch_size])
        for i in range(0, len(stream), batch_size)
    ]
