"""A mixed job's per-source counts: a real two-source loader on two ranks, each rank's
``MixTracker`` and ``StatsReporter`` against a live ``shardfeed serve``; the aggregation rule
(``server.sources``) and the bounds of ``StatsReport.sources``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loader import Source, make_loader
from loader.mix.report import MAX_SOURCES, named_counts
from loader.mix.tracker import MixTracker
from loader.reporter import StatsReporter
from server.jobs import RankState
from server.sources import job_sources
from tests.loader.mix.helpers import write_sources
from tests.server.conftest import NEVER_STALE_S
from tests.server.helpers import LiveServer, TestClient

FAST = {"decode": False, "image_size": 0, "batch_size": 4, "num_workers": 2, "prefetch_factor": 1}


def source_gauges(url: str, job: str) -> dict[tuple[str, str], float]:
    """``(figure, source) -> value`` of the job's ``shardfeed_job_source_*`` series."""
    out = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name.startswith("shardfeed_job_source_"):
            for sample in family.samples:
                if sample.labels["job"] == job:
                    figure = family.name.removeprefix("shardfeed_job_source_")
                    out[(figure, sample.labels["source"])] = sample.value
    return out


def test_a_two_rank_mix_reports_its_counts_per_source(tmp_path: Path) -> None:
    web, curated = write_sources(tmp_path, [[9, 5], [4, 3]])
    sources = [Source(web, weight=2, name="web"), Source(curated, repeat=2, name="curated")]
    loaders = [make_loader(sources, rank=r, world_size=2, **FAST) for r in range(2)]
    quotas = dict(zip(["web", "curated"], loaders[0].dataset.mix.quotas, strict=True))
    sizes = dict(zip(["web", "curated"], loaders[0].dataset.mix.sizes, strict=True))
    server = LiveServer(
        tmp_path / "service.db",
        [tmp_path],
        tmp_path / "serve.log",
        token="secret",
        env={"SHARDFEED_JOB_STALE_S": str(NEVER_STALE_S)},
    ).start()
    try:
        trackers = [MixTracker(loader.dataset.mix) for loader in loaders]
        merged = MixTracker(loaders[0].dataset.mix)  # what rank 0 holds after merging the ranks
        reporters = [
            StatsReporter(server.url, "mix2", "secret", interval_s=3600, rank=r) for r in range(2)
        ]
        for loader, tracker, reporter in zip(loaders, trackers, reporters, strict=True):
            for batch in loader:
                tracker.update(batch.source, batch.ids, batch.padded)
                merged.update(batch.source, batch.ids, batch.padded)
                reporter.record(
                    samples=len(batch.ids),
                    epoch=tracker.epoch,
                    source_counts=named_counts(tracker.counts(), sources),
                )
            assert reporter.flush(), reporter.last_error

        job = httpx.get(f"{server.url}/api/jobs/mix2").json()["sources"]
        assert (job["scope"], job["epoch"], job["reporters"]) == ("unmerged", 0, 2)
        assert job["counts"] == {
            name: {"quota": quota, "delivered": quota, "padded": job["counts"][name]["padded"]}
            for name, quota in quotas.items()
        }  # a rank alone would count the other rank's share as missing: none is shown
        gauges = source_gauges(server.url, "mix2")
        assert {k: v for k, v in gauges.items() if k[0] == "delivered"} == {
            ("delivered", name): quota for name, quota in quotas.items()
        }
        assert not [k for k in gauges if k[0] in ("duplicates", "missing")]

        reporters[0].record(
            source_counts=named_counts(merged.counts(), sources), sources_merged=True
        )
        assert reporters[0].flush(), reporters[0].last_error
        job = httpx.get(f"{server.url}/api/jobs/mix2").json()["sources"]
        assert (job["scope"], job["from_rank"]) == ("merged", 0)
        for name, quota in quotas.items():
            row = job["counts"][name]
            assert (row["quota"], row["delivered"]) == (quota, quota)
            assert row["unique"] == min(quota, sizes[name])  # curated: each id twice, as planned
            assert (row["duplicates"], row["missing"]) == (0, 0)
        gauges = source_gauges(server.url, "mix2")
        for name, quota in quotas.items():
            assert gauges[("delivered", name)] == gauges[("quota", name)] == quota
            assert gauges[("duplicates", name)] == gauges[("missing", name)] == 0
        for reporter in reporters:
            reporter.close()
    finally:
        server.stop()


def rank(rank: int, sources: dict[str, dict[str, int]], **kw: Any) -> RankState:
    values: dict[str, Any] = {
        "rank": rank, "first_at": 0.0, "last_at": 1.0, "samples": 0, "bytes": 0,
        "blocked_s": 0.0, "elapsed_s": None, "epoch": 0, "tracker": {}, "failed_sends": 0,
        "reports": 1, "samples_per_s": 0.0, "mb_per_s": 0.0, "sources": sources,
    }  # fmt: skip
    return RankState(**{**values, **kw})


def test_duplicates_and_missing_never_come_from_a_sum_of_ranks() -> None:
    a = {"web": {"quota": 10, "delivered": 5, "unique": 5, "duplicates": 0, "missing": 5}}
    b = {"web": {"quota": 10, "delivered": 5, "unique": 5, "duplicates": 0, "missing": 5}}
    assert job_sources([]) is None and job_sources([rank(0, {})]) is None
    one = job_sources([rank(0, a)])
    assert one is not None and (one["scope"], one["counts"]) == ("rank", a)
    two = job_sources([rank(0, a), rank(1, b)])
    assert two is not None and two["counts"] == {"web": {"quota": 10, "delivered": 10, "padded": 0}}
    other = {"web": {**b["web"], "quota": 11}}
    three = job_sources([rank(0, a), rank(1, other)])
    assert three is not None and "quota" not in three["counts"]["web"]
    full = {"web": {"quota": 10, "delivered": 10, "unique": 10, "duplicates": 0, "missing": 0}}
    merged = job_sources([rank(0, full, sources_scope="merged"), rank(1, b)])
    assert merged is not None and (merged["scope"], merged["counts"]) == ("merged", full)
    moved_on = job_sources([rank(0, full, sources_scope="merged"), rank(1, b, epoch=1)])
    assert moved_on is not None and (moved_on["scope"], moved_on["epoch"]) == ("rank", 1)


@pytest.mark.parametrize(
    ("sources", "where"),
    [
        ({f"s{i}": {"delivered": 1} for i in range(MAX_SOURCES + 1)}, "sources"),
        ({"bad\nname": {"delivered": 1}}, "sources"),
        ({"x" * 65: {"delivered": 1}}, "sources"),
        ({"web": {"quota": 1}}, "delivered"),
        ({"web": {"delivered": -1}}, "delivered"),
        ({"web": {"delivered": 1, "unique": 2}}, "unique <= delivered"),
    ],
)
def test_bad_source_counts_are_422_naming_the_field(
    client: TestClient, sources: dict[str, Any], where: str
) -> None:
    answer = client.post("/api/jobs/j/stats", json={"samples": 1, "sources": sources})
    assert answer.status_code == 422, answer.text
    assert where in answer.text
    assert client.get("/api/jobs/j").status_code == 404
