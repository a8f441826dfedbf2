"""The mixed epoch cut across ranks and workers: every position once, every source its quota,
passes without replacement across epochs, reads that match the lookup."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from loader.mix.plan import MixPlan
from loader.mix.source import MixError
from loader.plan.partition import plan_epoch
from tests.loader.mix.helpers import positions_of

shard_lists = st.lists(st.integers(0, 2000), min_size=1, max_size=5).filter(lambda s: sum(s) > 0)


@st.composite
def mixes(draw: st.DrawFn, max_sources: int = 6) -> tuple[list[list[int]], list[int]]:
    n = draw(st.integers(1, max_sources))
    shards = [draw(shard_lists) for _ in range(n)]
    quotas = [draw(st.integers(0, 3 * sum(s))) for s in shards]
    assume(sum(quotas) > 0)
    return shards, quotas


@settings(max_examples=300, deadline=None)
@given(
    mixes(),
    st.integers(0, 2**31),
    st.integers(0, 4),
    st.integers(1, 8),
    st.integers(0, 4),
    st.integers(1, 64),
    st.sampled_from(["pad", "none", "drop"]),
    st.sampled_from(["cycle", "stop"]),
)
def test_every_position_once_and_every_source_its_quota(
    mix: tuple[list[list[int]], list[int]],
    seed: int,
    epoch: int,
    world: int,
    workers: int,
    batch: int,
    even: str,
    exhaustion: str,
) -> None:
    shards, quotas = mix
    try:
        plan = MixPlan(shards, quotas, seed=seed, exhaustion=exhaustion)
    except MixError:
        assume(False)
    n = plan.epoch_size
    assume(world <= n)
    plans = plan_epoch([n], seed=seed, epoch=epoch, world_size=world, num_workers=workers,
                       batch_size=batch, even=even)  # fmt: skip
    positions, pads, drops = positions_of(plans)
    assert len(positions) + drops == n
    assert len(np.unique(positions)) == len(positions)
    if even != "drop":
        assert np.array_equal(np.sort(positions), np.arange(n))
    source, ids = plan.lookup(epoch, np.arange(n))
    for s, passes in enumerate(plan.passes):
        mine = ids[source == s]
        assert len(mine) == plan.quotas[s]
        start = plan.start(s, epoch)
        expected = passes.ids(np.arange(start, start + plan.quotas[s]))
        assert Counter(mine.tolist()) == Counter(expected.tolist())
        if exhaustion == "stop":
            assert len(np.unique(mine)) == len(mine)
    rank_batches = {sum(w.num_batches for w in r) for r in plans}
    if even != "none":
        assert len(rank_batches) == 1


@settings(max_examples=200, deadline=None)
@given(mixes(4), st.integers(0, 2**31), st.integers(1, 6))
def test_passes_continue_across_epochs_without_replacement(
    mix: tuple[list[list[int]], list[int]], seed: int, epochs: int
) -> None:
    shards, quotas = mix
    plan = MixPlan(shards, quotas, seed=seed)
    drawn: list[list[int]] = [[] for _ in shards]
    for e in range(epochs):
        source, ids = plan.lookup(e, np.arange(plan.epoch_size))
        for s in range(len(shards)):
            drawn[s].extend(ids[source == s].tolist())
    for s, passes in enumerate(plan.passes):
        size = passes.size
        for p in range(0, len(drawn[s]), size):
            chunk = drawn[s][p : p + size]
            assert len(set(chunk)) == len(chunk)  # no repeat inside a pass
            if len(chunk) == size:
                assert sorted(chunk) == list(range(size))
        assert plan.pass_position(s, epochs) == divmod(epochs * plan.quotas[s], size)


@settings(max_examples=200, deadline=None)
@given(mixes(), st.integers(0, 2**31), st.integers(0, 3), st.data())
def test_reads_hold_the_ids_of_their_positions(
    mix: tuple[list[list[int]], list[int]], seed: int, epoch: int, data: st.DataObject
) -> None:
    shards, quotas = mix
    plan = MixPlan(shards, quotas, seed=seed)
    n = plan.epoch_size
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=8)))
    runs = list(zip(cuts[::2], cuts[1::2], strict=False))
    source, ids = plan.lookup(epoch, np.arange(n))
    reads = plan.reads(epoch, runs)
    for s in range(len(shards)):
        want = np.concatenate([ids[a:b][source[a:b] == s] for a, b in runs] + [np.zeros(0, int)])
        got = [first + i for _, a, b, first in reads[s] for i in range(b - a)]
        assert got == want.tolist()
        offsets = np.concatenate([[0], np.cumsum(shards[s])[:-1]])
        for shard, a, b, first in reads[s]:
            assert 0 <= a < b <= shards[s][shard] and first == offsets[shard] + a


def test_a_stopped_epoch_is_reported_and_fits() -> None:
    plan = MixPlan([[10], [100]], [50, 50], seed=0, exhaustion="stop")
    assert plan.stopped_by == 0
    assert plan.quotas == [10, 10]
    with pytest.raises(MixError, match="exhaustion in"):
        MixPlan([[10]], [5], seed=0, exhaustion="never")
