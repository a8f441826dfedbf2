"""A job's delivery counts over all ranks: the union of the processes' id bitmaps."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.tracker import pack_seen
from server.coverage import CoverageError, job_summary, merge_seen, read_coverage
from server.jobs import JobReport
from server.store import JobLimitError, Store

N = 100


def report(
    ids: list[int] | np.ndarray,
    *,
    rank: int,
    reporter: str,
    at: float,
    epoch: int = 0,
    n: int = N,
    resumed_at_step: int | None = None,
) -> JobReport:
    seen = np.zeros(n, dtype=bool)
    seen[np.asarray(ids, dtype=np.int64)] = True
    return JobReport(
        job="j",
        rank=rank,
        received_at=at,
        samples=len(ids),
        bytes=0,
        blocked_s=0.0,
        elapsed_s=at,
        epoch=epoch,
        reporter=reporter,
        coverage={"epoch": epoch, "num_samples": n, "delivered": len(ids), "padded": 0},
        seen=pack_seen(seen),
        resumed_at_step=resumed_at_step,
    )


def counts(store: Store, now: float = 10.0) -> tuple[int | None, int | None]:
    doc = job_summary(store, "j", now=now, stale_s=5.0)
    return doc["duplicates"], doc["missing"]


def test_two_ranks_with_disjoint_halves_are_exactly_once() -> None:
    store = Store(":memory:")
    store.add_report(report(range(50), rank=0, reporter="a", at=10.0), keep=100)
    store.add_report(report(range(50, 100), rank=1, reporter="b", at=10.0), keep=100)
    assert counts(store) == (0, 0)
    doc = job_summary(store, "j", now=10.0, stale_s=5.0)
    assert doc["tracker"]["unique"] == N and doc["tracker"]["reporters"] == 2


def test_two_processes_claiming_rank_0_show_its_samples_twice_and_rank_1_missing() -> None:
    store = Store(":memory:")
    store.add_report(report(range(50), rank=0, reporter="a", at=10.0), keep=100, stale_s=5.0)
    store.add_report(report(range(50), rank=0, reporter="b", at=10.0), keep=100, stale_s=5.0)
    assert len(store.job_ranks("j")) == 2
    assert counts(store) == (50, 50)


def test_a_restarted_process_replaces_its_silent_predecessor() -> None:
    store = Store(":memory:")
    store.add_report(report(range(50), rank=0, reporter="old", at=1.0), keep=100, stale_s=5.0)
    store.add_report(report(range(50), rank=0, reporter="new", at=10.0), keep=100, stale_s=5.0)
    store.add_report(report(range(50, 100), rank=1, reporter="b", at=10.0), keep=100)
    assert [r.reporter for r in store.job_ranks("j")] == ["new", "b"]
    assert counts(store) == (0, 0)


def test_a_resumed_run_leaves_out_the_processes_that_stopped_before_it() -> None:
    store = Store(":memory:")
    # The first run's two ranks were killed at t=5 after delivering 0..59 (the checkpoint
    # kept 0..39); the resumed run's one rank starts from the checkpoint's ids at t=6.
    store.add_report(report(range(30), rank=0, reporter="a", at=5.0), keep=100)
    store.add_report(report(range(50, 80), rank=1, reporter="b", at=5.0), keep=100)
    resumed = [*range(20), *range(50, 70), *range(20, 50), *range(70, 100)]
    store.add_report(
        report(resumed, rank=0, reporter="c", at=6.0, resumed_at_step=10), keep=100, stale_s=30.0
    )
    doc = job_summary(store, "j", now=7.0, stale_s=30.0)
    assert (doc["duplicates"], doc["missing"], doc["tracker"]["reporters"]) == (0, 0, 1)
    assert doc["samples"] == 30 + 30 + 100  # the work done counts every process


def test_processes_per_job_are_bounded() -> None:
    store = Store(":memory:")
    store.add_report(report([0], rank=0, reporter="a", at=1.0), keep=100, max_reporters=1)
    with pytest.raises(JobLimitError, match="job_max_ranks"):
        store.add_report(report([1], rank=1, reporter="b", at=1.0), keep=100, max_reporters=1)


def test_only_the_newest_epoch_and_live_processes_count() -> None:
    store = Store(":memory:")
    store.add_report(report(range(100), rank=0, reporter="a", at=10.0, epoch=0), keep=100)
    store.add_report(report(range(10), rank=1, reporter="b", at=10.0, epoch=1), keep=100)
    store.add_report(report(range(100), rank=2, reporter="c", at=1.0, epoch=1), keep=100)
    assert counts(store) == (0, 90)  # only b is live and in epoch 1


def test_no_bitmap_from_several_processes_means_unknown() -> None:
    store = Store(":memory:")
    for rank in (0, 1):
        plain = JobReport("j", rank, 1.0, 5, 0, 0.0, tracker={"missing": 50, "delivered": 5})
        store.add_report(plain, keep=100)
    assert counts(store) == (None, None)
    assert merge_seen(store.job_seen("j"), stale_s=5.0) is None


def test_ranks_of_other_sizes_are_an_error_not_a_count() -> None:
    store = Store(":memory:")
    store.add_report(report([0], rank=0, reporter="a", at=1.0, n=10), keep=100)
    store.add_report(report([0], rank=1, reporter="b", at=1.0, n=20), keep=100)
    doc = merge_seen(store.job_seen("j"), stale_s=5.0)
    assert doc is not None and "num_samples" in doc["error"] and counts(store, 1.0) == (None, None)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, N - 1), max_size=60), min_size=1, max_size=5),
)
def test_merged_counts_equal_a_single_tracker_over_all_ids(parts: list[list[int]]) -> None:
    store = Store(":memory:")
    for rank, ids in enumerate(parts):
        store.add_report(report(ids, rank=rank, reporter=str(rank), at=1.0), keep=100)
    everything = [i for ids in parts for i in ids]
    unique = len(set(everything))
    assert counts(store, 1.0) == (len(everything) - unique, N - unique)


def _coverage(blob: bytes, *, n: int = N, delivered: int = 0) -> dict[str, object]:
    seen = base64.b64encode(blob).decode()
    return {"epoch": 0, "num_samples": n, "delivered": delivered, "padded": 0, "seen": seen}


@pytest.mark.parametrize(
    ("coverage", "message"),
    [
        (_coverage(b"not zlib"), "corrupt"),
        ({**_coverage(b""), "seen": "%%%"}, "base64"),
        (_coverage(pack_seen(np.ones(8, bool)), n=N), "bytes"),
        (_coverage(pack_seen(np.ones(N, bool)), delivered=3), "delivered"),
        (_coverage(pack_seen(np.zeros(N, bool)), n=10**9), "job_max_samples"),
    ],
)
def test_bad_bitmaps_are_refused_naming_the_field(
    coverage: dict[str, object], message: str
) -> None:
    with pytest.raises(CoverageError, match=message):
        read_coverage(coverage, max_samples=10**6)


def test_an_old_store_file_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    import sqlite3

    from server._schema import _SCHEMA_V1

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_V1)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        state = JobReport("j", 3, 1.0, 7, 0, 0.0)
        from server.jobs import advance_rank

        db.execute(
            "INSERT INTO job_ranks VALUES (?, ?, ?)",
            ("j", 3, advance_rank(None, state)[0].to_json()),
        )
    store = Store(path)
    assert store.schema_version() == 2
    assert [(r.rank, r.samples, r.reporter) for r in store.job_ranks("j")] == [(3, 7, "")]
