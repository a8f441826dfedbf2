"""A mixed job's per-source counts: a real two-source loader on two gloo ranks, each rank's
``MixTracker`` and ``StatsReporter`` against a live ``shardfeed serve``, rank 0 also sending the
merged view; the aggregation rule (``server.sources``) and the bounds of
``StatsReport.sources``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch.distributed as dist
import torch.multiprocessing as tmp
from hypothesis import given
from hypothesis import strategies as st
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


def mix_sources(root: Path) -> list[Source]:
    web, curated = root / "s0" / "manifest.json", root / "s1" / "manifest.json"
    return [Source(web, weight=2, name="web"), Source(curated, repeat=2, name="curated")]


def _mixed_rank(rank: int, root: Path, init_file: Path, url: str) -> None:
    """One rank of a mixed job: its loader, ``MixTracker`` and ``StatsReporter``; each rank
    reports its own counts per source, then rank 0 the merged ones (``all_ranks``). Between the
    two, rank 0 writes what the service showed to ``root/unmerged.json``."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(name, None)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        sources = mix_sources(root)
        loader = make_loader(sources, multiprocessing_context="fork", **FAST)
        tracker = MixTracker(loader.dataset.mix)
        with StatsReporter(url, "mix2", "secret", interval_s=3600) as reporter:
            for batch in loader:
                tracker.update(batch.source, batch.ids, batch.padded)
                reporter.record(
                    samples=len(batch.ids),
                    epoch=tracker.epoch,
                    source_counts=named_counts(tracker.counts(), sources),
                )
            assert reporter.flush(), reporter.last_error
            dist.barrier()
            if rank == 0:
                shown = httpx.get(f"{url}/api/jobs/mix2").json()["sources"]
                gauges = [[*k, v] for k, v in source_gauges(url, "mix2").items()]
                (root / "unmerged.json").write_text(json.dumps([shown, gauges]))
            dist.barrier()
            merged = tracker.all_ranks()
            if rank == 0:
                counts = named_counts(merged.counts(), sources)
                reporter.record(source_counts=counts, sources_merged=True)
                assert reporter.flush(), reporter.last_error
    finally:
        dist.destroy_process_group()


def test_a_two_rank_mix_reports_its_counts_per_source(tmp_path: Path) -> None:
    write_sources(tmp_path, [[9, 5], [4, 3]])
    mix = make_loader(mix_sources(tmp_path), **FAST).dataset.mix
    quotas = dict(zip(["web", "curated"], mix.quotas, strict=True))
    sizes = dict(zip(["web", "curated"], mix.sizes, strict=True))
    server = LiveServer(
        tmp_path / "service.db",
        [tmp_path],
        tmp_path / "serve.log",
        token="secret",
        env={"SHARDFEED_JOB_STALE_S": str(NEVER_STALE_S)},
    ).start()
    try:
        tmp.spawn(_mixed_rank, args=(tmp_path, tmp_path / "init", server.url), nprocs=2)
        shown, gauge_rows = json.loads((tmp_path / "unmerged.json").read_text())
        assert (shown["scope"], shown["epoch"], shown["reporters"]) == ("unmerged", 0, 2)
        assert shown["counts"] == {
            name: {"quota": quota, "delivered": quota, "padded": shown["counts"][name]["padded"]}
            for name, quota in quotas.items()
        }  # a rank alone would count the other rank's share as missing: none is shown
        gauges = {(figure, name): value for figure, name, value in gauge_rows}
        assert {k: v for k, v in gauges.items() if k[0] == "delivered"} == {
            ("delivered", name): quota for name, quota in quotas.items()
        }
        assert not [k for k in gauges if k[0] in ("duplicates", "missing")]

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


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["web", "curated", "x"]), st.integers(0, 10**6), min_size=1
        ),
        min_size=2,
        max_size=8,
    ),
    st.integers(0, 7),
)
def test_unmerged_ranks_sum_delivered_and_show_nothing_that_does_not_add_up(
    delivered: list[dict[str, int]], merged_at: int
) -> None:
    ranks = [
        rank(
            r,
            {
                n: {"quota": 9, "delivered": d, "duplicates": 0, "missing": 1}
                for n, d in row.items()
            },
        )
        for r, row in enumerate(delivered)
    ]
    doc = job_sources(ranks)
    assert doc is not None and doc["scope"] == "unmerged"
    for name, row in doc["counts"].items():
        assert row == {
            "quota": 9,
            "delivered": sum(d.get(name, 0) for d in delivered),
            "padded": 0,
        }
    if merged_at < len(ranks):
        ranks[merged_at] = rank(merged_at, {"web": {"delivered": 3}}, sources_scope="merged")
        doc = job_sources(ranks)
        assert doc is not None and doc["from_rank"] == merged_at
        assert doc["counts"] == {"web": {"delivered": 3}}


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
