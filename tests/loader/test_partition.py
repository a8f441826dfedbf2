"""Tests for loader.plan.partition: the split is exact, balanced, even across ranks and stable."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from loader.plan.partition import (
    EVEN_POLICIES,
    Segment,
    WorkerPlan,
    plan_epoch,
    plan_worker,
    rank_shares,
    shard_order,
    worker_ranges,
)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def permuted_ids(sizes: list[int] | np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample sequence, built independently of the code under test."""
    sizes = np.asarray(sizes, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.random.default_rng([seed, epoch]).permutation(len(sizes))
    parts = [np.arange(first[s], first[s] + sizes[s]) for s in order]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def worker_ids(plan: WorkerPlan) -> np.ndarray:
    parts = [np.arange(s.first_id, s.first_id + s.stop - s.start) for s in plan.segments]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def check_epoch(
    plans: list[list[WorkerPlan]],
    sizes: list[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    world_size: int,
    num_workers: int,
    batch_size: int,
    even: str,
) -> None:
    """Assert every invariant of docs/architecture.md, "Partition" on one epoch's plans."""
    sizes = np.asarray(sizes, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    total = int(sizes.sum())
    bs = batch_size
    assert len(plans) == world_size
    assert all(len(rank) == max(num_workers, 1) for rank in plans)

    for rank in plans:
        for p in rank:
            for s in p.segments:
                assert 0 <= s.start < s.stop <= sizes[s.shard]
                assert s.first_id == first[s.shard] + s.start
            assert p.num_samples == sum(s.stop - s.start for s in p.segments)
            assert p.num_batches == ceil_div(p.num_samples + p.pad, bs)
            assert len(p.pad_ids) == p.pad and p.pad in (0, 1) and p.drop in (0, 1)
            assert not (p.pad and p.drop)

    # Reading every worker's segments in (rank, worker) order walks the permuted sequence, minus
    # the samples 'drop' left out: so ids are pairwise disjoint and nothing else is missing.
    seq = permuted_ids(sizes, seed, epoch)
    got = np.concatenate([worker_ids(p) for rank in plans for p in rank])
    dropped = sum(p.drop for rank in plans for p in rank)
    assert len(got) + dropped == total
    if even == "drop":
        assert len(np.unique(got)) == len(got)
        assert np.isin(got, seq).all()
        kept = np.isin(seq, got)
        assert np.array_equal(seq[kept], got)
    else:
        assert dropped == 0
        assert np.array_equal(got, seq)

    shares = [sum(p.num_samples + p.drop for p in rank) for rank in plans]
    assert max(shares) - min(shares) <= 1
    assert shares == sorted(shares, reverse=True)
    natural = [ceil_div(share, bs) for share in shares]
    batches = [sum(p.num_batches for p in rank) for rank in plans]

    for rank in plans:
        fulls = [p.num_samples // bs for p in rank]
        assert max(fulls) - min(fulls) <= 1
        assert fulls == sorted(fulls, reverse=True)
        partial = [p for p in rank if (p.num_samples + p.pad) % bs]
        assert len(partial) <= 1
        worker_batches = [p.num_batches for p in rank]
        assert max(worker_batches) - min(worker_batches) <= 1

    if even == "none":
        assert batches == natural
    elif even == "pad":
        assert batches == [max(natural)] * world_size
        for rank, n in zip(plans, natural, strict=True):
            rank_pad = sum(p.pad for p in rank)
            assert rank_pad == (1 if n < max(natural) else 0)
            for p in rank:
                if p.pad:
                    rank_ids = np.concatenate([worker_ids(q) for q in rank])
                    assert p.pad_ids == (int(rank_ids[-1]),)
    else:
        assert batches == [min(natural)] * world_size
        for rank, share in zip(plans, shares, strict=True):
            assert sum(p.drop for p in rank) == max(0, share - min(natural) * bs)


@st.composite
def epoch_args(draw: st.DrawFn) -> dict[str, object]:
    sizes = draw(st.lists(st.integers(0, 200), min_size=1, max_size=64))
    assume(sum(sizes) >= 1)
    return {
        "sizes": sizes,
        "seed": draw(st.integers(0, 2**32)),
        "epoch": draw(st.integers(0, 3)),
        "world_size": draw(st.integers(1, min(8, sum(sizes)))),
        "num_workers": draw(st.integers(0, 8)),
        "batch_size": draw(st.integers(1, 64)),
        "even": draw(st.sampled_from(EVEN_POLICIES)),
    }


@settings(max_examples=150, deadline=None)
@given(epoch_args())
def test_partition_invariants(args: dict) -> None:
    sizes = args.pop("sizes")
    plans = plan_epoch(sizes, **args)
    check_epoch(plans, sizes, **args)


@settings(max_examples=60, deadline=None)
@given(epoch_args(), st.data())
def test_plan_worker_matches_plan_epoch(args: dict, data: st.DataObject) -> None:
    sizes = args.pop("sizes")
    plans = plan_epoch(sizes, **args)
    rank = data.draw(st.integers(0, args["world_size"] - 1))
    worker = data.draw(st.integers(0, max(args["num_workers"], 1) - 1))
    assert plan_worker(sizes, rank=rank, worker=worker, **args) == plans[rank][worker]
    assert plan_epoch(sizes, **args) == plans


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 9), st.integers(1, 70))
def test_worker_ranges_balanced(share: int, num_workers: int, batch_size: int) -> None:
    ranges = worker_ranges(share, num_workers, batch_size)
    workers = max(num_workers, 1)
    assert len(ranges) == workers
    assert ranges[0][0] == 0 and ranges[-1][1] == share
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    lengths = [b - a for a, b in ranges]
    fulls = [n // batch_size for n in lengths]
    assert max(fulls) - min(fulls) <= 1
    assert sum(ceil_div(n, batch_size) for n in lengths) == ceil_div(share, batch_size)
    partial = [w for w, n in enumerate(lengths) if n % batch_size]
    if share % batch_size:
        assert partial == [fulls.index(min(fulls))]
    else:
        assert partial == []


def test_worker_ranges_hand_made() -> None:
    # 10 samples, batch 3: three full batches over 3 workers, the single leftover sample ends
    # worker 0's range (all workers tie at one full batch, so the first takes it).
    assert worker_ranges(10, 3, 3) == [(0, 4), (4, 7), (7, 10)]
    # 4 full batches of 2 over 3 workers: counts 2,1,1; the leftover goes to worker 1.
    assert worker_ranges(9, 3, 2) == [(0, 4), (4, 7), (7, 9)]
    # Fewer samples than one batch: one worker reads everything, the others get empty ranges.
    assert worker_ranges(3, 4, 4) == [(0, 3), (3, 3), (3, 3), (3, 3)]
    assert worker_ranges(7, 0, 2) == worker_ranges(7, 1, 2) == [(0, 7)]
    assert worker_ranges(0, 2, 5) == [(0, 0), (0, 0)]


def test_rank_shares() -> None:
    assert rank_shares(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert rank_shares(3, 3) == [(0, 1), (1, 2), (2, 3)]
    assert rank_shares(5, 1) == [(0, 5)]


def test_pad_repeats_the_short_ranks_last_sample() -> None:
    # 9 samples, 2 ranks, batch 4: rank 0 holds 5 (batches 4+1), rank 1 holds 4 (one batch).
    sizes = [5, 4]
    kw = {"seed": 0, "epoch": 0, "world_size": 2, "num_workers": 2, "batch_size": 4}
    order = shard_order(2, 0, 0).tolist()
    seq = permuted_ids(sizes, 0, 0)
    plans = plan_epoch(sizes, even="pad", **kw)
    assert [sum(p.num_batches for p in rank) for rank in plans] == [2, 2]
    assert [p.pad for p in plans[1]] == [0, 1]
    assert plans[1][1].segments == ()
    assert plans[1][1].pad_ids == (int(seq[-1]),)
    assert plans[1][0].segments[0].shard == order[1]

    dropped = plan_epoch(sizes, even="drop", **kw)
    assert [sum(p.num_batches for p in rank) for rank in dropped] == [1, 1]
    assert [p.drop for p in dropped[0]] == [0, 1]
    assert sum(p.num_samples for rank in dropped for p in rank) == 8

    none = plan_epoch(sizes, even="none", **kw)
    assert [sum(p.num_batches for p in rank) for rank in none] == [2, 1]
    assert all(p.pad == p.drop == 0 for rank in none for p in rank)


@pytest.mark.parametrize(
    ("total", "workers", "before", "after"),
    [
        (9, 3, [2, 2, 1], [2, 1, 1]),  # shares 5, 4: worker 1 is the last with the most
        (7, 3, [2, 1, 1], [1, 1, 1]),  # shares 4, 3: worker 0
        (13, 3, [3, 2, 2], [2, 2, 2]),  # shares 7, 6: worker 0
        (7, 4, [1, 1, 1, 1], [1, 1, 1, 0]),  # shares 4, 3: all tie, the last worker
    ],
)
def test_batch_size_one_drop_keeps_workers_balanced(
    total: int, workers: int, before: list[int], after: list[int]
) -> None:
    kw = {"seed": 1, "epoch": 0, "world_size": 2, "num_workers": workers, "batch_size": 1}
    none = plan_epoch([total], even="none", **kw)
    plans = plan_epoch([total], even="drop", **kw)
    assert [p.num_batches for p in none[0]] == before
    assert [p.num_batches for p in plans[0]] == after
    assert [p.drop for p in plans[0]] == [b - a for b, a in zip(before, after, strict=True)]
    assert [p.num_batches for p in plans[1]] == [p.num_batches for p in none[1]]


def test_fewer_shards_than_readers_splits_shards() -> None:
    plans = plan_epoch([100], seed=0, epoch=0, world_size=4, num_workers=4, batch_size=5)
    ranges = [(p.segments[0].start, p.segments[0].stop) for rank in plans for p in rank]
    assert ranges[0] == (0, 10) and ranges[-1] == (95, 100)
    assert all(len(p.segments) == 1 and p.segments[0].shard == 0 for r in plans for p in r)


def test_empty_worker_gets_empty_plan() -> None:
    plan = plan_worker(
        [3], seed=0, epoch=0, rank=0, world_size=1, worker=3, num_workers=4, batch_size=8
    )
    assert plan == WorkerPlan(segments=(), num_samples=0, num_batches=0)


def test_empty_shards_make_no_segments() -> None:
    plans = plan_epoch(
        [0, 3, 0, 0, 2, 0], seed=5, epoch=1, world_size=1, num_workers=1, batch_size=2
    )
    segments = plans[0][0].segments
    assert sorted(s.shard for s in segments) == [1, 4]
    assert all(isinstance(s, Segment) and s.stop > s.start for s in segments)


def test_shard_order_changes_with_epoch_and_is_stable() -> None:
    orders = [tuple(shard_order(10, 1234, e).tolist()) for e in range(4)]
    assert len(set(orders)) == 4
    assert all(sorted(o) == list(range(10)) for o in orders)
    assert tuple(shard_order(10, 1234, 2).tolist()) == orders[2]
    assert tuple(shard_order(10, 1235, 2).tolist()) != orders[2]
    # Three shards have only 6 orders: still, epochs 0..3 of this seed are not all the same.
    assert len({tuple(shard_order(3, 7, e).tolist()) for e in range(4)}) > 1
    assert shard_order(5, 0, 0).dtype == np.int64


def test_plans_differ_between_epochs() -> None:
    kw: dict[str, Any] = {"seed": 3, "world_size": 2, "num_workers": 2, "batch_size": 4}
    sizes = [10, 20, 30, 40]
    assert plan_epoch(sizes, epoch=0, **kw) != plan_epoch(sizes, epoch=1, **kw)
    assert plan_epoch(sizes, epoch=1, **kw) == plan_epoch(sizes, epoch=1, **kw)


def test_imagenet_scale() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.multinomial(1_281_167, np.full(1024, 1 / 1024))
    assert sizes.sum() == 1_281_167
    kw = {"seed": 17, "epoch": 2, "world_size": 64, "num_workers": 8, "batch_size": 256}
    for even in EVEN_POLICIES:
        began = time.perf_counter()
        plans = plan_epoch(sizes, even=even, **kw)
        elapsed = time.perf_counter() - began
        assert elapsed < 2.0, f"plan_epoch took {elapsed:.2f} s for 512 workers"
        check_epoch(plans, sizes, even=even, **kw)
        assert plan_worker(sizes, rank=63, worker=7, even=even, **kw) == plans[63][7]


def test_imagenet_scale_uneven_ranks() -> None:
    # 64 ranks of 20 * 256 samples plus 5 extra: the 59 short ranks pad, the 5 long ones drop.
    sizes = np.full(1024, 64 * 20 * 256 // 1024)
    sizes[:5] += 1
    kw = {"seed": 0, "epoch": 0, "world_size": 64, "num_workers": 8, "batch_size": 256}
    padded = plan_epoch(sizes, even="pad", **kw)
    assert sum(p.pad for rank in padded for p in rank) == 59
    check_epoch(padded, sizes, even="pad", **kw)
    dropped = plan_epoch(sizes, even="drop", **kw)
    assert sum(p.drop for rank in dropped for p in rank) == 5
    check_epoch(dropped, sizes, even="drop", **kw)


GOOD = {
    "seed": 0,
    "epoch": 0,
    "rank": 0,
    "world_size": 2,
    "worker": 0,
    "num_workers": 2,
    "batch_size": 4,
    "even": "pad",
}


@pytest.mark.parametrize(
    ("sizes", "change", "fragment"),
    [
        ([5, 5], {"world_size": 0}, "world_size=0"),
        ([5, 5], {"rank": 2}, "rank=2"),
        ([5, 5], {"rank": -1}, "rank=-1"),
        ([5, 5], {"num_workers": -1}, "num_workers=-1"),
        ([5, 5], {"worker": 2}, "worker=2"),
        ([5, 5], {"worker": 1, "num_workers": 0}, "worker=1"),
        ([5, 5], {"batch_size": 0}, "batch_size=0"),
        ([5, 5], {"even": "evenly"}, "even='evenly'"),
        ([5, 5], {"seed": -3}, "seed=-3"),
        ([5, 5], {"epoch": -1}, "epoch=-1"),
        ([5, 5], {"batch_size": 2.0}, "batch_size=2.0"),
        ([5, -1], {}, "shard_sizes[1]=-1"),
        ([], {}, "shard sizes"),
        ([1.5, 2], {}, "integer shard sizes"),
        ([1, 0], {"world_size": 2}, "world_size=2 is larger than the number of samples total=1"),
        ([0, 0], {"world_size": 1}, "total=0"),
    ],
)
def test_bad_inputs(sizes: list, change: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        plan_worker(sizes, **{**GOOD, **change})
    assert fragment in str(info.value)
    if "rank" not in change and "worker" not in change:
        epoch_kw = {k: v for k, v in {**GOOD, **change}.items() if k not in ("rank", "worker")}
        with pytest.raises(ValueError, match="="):
            plan_epoch(sizes, **epoch_kw)


def test_even_error_names_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"even in \('pad', 'drop', 'none'\)"):
        plan_epoch([4], seed=0, epoch=0, world_size=1, num_workers=1, batch_size=1, even="x")


def test_helper_bad_inputs() -> None:
    with pytest.raises(ValueError, match="world_size=5 is larger"):
        rank_shares(4, 5)
    with pytest.raises(ValueError, match="num_shards=0"):
        shard_order(0, 0, 0)
    with pytest.raises(ValueError, match="share=-1"):
        worker_ranges(-1, 2, 2)
    with pytest.raises(ValueError, match="num_workers=-2"):
        worker_ranges(4, -2, 2)
