"""Resume at the planning level (pure functions, no reading): a run under topology A stops after
any number of received batches per worker; the state it saves (per rank, merged) resumes under
topology B. What A received and what B delivers are disjoint and together the whole epoch
(less what B's even policy drops); B's shares and batches follow the rule of a fresh epoch; with
B = A the remaining batches are the uninterrupted run's. A second stop chains a third topology.

The batches are those ``ShardDataset`` yields (``loader.plan.shuffle.batch_ids`` over the same plans
and shuffle seeds); tests/loader/test_resume.py checks the real loader against the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.plan.partition import EVEN_POLICIES, WorkerPlan, plan_epoch
from loader.plan.shuffle import batch_ids, worker_seed
from loader.resume.consumed import Progress
from loader.resume.reconcile import reconcile
from loader.resume.state import (
    LoaderState,
    ResumeError,
    Topology,
    merge_states,
    pack_bits,
    resume_point,
)

SEED, EPOCH, PRINT = 5, 3, "f" * 64
Batches = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class Run:
    """The rest of an epoch under one topology: per rank, per worker, plan and batches."""

    topology: Topology
    plans: list[list[WorkerPlan]]
    batches: list[list[Batches]]


def rest_of_epoch(sizes: list[int], topology: Topology, state: LoaderState | None) -> Run:
    workers = topology.num_workers
    base, _, left_out = resume_point(state, topology, EPOCH, 0)
    plans = plan_epoch(
        sizes,
        seed=SEED,
        epoch=EPOCH,
        world_size=topology.world_size,
        num_workers=workers,
        batch_size=topology.batch_size,
        even=topology.even,
        taken=base,
    )
    batches = []
    for rank in range(topology.world_size):
        per_worker = []
        _, done, _ = resume_point(state, topology, EPOCH, rank)
        for w in range(workers):
            skip = done[w] if done else 0
            rng = np.random.default_rng(worker_seed(SEED, EPOCH, rank, w, left_out))
            all_batches = batch_ids(
                plans[rank][w], topology.batch_size, topology.shuffle_buffer, rng
            )
            per_worker.append(all_batches[skip:])
        batches.append(per_worker)
    return Run(topology, plans, batches)


def stop(
    sizes: list[int], run: Run, state: LoaderState | None, counts: list[list[int]]
) -> tuple[LoaderState, list[int]]:
    """Each rank records the first ``counts[rank][w]`` remaining batches of each worker, saves its
    own state (per-rank mode); the states round-trip through ``to_dict`` and merge."""
    states, received = [], []
    for rank in range(run.topology.world_size):
        progress = Progress(
            np.asarray(sizes, dtype=np.int64),
            fingerprint=PRINT,
            seed=SEED,
            epoch=EPOCH,
            rank=rank,
            topology=run.topology,
            resume=state,
        )
        for w, k in enumerate(counts[rank]):
            for ids, padded in run.batches[rank][w][:k]:
                progress.record(ids, padded)
                received.extend(ids[~padded].tolist())
        states.append(progress.state().to_dict())
    return merge_states(states[::-1]), received


def delivered(run: Run) -> list[int]:
    return [int(i) for r in run.batches for w in r for ids, pad in w for i in ids[~pad]]


@st.composite
def topologies(draw: st.DrawFn, total: int) -> Topology:
    return Topology(
        world_size=draw(st.integers(1, min(8, total))),
        num_workers=draw(st.integers(0, 8)),
        batch_size=draw(st.integers(1, 64)),
        even=draw(st.sampled_from(EVEN_POLICIES)),
        shuffle_buffer=draw(st.sampled_from([0, 0, 3, 16])),
    )


@st.composite
def counts_for(draw: st.DrawFn, run: Run) -> list[list[int]]:
    """Batches received per worker: none, all, all but the last, or anything between."""
    mode = draw(st.sampled_from(["none", "all", "last", "any"]))
    out = []
    for per_worker in run.batches:
        row = []
        for batches in per_worker:
            n = len(batches)
            k = {"none": 0, "all": n, "last": max(n - 1, 0)}.get(mode)
            row.append(draw(st.integers(0, n)) if k is None else k)
        out.append(row)
    return out


def check_fresh_rule(run: Run, total: int) -> None:
    """Shares within one sample; every worker but one per rank yields full batches; the ranks'
    batch counts are equal under pad and drop and within one under none."""
    topo = run.topology
    shares = [sum(p.num_samples + p.drop for p in rank) for rank in run.plans]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1
    counts = [sum(len(w) for w in rank) for rank in run.batches]
    if topo.even != "none":
        assert len(set(counts)) == 1
    assert max(counts) - min(counts) <= 1
    for plans, batches in zip(run.plans, run.batches, strict=True):
        real = sum(p.num_samples for p in plans)
        pads = sum(p.pad for p in plans)
        sizes = [len(ids) for w in batches for ids, _ in w]
        assert len(sizes) == -(-real // topo.batch_size) + pads
        assert sum(n < topo.batch_size for n in sizes) <= 1 + pads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_stop_any_topology_is_exactly_once(data: st.DataObject) -> None:
    sizes = data.draw(st.lists(st.integers(0, 40), min_size=1, max_size=12), label="sizes")
    total = sum(sizes)
    if total == 0:
        sizes[0] = 1
        total = 1
    a = rest_of_epoch(sizes, data.draw(topologies(total), label="A"), None)
    state, first = stop(sizes, a, None, data.draw(counts_for(a), label="stop A"))
    assert state.complete and int(state.taken.sum()) == len(first) == len(set(first))
    reconcile(state, np.asarray(sizes))  # a true state is always backed by its bitmap

    same = data.draw(st.booleans(), label="B is A")
    topo_b = a.topology if same else data.draw(topologies(total), label="B")
    same = topo_b == a.topology
    b = rest_of_epoch(sizes, topo_b, state)
    rest = delivered(b)
    assert not set(first) & set(rest)
    assert len(rest) == len(set(rest))
    covered = set(first) | set(rest)
    assert covered <= set(range(total))
    if same:
        for rank in range(topo_b.world_size):
            for w in range(topo_b.num_workers):
                k = state.batches[rank][w]
                expected = a.batches[rank][w][k:]
                got = b.batches[rank][w]
                assert [x.tolist() for x, _ in got] == [x.tolist() for x, _ in expected]
        dropped = sum(p.drop for rank in a.plans for p in rank)
    else:
        check_fresh_rule(b, total - len(first))
        dropped = sum(p.drop for rank in b.plans for p in rank)
    assert total - len(covered) == dropped

    # a second stop in the same epoch, then a third topology (or B again)
    state2, second = stop(sizes, b, state, data.draw(counts_for(b), label="stop B"))
    reconcile(state2, np.asarray(sizes))
    assert set(second) <= set(rest)
    assert int(state2.taken.sum()) == len(first) + len(second)
    topo_c = topo_b if data.draw(st.booleans(), label="C is B") else data.draw(topologies(total))
    c = rest_of_epoch(sizes, topo_c, state2)
    last = delivered(c)
    assert not (set(first) | set(second)) & set(last)
    assert len(last) == len(set(last))
    dropped = sum(p.drop for rank in (b if topo_c == topo_b else c).plans for p in rank)
    if topo_c == topo_b and same:
        dropped = sum(p.drop for rank in a.plans for p in rank)
    assert total - len(set(first) | set(second) | set(last)) == dropped
    if topo_c == topo_b:
        for rank in range(topo_c.world_size):
            for w in range(topo_c.num_workers):
                k = state2.batches[rank][w] - (state.batches[rank][w] if same else 0)
                assert [x.tolist() for x, _ in c.batches[rank][w]] == [
                    x.tolist() for x, _ in b.batches[rank][w][k:]
                ]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_counts_are_refused_or_harmless(data: st.DataObject) -> None:
    """A genuine state with a batch count changed (by a little, to 100, to a bool, negative)
    or a sample marked taken that was not delivered: ``from_dict`` or ``reconcile`` refuses it
    with a ``ResumeError``, or the resumed epoch still delivers every sample exactly once."""
    sizes = data.draw(st.lists(st.integers(1, 30), min_size=1, max_size=8), label="sizes")
    total = sum(sizes)
    a = rest_of_epoch(sizes, data.draw(topologies(total), label="A"), None)
    state, first = stop(sizes, a, None, data.draw(counts_for(a), label="stop"))
    doc = state.to_dict()
    rank = data.draw(st.integers(0, a.topology.world_size - 1), label="rank")
    worker = data.draw(st.integers(0, a.topology.num_workers - 1), label="worker")
    kind = data.draw(st.sampled_from(["count", "taken"]), label="kind")
    if kind == "count":
        old = doc["batches"][str(rank)][worker]
        new = data.draw(
            st.sampled_from([old + 1, old + 2, old - 1, old - 2, 100, True, False, -1, 1.0]),
            label="count",
        )
        doc["batches"][str(rank)][worker] = new
        changed = new != old or type(new) is not type(old)
    else:
        taken = state.taken.copy()
        free = np.flatnonzero(~taken)
        if not free.size:
            return
        taken[data.draw(st.sampled_from(free.tolist()), label="gid")] = True
        doc["taken"], doc["samples_taken"] = pack_bits(taken), int(taken.sum())
        changed = True
    try:
        corrupted = merge_states([doc])
        reconcile(corrupted, np.asarray(sizes))
    except ResumeError:
        assert changed
        return
    rest = delivered(rest_of_epoch(sizes, a.topology, corrupted))
    assert not set(first) & set(rest), "a sample delivered twice"
    assert len(rest) == len(set(rest))
    dropped = sum(p.drop for r in a.plans for p in r)
    assert total - len(set(first) | set(rest)) == dropped, "a sample never delivered"


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=8),
    world=st.integers(1, 4),
    workers=st.integers(0, 4),
    batch=st.integers(1, 9),
    even=st.sampled_from(EVEN_POLICIES),
)
def test_nothing_taken_is_a_fresh_epoch(
    sizes: list[int], world: int, workers: int, batch: int, even: str
) -> None:
    world = min(world, sum(sizes))
    kwargs = dict(seed=SEED, epoch=EPOCH, world_size=world, num_workers=workers, batch_size=batch)
    fresh = plan_epoch(sizes, even=even, **kwargs)  # type: ignore[arg-type]
    none_taken = np.zeros(sum(sizes), dtype=bool)
    assert plan_epoch(sizes, even=even, taken=none_taken, **kwargs) == fresh  # type: ignore[arg-type]


def test_everything_taken_leaves_no_batches() -> None:
    sizes = [5, 7]
    taken = np.ones(12, dtype=bool)
    plans = plan_epoch(
        sizes, seed=1, epoch=0, world_size=3, num_workers=2, batch_size=4, taken=taken
    )
    assert all(p.num_batches == 0 for rank in plans for p in rank)


def test_fewer_samples_left_than_ranks_pads_every_short_rank() -> None:
    sizes = [5, 7]
    taken = np.ones(12, dtype=bool)
    taken[[3, 9]] = False
    plans = plan_epoch(
        sizes, seed=1, epoch=0, world_size=4, num_workers=2, batch_size=4, even="pad", taken=taken
    )
    assert [sum(p.num_batches for p in rank) for rank in plans] == [1, 1, 1, 1]
    real = sorted(s.first_id for rank in plans for p in rank for s in p.segments)
    assert real == [3, 9]
    pads = [i for rank in plans for p in rank for i in p.pad_ids]
    assert len(pads) == 2 and set(pads) <= {3, 9}


def test_bad_taken_mask_is_rejected() -> None:
    with pytest.raises(ValueError, match="bool array of shape"):
        plan_epoch(
            [3], seed=0, epoch=0, world_size=1, num_workers=1, batch_size=1, taken=np.zeros(4)
        )
