from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from server.jobs import JobReport
from server.store import SCHEMA_VERSION, Store, StoreError


def report(samples: int, at: float, elapsed: float, rank: int = 0, job: str = "j") -> JobReport:
    return JobReport(
        job=job,
        rank=rank,
        received_at=at,
        samples=samples,
        bytes=samples * 10,
        blocked_s=0.0,
        elapsed_s=elapsed,
    )


def test_new_file_gets_the_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    assert store.schema_version() == SCHEMA_VERSION
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="schema version"):
        Store(tmp_path / "s.db")


def test_run_lifecycle_and_results_survive_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    first = store.create_run({"shards": "/d", "modes": ["tar-aware"]})
    second = store.create_run({"shards": "/d", "modes": ["map"]})
    assert first.status == "queued" and first.progress == 0
    assert store.next_queued() == first
    assert store.claim_run(first.id)
    assert not store.claim_run(first.id)
    store.update_progress(first.id, 0.5, {"type": "epoch", "progress": 0.5})
    store.update_progress(first.id, 0.25, {"type": "epoch", "progress": 0.25})
    running = store.get_run(first.id)
    assert running is not None and running.status == "running" and running.progress == 0.5
    result = {"modes": {"tar-aware": {"duplicates": 0}}}
    store.finish_run(first.id, "done", result=result)
    assert store.next_queued() == second
    assert [r.id for r in store.list_runs()] == [second.id, first.id]
    store.close()

    again = Store(tmp_path / "s.db")
    done = again.get_run(first.id)
    assert done is not None
    assert (done.status, done.result, done.progress) == ("done", result, 1.0)
    assert again.count_runs()["queued"] == 1
    assert again.latest_done_run() == done


def test_a_run_going_when_the_process_died_is_interrupted_at_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    run = store.create_run({"shards": "/d"})
    store.claim_run(run.id)
    store.close()
    again = Store(tmp_path / "s.db")
    assert again.interrupted_at_open == 1
    record = again.get_run(run.id)
    assert record is not None and record.status == "interrupted"
    assert record.error and "stopped" in record.error


def test_finished_runs_stay_finished(tmp_path: Path) -> None:
    store = Store(":memory:")
    run = store.create_run({"shards": "/d"})
    store.finish_run(run.id, "failed", error="boom")
    after = store.finish_run(run.id, "done", result={"x": 1})
    assert after is not None and (after.status, after.result, after.error) == (
        "failed",
        None,
        "boom",
    )
    with pytest.raises(ValueError, match="final status"):
        store.finish_run(run.id, "running")


def test_cancel_is_immediate_when_queued_and_a_flag_when_running() -> None:
    store = Store(":memory:")
    queued = store.create_run({"shards": "/d"})
    running = store.create_run({"shards": "/d"})
    store.claim_run(running.id)
    cancelled = store.request_cancel(queued.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert not store.claim_run(queued.id)
    flagged = store.request_cancel(running.id)
    assert flagged is not None and flagged.status == "running" and flagged.cancel_requested
    assert store.request_cancel("nope") is None


def test_reports_become_deltas_and_rank_state() -> None:
    store = Store(":memory:")
    store.add_report(report(100, at=10.0, elapsed=1.0), keep=1000)
    state = store.add_report(report(300, at=12.0, elapsed=3.0), keep=1000)
    store.add_report(report(50, at=11.0, elapsed=1.0, rank=1), keep=1000)
    assert state.samples == 300 and state.samples_per_s == 100.0 and state.reports == 2
    assert store.job_names() == ["j"]
    assert [r.rank for r in store.job_ranks("j")] == [0, 1]
    deltas = store.job_deltas("j", since=0.0)
    assert [(d[0], d[1], d[2]) for d in deltas] == [
        (10.0, 1.0, 100),
        (12.0, 2.0, 200),
        (11.0, 1.0, 50),
    ]
    assert store.job_deltas("j", since=11.5) == [deltas[1]]
    assert store.job_ranks("other") == []


def test_old_reports_are_pruned_per_job() -> None:
    store = Store(":memory:")
    for i in range(200):
        store.add_report(report(i + 1, at=float(i), elapsed=float(i + 1)), keep=50)
    kept = store.job_deltas("j", since=-1.0)
    assert 50 <= len(kept) < 50 + 64
    assert kept[-1][0] == 199.0
    assert store.job_ranks("j")[0].samples == 200


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")

    def post(rank: int) -> None:
        for i in range(50):
            store.add_report(
                report(i + 1, at=float(i), elapsed=float(i + 1), rank=rank), keep=10**6
            )

    threads = [threading.Thread(target=post, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.job_deltas("j", since=-1.0)) == 200
    assert sum(d[2] for d in store.job_deltas("j", since=-1.0)) == 4 * 50
