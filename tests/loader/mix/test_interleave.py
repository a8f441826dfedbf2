from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.mix.interleave import Interleave, interleave_for
from tests.loader.mix.helpers import window_error

quota_lists = st.lists(st.integers(0, 3000), min_size=1, max_size=6).filter(lambda q: sum(q) > 0)


@settings(max_examples=300, deadline=None)
@given(quota_lists, st.integers(0, 2**32), st.integers(0, 50))
def test_exact_quotas_and_every_window_within_the_bound(
    quotas: list[int], seed: int, epoch: int
) -> None:
    inter = Interleave(quotas, seed, epoch)
    sources, draws = inter.locate(np.arange(inter.total))
    live = sum(1 for q in quotas if q)
    for s, q in enumerate(quotas):
        mine = sources == s
        assert mine.sum() == q
        assert np.array_equal(draws[mine], np.arange(q))
        if not q:
            continue
        bound = inter.window_bound(s)
        assert window_error(sources, s, q) < bound + 1e-9
        if live <= 2:
            assert bound <= 1
        if live <= 4:
            assert bound < 2
        assert bound < 3


@settings(max_examples=200, deadline=None)
@given(quota_lists, st.integers(0, 2**32), st.data())
def test_ranges_and_counts_agree_with_locate(
    quotas: list[int], seed: int, data: st.DataObject
) -> None:
    inter = Interleave(quotas, seed, 3)
    n = inter.total
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    sources, _ = inter.locate(np.arange(n))
    assert np.array_equal(inter.sources(start, stop), sources[start:stop])
    for s in range(len(quotas)):
        assert inter.count_before(s, stop) == int((sources[:stop] == s).sum())


def test_the_interleave_is_a_function_of_seed_and_epoch() -> None:
    quotas = [700, 200, 100]
    one = Interleave(quotas, 5, 1).sources(0, 1000)
    assert np.array_equal(one, Interleave(quotas, 5, 1).sources(0, 1000))
    assert not np.array_equal(one, Interleave(quotas, 5, 2).sources(0, 1000))
    assert not np.array_equal(one, Interleave(quotas, 6, 1).sources(0, 1000))


def test_a_batch_holds_its_share_of_every_source() -> None:
    quotas = [900, 300, 100]  # 9 : 3 : 1 in batches of 13
    sources = Interleave(quotas, 0, 0).sources(0, 1300)
    for batch in sources.reshape(-1, 13):
        counts = np.bincount(batch, minlength=3)
        assert all(abs(counts - np.array([9, 3, 1])) <= 1), counts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 3000), min_size=1, max_size=8).filter(lambda q: sum(q) > 0),
    st.integers(0, 2**32),
    st.integers(0, 50),
)
def test_the_interleave_a_mix_uses_keeps_every_window_within_two(
    quotas: list[int], seed: int, epoch: int
) -> None:
    inter = interleave_for(quotas, seed, epoch)
    sources, draws = inter.locate(np.arange(inter.total))
    for s, q in enumerate(quotas):
        mine = sources == s
        assert np.array_equal(draws[mine], np.arange(q))
        assert inter.count_before(s, inter.total // 2) == int(mine[: inter.total // 2].sum())
        if q:
            assert window_error(sources, s, q) < inter.window_bound(s) + 1e-9
            assert inter.window_bound(s) < 2
    assert np.array_equal(inter.sources(0, inter.total), sources)


def test_the_chairman_assignment_takes_over_where_no_tree_keeps_two() -> None:
    quotas = [19445, 83572, 14, 35487, 229, 332]
    inter = interleave_for(quotas, 0, 0)
    assert type(inter).__name__ == "Sequenced"
    assert max(inter.window_bound(s) for s in range(6)) == pytest.approx(1.8)
    sources, _ = inter.locate(np.arange(inter.total))
    assert all(window_error(sources, s, q) < 1.8 for s, q in enumerate(quotas))
