"""server.ranks: the slowest rank by exposed loading time, the spread, bounded metrics."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.jobs import JobReport, RankState, advance_rank
from server.ranks import exposed_fraction, rank_spread
from tests.server.helpers import TestClient


def state(rank: int, *, at: float = 100.0, **loading: Any) -> RankState:
    blocked = loading.pop("blocked_s", 0.0)
    elapsed = loading.pop("elapsed_s", 10.0)
    report = JobReport("j", rank, at, 10, 0, blocked, elapsed, loading=loading)
    return advance_rank(None, report)[0]


def test_the_rank_blocked_longest_in_its_window_is_the_slowest() -> None:
    ranks = [
        state(0, window_s=10.0, window_blocked_s=1.0, blocked_p99_s=0.02, queue_depth=4),
        state(1, window_s=10.0, window_blocked_s=6.0, blocked_p99_s=0.4, queue_depth=0),
        state(2, window_s=5.0, window_blocked_s=1.0),
        state(3, window_s=10.0, window_blocked_s=0.5),
    ]
    doc = rank_spread(ranks, now=101.0, stale_s=30.0)
    assert doc["slowest_rank"] == 1
    assert [r["slowest"] for r in doc["ranks"]] == [False, True, False, False]
    assert doc["spread"] == {"min": 0.05, "median": 0.15, "max": 0.6, "max_over_median": 4.0}
    row = doc["ranks"][1]
    assert (row["exposed_fraction"], row["blocked_p99_s"], row["queue_depth"]) == (0.6, 0.4, 0)


def test_stale_ranks_and_ranks_without_figures_do_not_take_part() -> None:
    ranks = [
        state(0, window_s=10.0, window_blocked_s=1.0),
        state(1, at=10.0, window_s=10.0, window_blocked_s=9.0),  # silent for 91 s
        state(2, elapsed_s=0.0),  # no window, no lifetime: no figure
    ]
    doc = rank_spread(ranks, now=101.0, stale_s=30.0)
    assert doc["slowest_rank"] == 0
    assert [r["active"] for r in doc["ranks"]] == [True, False, True]
    assert doc["ranks"][2]["exposed_fraction"] is None
    assert rank_spread([], now=0.0, stale_s=1.0)["slowest_rank"] is None


def test_without_a_window_the_lifetime_share_is_used() -> None:
    assert exposed_fraction(state(0, blocked_s=2.5, elapsed_s=10.0)) == 0.25
    assert exposed_fraction(state(0, blocked_s=2.5, elapsed_s=10.0, window_s=0.0)) == 0.25


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40))
def test_the_slowest_is_the_first_rank_with_the_largest_share(shares: list[float]) -> None:
    ranks = [state(i, window_s=1.0, window_blocked_s=s) for i, s in enumerate(shares)]
    doc = rank_spread(ranks, now=100.0, stale_s=1.0)
    assert doc["slowest_rank"] == shares.index(max(shares))
    assert sum(r["slowest"] for r in doc["ranks"]) == 1
    assert doc["spread"]["min"] <= doc["spread"]["median"] <= doc["spread"]["max"]


def post(client: TestClient, job: str, rank: int, blocked: float) -> None:
    body = {
        "rank": rank,
        "samples": 100,
        "elapsed_s": 10.0,
        "blocked_s": blocked,
        "window_s": 10.0,
        "window_steps": 50,
        "window_blocked_s": blocked,
        "blocked_p50_s": blocked / 100,
        "blocked_p95_s": blocked / 60,
        "blocked_p99_s": blocked / 50,
        "queue_depth": 7 - rank % 7,
    }
    assert client.post(f"/api/jobs/{job}/stats", json=body).status_code == 202


def test_api_and_metrics_name_the_slowest_rank_with_bounded_series(client: TestClient) -> None:
    for rank in range(300):
        post(client, "wide", rank, 2.0 + (5.0 if rank == 137 else rank / 1000))
    doc = client.get("/api/jobs/wide").json()
    assert doc["loading"]["slowest_rank"] == 137
    assert len(doc["loading"]["ranks"]) == 300
    listing = {j["job"]: j for j in client.get("/api/jobs").json()["jobs"]}
    assert listing["wide"]["slowest_rank"] == 137

    metrics = client.get("/metrics").text
    assert 'shardfeed_job_slowest_rank{job="wide"} 137.0' in metrics
    assert 'shardfeed_job_slowest_rank_exposed_fraction{job="wide"} 0.7' in metrics
    assert 'shardfeed_job_slowest_rank_queue_depth{job="wide"} ' in metrics
    for stat in ("min", "median", "max"):
        assert f'shardfeed_job_exposed_loading_fraction{{job="wide",stat="{stat}"}}' in metrics
    for rank in range(2):
        post(client, "narrow", rank, 1.0 + rank)
    metrics = client.get("/metrics").text

    def series_of(job: str) -> list[str]:
        return [line.split("{")[0] for line in metrics.splitlines() if f'job="{job}"' in line]

    assert series_of("wide") == series_of("narrow")  # as many series for 300 ranks as for 2
    assert not re.search(r'rank="\d+"', metrics)


@pytest.mark.parametrize(
    ("field", "value"),
    [("queue_depth", -1), ("blocked_p99_s", -0.5), ("window_s", float("inf"))],
)
def test_bad_loading_figures_are_refused(client: TestClient, field: str, value: float) -> None:
    body = {"rank": 0, "samples": 1, field: value}
    if value == float("inf"):
        answer = client.post(
            "/api/jobs/j/stats",
            content=f'{{"rank": 0, "samples": 1, "{field}": Infinity}}',
            headers={"Content-Type": "application/json"},
        )
    else:
        answer = client.post("/api/jobs/j/stats", json=body)
    assert answer.status_code == 422, answer.text
