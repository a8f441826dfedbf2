"""Tests for loader.tracker: exact per-epoch delivery counts from per-id counters."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.tracker import (
    DuplicateTracker,
    EpochCounts,
    SeenError,
    pack_seen,
    read_packed_seen,
    unpack_seen,
)


def test_exact_counts_hand_made() -> None:
    tracker = DuplicateTracker(10)
    tracker.update(np.array([0, 1, 2, 3]))
    tracker.update(np.array([3, 4, 4, 5]))
    assert tracker.counts() == EpochCounts(
        epoch=0, delivered=8, unique=6, duplicates=2, missing=4, padded=0
    )
    assert tracker.counters.tolist() == [1, 1, 1, 2, 2, 1, 0, 0, 0, 0]
    tracker.update(np.array([], dtype=np.int64))
    tracker.update([])
    assert tracker.counts().delivered == 8


def test_padding_is_counted_apart() -> None:
    tracker = DuplicateTracker(4)
    tracker.update(np.array([0, 1, 2, 3]))
    tracker.update(np.array([3, 3]), padded=np.array([True, False]))
    counts = tracker.counts()
    assert (counts.delivered, counts.unique, counts.duplicates, counts.padded) == (5, 4, 1, 1)
    tracker.update(np.array([2]), padded=np.array([True]))
    assert tracker.counts().duplicates == 1 and tracker.counts().padded == 2
    assert tracker.counters.tolist() == [1, 1, 1, 2]


def test_padded_only_batch_delivers_nothing() -> None:
    tracker = DuplicateTracker(3)
    tracker.update(np.array([1]), padded=np.array([1]))
    assert tracker.counts().to_dict() == {
        "epoch": 0,
        "delivered": 0,
        "unique": 0,
        "duplicates": 0,
        "missing": 3,
        "padded": 1,
        "ranks": 1,
    }


def test_epochs_reset_and_history() -> None:
    tracker = DuplicateTracker(3)
    tracker.update(np.array([0, 1, 2, 2]))
    first = tracker.end_epoch()
    assert first == EpochCounts(0, 4, 3, 1, 0, 0)
    tracker.start_epoch(1)
    assert tracker.counters.sum() == 0
    tracker.update(np.array([1]))
    second = tracker.end_epoch()
    assert second == EpochCounts(1, 1, 1, 0, 2, 0)
    assert tracker.history == [first, second]
    tracker.start_epoch(2)
    tracker.update(np.array([0]))
    tracker.start_epoch(3)
    assert tracker.counts() == EpochCounts(3, 0, 0, 0, 3, 0)
    assert [c.epoch for c in tracker.history] == [0, 1]


def test_closed_epoch_refuses_updates() -> None:
    tracker = DuplicateTracker(3)
    tracker.end_epoch()
    for call in (
        lambda: tracker.update(np.array([0])),
        lambda: tracker.merge(np.zeros(3, dtype=np.uint8)),
        tracker.end_epoch,
    ):
        with pytest.raises(RuntimeError, match="start_epoch"):
            call()
    assert len(tracker.history) == 1


@pytest.mark.parametrize(
    ("ids", "fragment"),
    [
        (np.array([0, 5]), "id=5"),
        (np.array([-1, 2]), "id=-1"),
        (np.array([4, 2**40]), f"id={2**40}"),
        (np.array([0.5]), "integer ids"),
    ],
)
def test_out_of_range_ids(ids: np.ndarray, fragment: str) -> None:
    tracker = DuplicateTracker(5)
    tracker.update(np.array([1, 2]))
    with pytest.raises(ValueError, match=fragment) as info:
        tracker.update(ids)
    if "id=" in fragment:
        assert "[0, 5)" in str(info.value)
    assert tracker.counts() == EpochCounts(0, 2, 2, 0, 3, 0)
    assert tracker.counters.tolist() == [0, 1, 1, 0, 0]


def test_bad_mask_and_sizes() -> None:
    tracker = DuplicateTracker(5)
    with pytest.raises(ValueError, match="one padded flag per id"):
        tracker.update(np.array([1, 2]), padded=np.array([True]))
    with pytest.raises(ValueError, match="boolean padded mask"):
        tracker.update(np.array([1]), padded=np.array([0.5]))
    with pytest.raises(ValueError, match="id=7"):
        tracker.update(np.array([1, 7]), padded=np.array([False, True]))
    with pytest.raises(ValueError, match="num_samples=-1"):
        DuplicateTracker(-1)
    with pytest.raises(ValueError, match="num_samples=2.0"):
        DuplicateTracker(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch=-2"):
        tracker.start_epoch(-2)
    assert tracker.counts() == EpochCounts(0, 0, 0, 0, 5, 0)


def test_counters_saturate_but_totals_stay_exact() -> None:
    tracker = DuplicateTracker(2)
    tracker.update(np.zeros(200, dtype=np.int64))
    tracker.update(np.zeros(200, dtype=np.int64))
    tracker.update(np.array([1]))
    assert tracker.counters.tolist() == [255, 1]
    assert tracker.counts() == EpochCounts(0, 401, 2, 399, 0, 0)


def test_counters_view_is_read_only() -> None:
    tracker = DuplicateTracker(3)
    with pytest.raises(ValueError):
        tracker.counters[0] = 9
    assert tracker.counters.dtype == np.uint8 and tracker.counters.nbytes == 3


def test_torch_tensors_accepted() -> None:
    tracker = DuplicateTracker(6)
    tracker.update(torch.tensor([0, 1, 1, 5]), padded=torch.tensor([False, False, True, False]))
    tracker.update(torch.tensor([[2, 3]], dtype=torch.int32))
    assert tracker.counts() == EpochCounts(0, 5, 5, 0, 1, 1)
    tracker.merge(torch.tensor([1, 0, 0, 0, 1, 0], dtype=torch.uint8))
    assert tracker.counts() == EpochCounts(0, 7, 6, 1, 0, 1)


def test_merge_two_ranks() -> None:
    rank0, rank1 = DuplicateTracker(6), DuplicateTracker(6)
    rank0.update(np.array([0, 1, 2]))
    rank1.update(np.array([2, 3, 4]), padded=np.array([False, False, True]))
    rank0.merge(rank1.counters, padded=rank1.counts().padded)
    assert rank0.counters.tolist() == [1, 1, 2, 1, 0, 0]
    assert rank0.counts() == EpochCounts(0, 5, 4, 1, 2, 1)


def test_merge_saturates_and_checks_input() -> None:
    tracker = DuplicateTracker(3)
    tracker.update(np.array([0] * 250))
    tracker.merge(np.array([10, 0, 1], dtype=np.int32))
    assert tracker.counters.tolist() == [255, 0, 1]
    assert tracker.counts().delivered == 261
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        tracker.merge(np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="other_counts >= 0"):
        tracker.merge(np.array([0, -1, 0]))
    with pytest.raises(ValueError, match="integer other_counts"):
        tracker.merge(np.zeros(3))
    with pytest.raises(ValueError, match="padded=-1"):
        tracker.merge(np.zeros(3, dtype=np.uint8), padded=-1)
    assert tracker.counts().delivered == 261


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 50).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.lists(st.tuples(st.integers(0, n - 1), st.booleans()), max_size=20)),
        )
    )
)
def test_counts_match_a_plain_counter(case: tuple[int, list[list[tuple[int, bool]]]]) -> None:
    n, batches = case
    tracker = DuplicateTracker(n)
    seen: dict[int, int] = {}
    padded = 0
    for batch in batches:
        ids = np.array([i for i, _ in batch], dtype=np.int64)
        mask = np.array([p for _, p in batch], dtype=bool)
        tracker.update(ids, padded=mask)
        for i, p in batch:
            if p:
                padded += 1
            else:
                seen[i] = seen.get(i, 0) + 1
    delivered = sum(seen.values())
    assert tracker.counts() == EpochCounts(
        0, delivered, len(seen), delivered - len(seen), n - len(seen), padded
    )
    expected = np.zeros(n, dtype=np.int64)
    for i, c in seen.items():
        expected[i] = min(c, 255)
    assert np.array_equal(tracker.counters, expected)


def test_state_round_trip_continues_the_epoch() -> None:
    tracker = DuplicateTracker(6)
    tracker.update(np.array([0, 1, 1]), np.array([False, False, True]))
    state = tracker.state_dict()
    resumed = DuplicateTracker(6)
    resumed.load_state_dict(state)
    resumed.update(np.array([2, 3, 4, 5, 0]))
    counts = resumed.end_epoch()
    assert (counts.delivered, counts.unique, counts.duplicates, counts.missing) == (7, 6, 1, 0)
    assert counts.padded == 1


def test_state_of_another_size_or_corrupt_is_refused() -> None:
    state = DuplicateTracker(6).state_dict()
    tracker = DuplicateTracker(5)
    with pytest.raises(ValueError, match="num_samples=5, got num_samples=6"):
        tracker.load_state_dict(state)
    with pytest.raises(ValueError, match="corrupt tracker state"):
        DuplicateTracker(6).load_state_dict({**state, "counters": b"xx"})
    with pytest.raises(ValueError, match="counters do not match"):
        DuplicateTracker(6).load_state_dict({**state, "unique": 3})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), max_size=300))
def test_seen_bitmaps_round_trip(bits: list[bool]) -> None:
    seen = np.array(bits, dtype=bool)
    assert unpack_seen(pack_seen(seen), len(bits)).tolist() == bits


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 200))
def test_any_bytes_decode_to_a_bitmap_or_a_seen_error(blob: bytes, n: int) -> None:
    try:
        assert len(unpack_seen(blob, n)) == n
    except SeenError:
        pass


def test_a_small_blob_never_inflates_past_the_bitmap() -> None:
    bomb = zlib.compress(bytes(50_000_000))
    with pytest.raises(SeenError, match="or more"):
        read_packed_seen(bomb, 80)


def test_the_tracker_hands_out_this_epochs_seen_ids() -> None:
    tracker = DuplicateTracker(5)
    tracker.update(np.array([4, 4, 1]))
    assert np.flatnonzero(tracker.seen()).tolist() == [1, 4]


def test_without_a_process_group_end_epoch_is_this_ranks_view() -> None:
    tracker = DuplicateTracker(4)
    tracker.update(np.array([0, 1, 1]), padded=np.array([0, 0, 1]))
    merged = tracker.all_ranks()
    assert merged.counts() == tracker.counts() == EpochCounts(0, 2, 2, 0, 2, 1, ranks=1)
    assert tracker.end_epoch(merge=True) == tracker.rank_history[-1] == tracker.history[-1]
