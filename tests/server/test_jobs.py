from __future__ import annotations

import pytest

from server.jobs import JobReport, RankState, advance_rank, series, summarize


def rep(
    samples: int,
    at: float,
    elapsed: float | None,
    *,
    rank: int = 0,
    blocked: float = 0.0,
    epoch: int | None = None,
    tracker: dict[str, int] | None = None,
) -> JobReport:
    return JobReport(
        job="j",
        rank=rank,
        received_at=at,
        samples=samples,
        bytes=samples * 1000,
        blocked_s=blocked,
        elapsed_s=elapsed,
        epoch=epoch,
        tracker=tracker or {},
    )


def test_first_report_counts_from_zero_over_the_reporter_lifetime() -> None:
    state, delta = advance_rank(None, rep(200, at=100.0, elapsed=2.0))
    assert (delta.dt, delta.samples, delta.bytes) == (2.0, 200, 200_000)
    assert state.samples_per_s == 100.0 and state.mb_per_s == 0.1 and state.reports == 1


def test_next_report_is_the_difference() -> None:
    first, _ = advance_rank(None, rep(200, at=100.0, elapsed=2.0, blocked=0.5))
    state, delta = advance_rank(first, rep(500, at=102.5, elapsed=4.0, blocked=0.75))
    assert (delta.dt, delta.samples, delta.blocked_s) == (2.0, 300, 0.25)
    assert state.samples_per_s == 150.0 and state.first_at == 100.0 and state.reports == 2


def test_without_elapsed_the_receive_times_are_used() -> None:
    first, _ = advance_rank(None, rep(0, at=100.0, elapsed=None))
    _, delta = advance_rank(first, rep(40, at=104.0, elapsed=None))
    assert (delta.dt, delta.samples) == (4.0, 40)


@pytest.mark.parametrize(
    "second",
    [rep(50, at=110.0, elapsed=9.0), rep(900, at=110.0, elapsed=1.0)],
    ids=["counter-back", "clock-back"],
)
def test_a_restarted_reporter_counts_from_zero_again(second: JobReport) -> None:
    first, _ = advance_rank(None, rep(800, at=100.0, elapsed=8.0))
    state, delta = advance_rank(first, second)
    assert delta.samples == second.samples and state.reports == 1


def test_summary_sums_work_but_never_per_rank_duplicates_or_missing() -> None:
    a, _ = advance_rank(
        None,
        rep(100, at=100.0, elapsed=1.0, tracker={"duplicates": 2, "missing": 3, "delivered": 9}),
    )
    b, _ = advance_rank(
        None,
        rep(300, at=50.0, elapsed=1.0, rank=1, epoch=4, tracker={"duplicates": 1, "delivered": 4}),
    )
    doc = summarize("j", [a, b], now=101.0, stale_s=10.0)
    assert doc["samples"] == 400 and doc["active_ranks"] == 1
    assert doc["samples_per_s"] == 100.0
    assert (doc["duplicates"], doc["missing"], doc["epoch"]) == (None, None, 4)
    assert doc["tracker"] == {"delivered": 13, "scope": "unmerged"}
    assert [r["active"] for r in doc["ranks"]] == [True, False]


def test_one_reporting_process_gives_its_own_counts() -> None:
    a, _ = advance_rank(None, rep(100, at=100.0, elapsed=1.0, tracker={"missing": 3}))
    doc = summarize("j", [a], now=100.0, stale_s=10.0)
    assert (doc["duplicates"], doc["missing"], doc["tracker"]["scope"]) == (None, 3, "rank")


def test_merged_counts_win_over_per_rank_counts() -> None:
    a, _ = advance_rank(None, rep(100, at=100.0, elapsed=1.0, tracker={"missing": 50}))
    b, _ = advance_rank(None, rep(100, at=100.0, elapsed=1.0, rank=1, tracker={"missing": 50}))
    merged = {"scope": "merged", "duplicates": 0, "missing": 0}
    doc = summarize("j", [a, b], now=100.0, stale_s=10.0, merged=merged)
    assert (doc["duplicates"], doc["missing"], doc["tracker"]) == (0, 0, merged)


def test_summary_without_tracker_counts_says_none() -> None:
    a, _ = advance_rank(None, rep(100, at=100.0, elapsed=1.0))
    doc = summarize("j", [a], now=100.0, stale_s=10.0)
    assert doc["duplicates"] is None and doc["missing"] is None


def test_rank_state_round_trips_through_json() -> None:
    state, _ = advance_rank(None, rep(7, at=1.0, elapsed=1.0, epoch=2, tracker={"missing": 1}))
    assert RankState.from_json(state.to_json()) == state


def test_series_spreads_each_delta_over_its_interval() -> None:
    points = series([(14.0, 4.0, 400, 0, 2.0)], start=8.0, end=16.0, bucket_s=2.0)
    assert [p["t"] for p in points] == [8.0, 10.0, 12.0, 14.0]
    assert [p["samples_per_s"] for p in points] == [0.0, 100.0, 100.0, 0.0]
    assert [p["blocked_s_per_s"] for p in points] == [0.0, 0.5, 0.5, 0.0]


def test_series_keeps_the_total_and_clips_to_the_window() -> None:
    deltas = [(10.5, 1.5, 300, 0, 0.0), (11.0, 0.0, 30, 0, 0.0), (30.0, 1.0, 999, 0, 0.0)]
    points = series(deltas, start=8.0, end=12.0, bucket_s=1.0)
    assert sum(p["samples_per_s"] for p in points) == pytest.approx(330.0)
    assert [p["samples_per_s"] for p in points] == pytest.approx([0.0, 200.0, 100.0, 30.0])


def test_series_caps_the_number_of_buckets() -> None:
    points = series([], start=0.0, end=10_000.0, bucket_s=0.1)
    assert 2000 <= len(points) <= 2001


@pytest.mark.parametrize("bucket", [0.0, -1.0, float("inf"), float("nan")])
def test_series_refuses_a_bad_bucket(bucket: float) -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        series([], start=0.0, end=1.0, bucket_s=bucket)


def test_empty_window_has_no_points() -> None:
    assert series([(1.0, 1.0, 1, 1, 0.0)], start=5.0, end=5.0, bucket_s=1.0) == []


def test_validation_results_are_kept_per_epoch_from_the_lowest_rank() -> None:
    evals = [{"epoch": 0, "top1": 0.5, "samples": 10}, {"epoch": 1, "top1": 0.75, "samples": 10}]
    ranks = []
    for rank, entries in ((1, evals), (0, evals[:1])):
        report = JobReport(
            job="j", rank=rank, received_at=1.0, samples=1, bytes=0, blocked_s=0.0,
            evals=[dict(e, top1=float(e["top1"]) - rank / 10) for e in entries],
        )  # fmt: skip
        state, _ = advance_rank(None, report)
        assert RankState.from_json(state.to_json()) == state
        ranks.append(state)
    doc = summarize("j", ranks, now=1.0, stale_s=10.0)
    assert [(e["epoch"], e["top1"]) for e in doc["evals"]] == [(0, 0.5), (1, 0.65)]


@pytest.mark.parametrize(
    "entry",
    [
        {"epoch": 0, "top1": 1.5, "samples": 1},
        {"epoch": -1, "top1": 0.5, "samples": 1},
        {"epoch": 0, "top1": float("nan"), "samples": 1},
        {"epoch": 0, "samples": 1},
    ],
)
def test_a_bad_validation_entry_is_refused(entry: dict[str, float]) -> None:
    from pydantic import ValidationError

    from server.models import StatsReport

    with pytest.raises(ValidationError):
        StatsReport(samples=1, evals=[entry])
