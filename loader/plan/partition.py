"""Which samples each worker of each rank reads: the rule of (docs/architecture.md, "Partition").

For epoch ``e`` the shard order is permuted with a generator seeded from ``(seed, e)`` and the
shards are concatenated into one sequence of *positions*. That sequence is cut twice:

1. into ``world_size`` contiguous rank shares whose sizes differ by at most one sample (the
   first ``total % world_size`` ranks get one more);
2. each share into ``num_workers`` contiguous worker ranges at batch boundaries: the share's
   ``share // batch_size`` full batches are spread so that counts differ by at most one (earlier
   workers get the extra), and the ``share % batch_size`` leftover samples (the share's only
   partial batch) go to worker ``full_batches % num_workers``, the first worker with the fewest
   full batches. A rank therefore yields exactly ``ceil(share / batch_size)`` batches.

Rank batch counts then differ only when the short ranks' share is a multiple of ``batch_size``
and some ranks hold one more sample; the ``even`` policy settles that case:

- ``"none"``: nothing changes; the long ranks yield one batch more.
- ``"pad"``: each short rank appends one padded sample, a repeat of the last sample of its
  share (``WorkerPlan.pad_ids``), as an extra one-sample batch of the worker that would have
  held a partial batch (the first worker with the fewest batches). A share is never empty
  because ``world_size > total`` is rejected; were it empty, global id 0 would be repeated.
- ``"drop"``: each long rank leaves out the one sample of its partial batch (with
  ``batch_size == 1``: the last sample of the last worker with the most batches). The plan's
  segments already exclude it; ``WorkerPlan.drop`` says how many were left out, for reporting.

Everything here is a pure function of its arguments: every worker of every rank computes its own
plan with no communication. Cutting works on positions through a cumulative sum and
``np.searchsorted``, and the same code cuts a filtered sequence: with ``taken`` (a bool array
over global ids, the samples a stopped run already consumed, ``loader.resume.state``) the
positions of taken samples are left out and the rest, still in the epoch's order, is cut by
the rules above
(docs/architecture.md, section "Resume"). Only there may a rank share be empty: a pad sample of
an empty share repeats the last sample before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loader._checks import check_int
from loader.plan._ranges import (
    as_sizes,
    cut_many,
    cut_positions,
    free_runs,
    position_to_id,
    to_positions,
)

__all__ = [
    "EVEN_POLICIES",
    "Segment",
    "WorkerPlan",
    "plan_epoch",
    "plan_rank",
    "plan_worker",
    "rank_shares",
    "shard_order",
    "worker_ranges",
]

EVEN_POLICIES = ("pad", "drop", "none")


@dataclass(frozen=True)
class Segment:
    """A contiguous run of samples inside one shard."""

    shard: int  # index into the manifest's shard list (not the permuted position)
    start: int  # first position within the shard (0-based)
    stop: int  # one past the last position within the shard
    first_id: int  # global id of position ``start`` (shard first_index + start)

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank reads in one epoch.

    Invariants: ``num_samples == sum(len(s) for s in segments)``;
    ``num_batches == ceil((num_samples + pad) / batch_size)``; ``len(pad_ids) == pad``;
    ``pad`` and ``drop`` are 0 or 1 and never both 1. The worker reads ``segments`` in order,
    then appends the ``pad_ids`` samples marked as padding. ``drop`` counts samples the policy
    left out of ``segments``; the worker reads nothing for them and only reports the count.
    """

    segments: tuple[Segment, ...]
    num_samples: int
    num_batches: int
    pad: int = 0
    drop: int = 0
    pad_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Layout:
    """An epoch's permuted sequence and rank shares, shared by all plans of that epoch."""

    order: np.ndarray
    cum: np.ndarray
    first_index: np.ndarray
    shares: list[tuple[int, int]]
    world_size: int
    total: int  # positions to cut: all of them, or the free ones when ``runs`` is set
    runs: np.ndarray | None = None  # free position runs ``[k, 2]`` of a filtered sequence
    vcum: np.ndarray | None = None  # cumulative lengths of ``runs`` with a leading 0

    def cut(self, start: int, stop: int) -> list[tuple[int, int, int, int]]:
        """Segments of sequence positions ``[start, stop)`` (filtered when ``runs`` is set)."""
        if self.runs is None or self.vcum is None:
            return cut_positions(self.cum, self.order, self.first_index, start, stop)
        lo, hi = to_positions(self.runs, self.vcum, start, stop)
        return cut_many(self.cum, self.order, self.first_index, lo, hi)

    def id_at(self, pos: int) -> int:
        """Global id at sequence position ``pos`` (filtered when ``runs`` is set)."""
        if self.runs is not None and self.vcum is not None:
            pos = int(to_positions(self.runs, self.vcum, pos, pos + 1)[0][0])
        return position_to_id(self.cum, self.order, self.first_index, pos)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shard permutation (int64), drawn from ``PCG64(SeedSequence([seed, epoch]))``.

    The same ``(num_shards, seed, epoch)`` always gives the same order, on every machine.
    """
    n = check_int("num_shards", num_shards, 1)
    seq = np.random.SeedSequence([check_int("seed", seed, 0), check_int("epoch", epoch, 0)])
    return np.random.Generator(np.random.PCG64(seq)).permutation(n).astype(np.int64)


def rank_shares(total: int, world_size: int, *, allow_empty: bool = False) -> list[tuple[int, int]]:
    """``[start, stop)`` of each rank's share of ``total`` positions, in rank order.

    Shares are contiguous, cover ``[0, total)``, and the first ``total % world_size`` are one
    sample longer than the rest. Raises ValueError when ``world_size > total`` unless
    ``allow_empty`` (the rest of a resumed epoch may hold fewer samples than ranks).
    """
    total = check_int("total", total, 0)
    world_size = check_int("world_size", world_size, 1)
    if world_size > total and not allow_empty:
        raise ValueError(
            f"world_size={world_size} is larger than the number of samples total={total}: "
            "every rank needs at least one sample; use fewer ranks or more data"
        )
    base, extra = divmod(total, world_size)
    shares = []
    start = 0
    for rank in range(world_size):
        stop = start + base + (rank < extra)
        shares.append((start, stop))
        start = stop
    return shares


def worker_ranges(share: int, num_workers: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` offsets of each worker's range within a share of ``share`` samples.

    ``num_workers == 0`` (the main process reads) gives one range. Ranges are contiguous, cut at
    batch boundaries, with full-batch counts differing by at most one (earlier workers get the
    extra); the partial batch, if any, ends the range of worker ``full_batches % num_workers``.
    Ranges may be empty.
    """
    share = check_int("share", share, 0)
    workers = max(check_int("num_workers", num_workers, 0), 1)
    batch_size = check_int("batch_size", batch_size, 1)
    full, rem = divmod(share, batch_size)
    per, more = divmod(full, workers)
    ranges = []
    start = 0
    for w in range(workers):
        stop = start + (per + (w < more)) * batch_size + (rem if w == more else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def plan_worker(
    shard_sizes: Sequence[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
    batch_size: int,
    even: str = "pad",
    taken: np.ndarray | None = None,
) -> WorkerPlan:
    """The plan of one worker (``worker`` in ``[0, max(num_workers, 1))``) of rank ``rank``.

    Equal to ``plan_epoch(...)[rank][worker]``. Raises ValueError naming any bad argument.
    """
    layout = _layout(shard_sizes, seed, epoch, world_size, taken)
    rank = check_int("rank", rank, 0, layout.world_size)
    _check_batching(num_workers, batch_size, even)
    worker = check_int("worker", worker, 0, max(num_workers, 1))
    return _plan_rank(layout, rank, num_workers, batch_size, even, only=worker)[0]


def plan_rank(
    shard_sizes: Sequence[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    even: str = "pad",
    taken: np.ndarray | None = None,
) -> list[WorkerPlan]:
    """The plans of every worker of rank ``rank``: ``plan_epoch(...)[rank]``, without cutting
    the other ranks' shares."""
    layout = _layout(shard_sizes, seed, epoch, world_size, taken)
    rank = check_int("rank", rank, 0, layout.world_size)
    _check_batching(num_workers, batch_size, even)
    return _plan_rank(layout, rank, num_workers, batch_size, even)


def plan_epoch(
    shard_sizes: Sequence[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    even: str = "pad",
    taken: np.ndarray | None = None,
) -> list[list[WorkerPlan]]:
    """Every worker's plan for one epoch, indexed ``[rank][worker]``; with ``taken`` (bool per
    global id) the plans cover only the samples not taken."""
    layout = _layout(shard_sizes, seed, epoch, world_size, taken)
    _check_batching(num_workers, batch_size, even)
    return [
        _plan_rank(layout, rank, num_workers, batch_size, even) for rank in range(layout.world_size)
    ]


def _check_batching(num_workers: int, batch_size: int, even: str) -> None:
    check_int("num_workers", num_workers, 0)
    check_int("batch_size", batch_size, 1)
    if even not in EVEN_POLICIES:
        raise ValueError(f"expected even in {EVEN_POLICIES}, got even={even!r}")


def _layout(
    shard_sizes: Sequence[int] | np.ndarray,
    seed: int,
    epoch: int,
    world_size: int,
    taken: np.ndarray | None = None,
) -> _Layout:
    sizes = as_sizes(shard_sizes)
    order = shard_order(len(sizes), seed, epoch)
    cum = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes[order], out=cum[1:])
    first_index = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=first_index[1:])
    world_size = check_int("world_size", world_size, 1)
    total = int(cum[-1])
    if taken is None:
        shares = rank_shares(total, world_size)
        return _Layout(order, cum, first_index, shares, world_size, total)
    taken = np.asarray(taken)
    if taken.shape != (total,) or taken.dtype != np.bool_:
        raise ValueError(
            f"expected taken as a bool array of shape ({total},), got dtype {taken.dtype} "
            f"shape {taken.shape}"
        )
    runs = free_runs(cum, order, first_index, taken)
    vcum = np.zeros(len(runs) + 1, dtype=np.int64)
    np.cumsum(runs[:, 1] - runs[:, 0], out=vcum[1:])
    free = int(vcum[-1])
    shares = rank_shares(free, world_size, allow_empty=True)
    return _Layout(order, cum, first_index, shares, world_size, free, runs, vcum)


def _plan_rank(
    layout: _Layout,
    rank: int,
    num_workers: int,
    batch_size: int,
    even: str,
    only: int | None = None,
) -> list[WorkerPlan]:
    """Plans of all workers of ``rank`` (or just of worker ``only``)."""
    share_start, share_stop = layout.shares[rank]
    share = share_stop - share_start
    cuts = [
        [share_start + a, share_start + b, 0, 0]
        for a, b in worker_ranges(share, num_workers, batch_size)
    ]
    workers = len(cuts)
    base, extra = divmod(layout.total, layout.world_size)
    pad_ids: tuple[int, ...] = ()
    if extra and base % batch_size == 0:
        full = share // batch_size
        if even == "pad" and rank >= extra:
            cuts[full % workers][2] = 1
            pad_ids = (_last_id(layout, share_start, share_stop),)
        elif even == "drop" and rank < extra:
            w = full % workers if batch_size > 1 else (full % workers - 1) % workers
            cuts[w][1] -= 1
            cuts[w][3] = 1
    selected = range(workers) if only is None else (only,)
    plans = []
    for w in selected:
        start, stop, pad, drop = cuts[w]
        segments = tuple(Segment(*run) for run in layout.cut(start, stop))
        n = stop - start
        plans.append(
            WorkerPlan(
                segments=segments,
                num_samples=n,
                num_batches=-(-(n + pad) // batch_size),
                pad=pad,
                drop=drop,
                pad_ids=pad_ids if pad else (),
            )
        )
    return plans


def _last_id(layout: _Layout, start: int, stop: int) -> int:
    """Global id of the last sample in positions ``[start, stop)``; of an empty share, the one
    before it (global id 0 when there is none)."""
    pos = stop - 1 if stop > start else start - 1
    return layout.id_at(pos) if pos >= 0 else 0
