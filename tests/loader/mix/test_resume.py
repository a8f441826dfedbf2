"""Resume a mix at another topology: what the stopped run received and what the resumed run
delivers are the epoch's ``(source, id)`` positions exactly once, and the next epoch is the
uninterrupted run's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from loader import Source, make_loader
from loader.dataloader import ClosingDataLoader
from loader.mix.plan import MixPlan
from loader.mix.tracker import MixTracker
from loader.plan.partition import plan_epoch
from loader.resume.state import ResumeError
from tests.loader.mix.helpers import planned, write_sources

Row = tuple[int, int, int]
FAST = {"decode": False, "image_size": 0, "shuffle_buffer": 8}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Source]:
    a, b, c = write_sources(tmp_path_factory.mktemp("mix"), [[13, 8, 9], [6, 5], [4]])
    return [Source(a, weight=0.5, name="a"), Source(b, weight=0.3, name="b"), Source(c, repeat=2)]


def loaders(sources: list[Source], world: int, **options: Any) -> list[ClosingDataLoader]:
    options = {**FAST, "epoch_size": 40, "prefetch_factor": 1, **options}
    return [make_loader(sources, rank=r, world_size=world, **options) for r in range(world)]


def rows_of(batches: list[Any]) -> list[Row]:
    out = []
    for b in batches:
        keep = ~b.padded
        out += zip(b.source[keep].tolist(), b.ids[keep].tolist(), b.position[keep].tolist(),
                   strict=True)  # fmt: skip
    return out


def stop(runs: list[ClosingDataLoader], counts: list[int], path: Path) -> tuple[list[Row], list]:
    """Each rank receives ``counts[rank]`` batches and saves its state (through torch.save)."""
    received: list[Row] = []
    states = []
    for loader, count in zip(runs, counts, strict=True):
        it = iter(loader)
        got = [b for _, b in zip(range(count), it, strict=False)]
        received += rows_of(got)
        torch.save(loader.state_dict(), path)
        states.append(torch.load(path, weights_only=False))
        it.close()
    return received, states


def epoch_rows(runs: list[ClosingDataLoader]) -> list[Row]:
    return [row for loader in runs for row in rows_of(list(loader))]


@pytest.mark.parametrize(
    ("before", "after"),
    [((1, 3), (2, 2)), ((2, 2), (1, 3)), ((2, 1), (1, 0))],
)
def test_stop_and_resume_at_another_topology_with_workers(
    sources: list[Source], tmp_path: Path, before: tuple[int, int], after: tuple[int, int]
) -> None:
    first = loaders(sources, before[0], num_workers=before[1], batch_size=3)
    received, states = stop(first, [4] * before[0], tmp_path / "s.pt")
    assert states[0]["mix"]["sources"][0]["name"] == "a"
    tracker = MixTracker(first[0].dataset.mix)
    for s, i, _ in received:
        tracker.update(np.array([s]), np.array([i]), np.array([False]))
    second = loaders(sources, after[0], num_workers=after[1], batch_size=4)
    for loader in second:
        loader.load_state_dict(states)
    resumed = MixTracker(second[0].dataset.mix)
    resumed.load_state_dict(tracker.state_dict())
    rest = epoch_rows(second)
    for s, i, _ in rest:
        resumed.update(np.array([s]), np.array([i]), np.array([False]))
    assert all(c.duplicates == c.missing == 0 for c in resumed.end_epoch())
    dataset = second[0].dataset
    assert Counter(received + rest) == Counter(
        (s, i, p) for p, (s, i) in enumerate(zip(*dataset.mix.lookup(0, range(40)), strict=True))
    )
    assert not set(received) & set(rest)
    next_epoch = Counter(epoch_rows(second))
    whole = loaders(sources, 1, num_workers=0, batch_size=5)
    list(whole[0])
    assert next_epoch == Counter(epoch_rows(whole))
    assert Counter((s, i) for s, i, _ in next_epoch.elements()) == planned(dataset, 1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(1, 5),
    st.integers(0, 14),
    st.integers(0, 2),
)
def test_random_stops_and_topologies_cover_the_epoch_once(
    sources: list[Source],
    tmp_path: Path,
    world_a: int,
    world_b: int,
    batch_a: int,
    batch_b: int,
    count: int,
    epoch: int,
) -> None:
    first = loaders(sources, world_a, num_workers=0, batch_size=batch_a, seed=epoch)
    for loader in first:
        loader.dataset.set_epoch(epoch)
    received, states = stop(first, [count] * world_a, tmp_path / "s.pt")  # ranks stop together
    second = loaders(sources, world_b, num_workers=0, batch_size=batch_b, seed=epoch)
    for loader in second:
        loader.load_state_dict(states)
    rest = epoch_rows(second)
    dataset = second[0].dataset
    if states[0]["epoch"] == epoch:
        assert Counter((s, i) for s, i, _ in received + rest) == planned(dataset, epoch)
    else:  # the stop came after the epoch's last batch: the resumed run starts the next one
        assert Counter((s, i) for s, i, _ in received) == planned(dataset, epoch)
        assert Counter((s, i) for s, i, _ in rest) == planned(dataset, epoch + 1)


def test_a_state_of_another_mix_is_refused_naming_the_source(
    sources: list[Source], tmp_path: Path
) -> None:
    (run,) = loaders(sources, 1, num_workers=0, batch_size=4)
    _, (state,) = stop([run], [2], tmp_path / "s.pt")
    other = [sources[0], Source(sources[1].location, weight=0.4, name="b"), sources[2]]
    with pytest.raises(ResumeError, match="source 'a' of the saved state to have quota=18, got"):
        loaders(other, 1, num_workers=0, batch_size=4)[0].load_state_dict(state)
    renamed = [sources[0], Source(sources[1].location, weight=0.3, name="web"), sources[2]]
    with pytest.raises(ResumeError, match="to have name='web', got name='b'"):
        loaders(renamed, 1, num_workers=0, batch_size=4)[0].load_state_dict(state)
    with pytest.raises(ResumeError, match="exhaustion='stop'"):
        loaders(sources, 1, num_workers=0, batch_size=4, exhaustion="stop")[0].load_state_dict(
            state
        )
    plain = {k: v for k, v in state.items() if k != "mix"}
    with pytest.raises(ResumeError, match="saved by a mixed loader"):
        loaders(sources, 1, num_workers=0, batch_size=4)[0].load_state_dict(plain)


@pytest.mark.parametrize("count", [0, 3, 7])
def test_same_topology_gives_the_same_batches_in_order(
    sources: list[Source], tmp_path: Path, count: int
) -> None:
    options = {"num_workers": 3, "batch_size": 2, "transfer_batches": 2}
    whole = [rows_of([b]) for b in loaders(sources, 1, **options)[0]]
    first = loaders(sources, 1, **options)
    received, states = stop(first, [count], tmp_path / "s.pt")
    (second,) = loaders(sources, 1, **options)
    second.load_state_dict(states)
    assert received + [r for b in second for r in rows_of([b])] == [r for b in whole for r in b]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 400), min_size=1, max_size=3), min_size=1, max_size=6),
    st.data(),
    st.integers(1, 8),
    st.integers(0, 4),
    st.integers(1, 64),
    st.integers(0, 5),
)
def test_any_taken_set_and_topology_leave_exactly_the_rest_of_the_mix(
    shards: list[list[int]],
    data: st.DataObject,
    world: int,
    workers: int,
    batch: int,
    epoch: int,
) -> None:
    """At the planning level: whatever was taken, the plan cut afresh over the rest covers the
    epoch's other positions once, and so the epoch's ``(source, id)`` rows exactly."""
    quotas = [data.draw(st.integers(0, 2 * sum(s))) for s in shards]
    assume(sum(quotas) > 0)
    plan = MixPlan(shards, quotas, seed=7)
    n = plan.epoch_size
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    taken = rng.random(n) < data.draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    plans = plan_epoch([n], seed=7, epoch=epoch, world_size=world, num_workers=workers,
                       batch_size=batch, taken=taken)  # fmt: skip
    rest = [p for r in plans for w in r for s in w.segments for p in range(s.first_id, s.stop)]
    assert sorted(rest + np.flatnonzero(taken).tolist()) == list(range(n))
    source, ids = plan.lookup(epoch, np.arange(n))
    rows = Counter(zip(source.tolist(), ids.tolist(), strict=True))
    got = Counter((int(source[p]), int(ids[p])) for p in rest + np.flatnonzero(taken).tolist())
    assert got == rows


def test_a_stopping_mix_resumes_at_another_topology(sources: list[Source], tmp_path: Path) -> None:
    options = {"exhaustion": "stop", "epoch_size": 80, "batch_size": 3}
    first = loaders(sources, 1, num_workers=2, **options)
    received, states = stop(first, [3], tmp_path / "s.pt")
    assert [row["pass"] for row in states[0]["mix"]["sources"]] == [0, 0, 0]
    second = loaders(sources, 2, num_workers=1, **options)
    for loader in second:
        loader.load_state_dict(states)
    rest = epoch_rows(second)
    dataset = second[0].dataset
    assert dataset.mix.stopped_by is not None
    assert Counter((s, i) for s, i, _ in received + rest) == planned(dataset, 0)
    assert len(set(received + rest)) == dataset.mix.epoch_size  # no sample twice in an epoch
