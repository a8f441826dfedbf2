from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.mix.quotas import epoch_quotas, largest_remainder, stop_epoch
from loader.mix.source import MixError, Source


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0.001, 1000, allow_nan=False), min_size=1, max_size=8),
    st.integers(0, 100_000),
)
def test_largest_remainder_is_floor_or_ceiling_and_sums(shares: list[float], total: int) -> None:
    got = largest_remainder(shares, total)
    assert sum(got) == total
    whole = sum(Fraction(s) for s in shares)
    for q, share in zip(got, shares, strict=True):
        exact = Fraction(share) * total / whole
        assert exact - 1 < q < exact + 1


def test_largest_remainder_breaks_ties_to_the_earlier_source() -> None:
    assert largest_remainder([1, 1, 1], 4) == [2, 1, 1]
    assert largest_remainder([1, 1, 1], 5) == [2, 2, 1]


def test_weights_normalise_and_epoch_size_defaults_to_the_sizes() -> None:
    sources = [Source("a", weight=0.7), Source("b", weight=0.3)]
    assert epoch_quotas(sources, [50, 50]) == [70, 30]
    assert epoch_quotas([Source("a", weight=7), Source("b", weight=3)], [50, 50], 10) == [7, 3]


def test_repeat_and_samples_are_fixed_and_weights_share_the_rest() -> None:
    sources = [Source("a", repeat=4), Source("b", samples=10), Source("c", weight=1)]
    assert epoch_quotas(sources, [5, 1000, 30]) == [20, 10, 30]
    assert epoch_quotas(sources, [5, 1000, 30], 100) == [20, 10, 70]
    assert epoch_quotas([Source("a", repeat=0.5)], [5]) == [3]  # 2.5 rounds half up


def test_fixed_quotas_larger_than_the_epoch_name_the_sources() -> None:
    sources = [Source("a", repeat=2, name="small"), Source("b", weight=1)]
    with pytest.raises(MixError, match=r"'small'=20.*change epoch_size"):
        epoch_quotas(sources, [10, 10], 15)
    with pytest.raises(MixError, match="epoch_size=7 to equal the fixed quotas"):
        epoch_quotas([Source("a", samples=5)], [10], 7)
    with pytest.raises(MixError, match="epoch_size >= 1"):
        epoch_quotas(sources, [10, 10], 0)
    with pytest.raises(MixError, match="epoch_size >= 1, got epoch_size=0"):
        epoch_quotas([Source("a", samples=0)], [10])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(1, 5000)), min_size=1, max_size=6))
def test_a_stopped_epoch_fits_every_source(pairs: list[tuple[int, int]]) -> None:
    quotas = [q for q, _ in pairs]
    sizes = [s for _, s in pairs]
    if sum(quotas) == 0:
        return
    try:
        got, first = stop_epoch(quotas, sizes)
    except MixError:
        assert any(q > s and s * sum(quotas) // q == 0 for q, s in pairs)
        return
    assert all(g <= s for g, s in zip(got, sizes, strict=True))
    if first is None:
        assert got == quotas
    else:
        assert quotas[first] > sizes[first]
        assert sum(got) == sizes[first] * sum(quotas) // quotas[first]
