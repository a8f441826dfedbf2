"""The jobs API stays bounded (docs/architecture.md, section "Service"): capped ranks and jobs,
retention per job by count and age, summaries linear in the ranks, series linear in the
deltas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from server.app import create_app
from server.jobs import JobReport, RankState, series, summarize
from server.store import JobLimitError, Store
from tests.server.helpers import TestClient, TinyData, make_settings


def report(job: str, samples: int, at: float, *, rank: int = 0) -> JobReport:
    return JobReport(job, rank, at, samples, samples * 10, 0.0, elapsed_s=at)


def test_ranks_beyond_the_cap_are_422_naming_rank(tmp_path: Path, tiny_data: TinyData) -> None:
    settings_ = make_settings(tmp_path, [tiny_data.root], job_max_ranks=4, job_max_jobs=2)
    with TestClient(create_app(settings_)) as c:
        assert c.post("/api/jobs/a/stats", json={"rank": 3, "samples": 1}).status_code == 202
        answer = c.post("/api/jobs/a/stats", json={"rank": 4, "samples": 1})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"] == ["body", "rank"]
        assert "job_max_ranks" in answer.text
        assert c.post("/api/jobs/b/stats", json={"samples": 1}).status_code == 202
        full = c.post("/api/jobs/c/stats", json={"samples": 1})
        assert full.status_code == 429 and "job_max_jobs" in full.text
        assert c.post("/api/jobs/a/stats", json={"samples": 2}).status_code == 202


def test_jobs_past_their_retention_make_room_and_lose_old_reports() -> None:
    store = Store(":memory:")
    limits: dict[str, Any] = {"keep": 1000, "max_jobs": 2, "max_age_s": 100.0}
    store.add_report(report("old", 1, 0.0), **limits)
    store.add_report(report("mid", 1, 50.0), **limits)
    with pytest.raises(JobLimitError, match="job_max_jobs=2"):
        store.add_report(report("new", 1, 90.0), **limits)
    store.add_report(report("new", 1, 120.0), **limits)
    assert store.job_names() == ["mid", "new"]
    for i in range(300):
        store.add_report(report("mid", 2 + i, 60.0 + i), **limits)
    ages = [d[0] for d in store.job_deltas("mid", since=-1.0)]
    assert min(ages) >= 359.0 - 100.0 - 64, "reports older than max_age_s are pruned"


def test_retention_by_count_holds_for_jobs_reporting_in_lockstep() -> None:
    store = Store(":memory:")
    for i in range(400):
        for job in ("a", "b"):
            store.add_report(report(job, i + 1, float(i)), keep=20)
    for job in ("a", "b"):
        kept = store.job_deltas(job, since=-1.0)
        assert 20 <= len(kept) <= 20 + 64, (job, len(kept))


def test_summaries_never_compare_ranks_with_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    ranks = [
        RankState(r, 0.0, float(r % 50), 1, 1, 0.0, None, None, {}, 0, 1, 1.0, 0.1)
        for r in range(300)
    ]
    compared = []

    def counting_eq(self: RankState, other: object) -> bool:
        compared.append(1)
        return self is other

    monkeypatch.setattr(RankState, "__eq__", counting_eq)
    doc = summarize("j", ranks, now=60.0, stale_s=30.0)
    assert not compared, f"{len(compared)} rank comparisons for 300 ranks"
    assert doc["active_ranks"] == sum(1 for r in ranks if 60.0 - r.last_at <= 30.0)
    assert [r["active"] for r in doc["ranks"]] == [60.0 - r.last_at <= 30.0 for r in ranks]


def _reference_series(
    deltas: list[tuple[float, float, int, int, float]], start: float, end: float, bucket_s: float
) -> list[float]:
    """The spreading rule spelled out bucket by bucket (quadratic, for comparison only)."""
    first = math.floor(start / bucket_s)
    count = max(math.ceil(end / bucket_s) - first, 1)
    sums = [0.0] * count
    for at, dt, samples, _, _ in deltas:
        lo, hi = (at - dt, at) if dt > 0 else (at, at)
        for i in range(count):
            b_lo, b_hi = (first + i) * bucket_s, (first + i + 1) * bucket_s
            if dt <= 0:
                sums[i] += samples if b_lo <= at < b_hi else 0
            else:
                sums[i] += samples * max(min(hi, b_hi) - max(lo, b_lo), 0.0) / dt
    return [s / bucket_s for s in sums]


delta = st.tuples(
    st.floats(0, 100),
    st.floats(0, 150) | st.just(0.0),
    st.integers(0, 10_000),
    st.just(0),
    st.just(0.0),
)


@seed(13)
@settings(max_examples=150, deadline=2000)
@given(deltas=st.lists(delta, max_size=30), bucket_s=st.sampled_from([0.5, 1.0, 2.0, 7.0]))
def test_series_matches_the_bucket_by_bucket_rule(
    deltas: list[tuple[float, float, int, int, float]], bucket_s: float
) -> None:
    got = [p["samples_per_s"] for p in series(deltas, start=10.0, end=90.0, bucket_s=bucket_s)]
    want = _reference_series(deltas, 10.0, 90.0, bucket_s)
    assert got == pytest.approx(want, rel=1e-6, abs=2e-3)
