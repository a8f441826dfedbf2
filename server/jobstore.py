"""Training-job reports in the store: each reporting process's latest state and the deltas
between its reports (docs/architecture.md, "Service").

A job's state is kept per reporting process (``job_ranks``: job, rank, reporter), so two
processes that claim one rank are two rows rather than one overwriting the other. A process
that restarts gets a new reporter id; its predecessor's row is replaced when it has been
silent for ``stale_s``. Each row may carry the compressed bitmap of the ids the process
delivered in its current epoch (``seen``); ``server.coverage`` merges them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from server._sqlite import Database
from server.jobs import JobReport, RankState, advance_rank

__all__ = ["JobLimitError", "JobStore"]

_PRUNE_EVERY = 64
"""A job's old reports are pruned after every this many of its own reports (not the store's:
jobs reporting in lockstep would otherwise always leave the same job unpruned)."""


class JobLimitError(RuntimeError):
    """A report for a new job when ``max_jobs`` jobs are already kept (none old enough to
    drop), or for a new process of a job that has ``max_reporters``; the message names the
    limit."""


class JobStore(Database):
    """The ``job_ranks`` and ``job_reports`` tables."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, clock=clock)
        self._inserts: dict[str, int] = {}

    def add_report(
        self,
        report: JobReport,
        *,
        keep: int,
        max_jobs: int | None = None,
        max_age_s: float | None = None,
        stale_s: float | None = None,
        max_reporters: int | None = None,
    ) -> RankState:
        """Store one process's cumulative report and return its new state.

        The per-report deltas (work since the process's previous report) are derived here, so
        a time series is a sum of deltas. Retention is per job: after every ``_PRUNE_EVERY``
        of its reports, a job keeps its newest ``keep`` reports, none older than ``max_age_s``
        before this report. A new job when ``max_jobs`` are kept first drops the jobs silent
        for ``max_age_s``, then raises ``JobLimitError`` if there is still no room. A new
        process of a rank replaces the rank's processes silent for ``stale_s``; a job keeps at
        most ``max_reporters`` processes (``JobLimitError`` beyond).
        """
        key = (report.job, report.rank, report.reporter)
        with self._transaction() as db:
            row = db.execute(
                "SELECT state FROM job_ranks WHERE job = ? AND rank = ? AND reporter = ?", key
            ).fetchone()
            if row is None:
                self._new_reporter(db, report, max_jobs, max_age_s, stale_s, max_reporters)
            previous = None if row is None else RankState.from_json(row[0])
            state, delta = advance_rank(previous, report)
            db.execute(
                "INSERT INTO job_ranks (job, rank, reporter, state, seen) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (job, rank, reporter) DO UPDATE SET state = excluded.state, "
                "seen = excluded.seen",
                (*key, state.to_json(), report.seen),
            )
            db.execute(
                "INSERT INTO job_reports (job, rank, received_at, dt, d_samples, d_bytes, "
                "d_blocked_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    report.job,
                    report.rank,
                    report.received_at,
                    delta.dt,
                    delta.samples,
                    delta.bytes,
                    delta.blocked_s,
                ),
            )
            count = self._inserts.get(report.job, 0) + 1
            self._inserts[report.job] = count
            if count % _PRUNE_EVERY == 0:
                db.execute(
                    "DELETE FROM job_reports WHERE job = ? AND id <= (SELECT id FROM "
                    "job_reports WHERE job = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (report.job, report.job, keep),
                )
                if max_age_s is not None:
                    db.execute(
                        "DELETE FROM job_reports WHERE job = ? AND received_at < ?",
                        (report.job, report.received_at - max_age_s),
                    )
        return state

    def _new_reporter(
        self,
        db: sqlite3.Connection,
        report: JobReport,
        max_jobs: int | None,
        max_age_s: float | None,
        stale_s: float | None,
        max_reporters: int | None,
    ) -> None:
        """Called inside ``add_report``'s transaction for a process the store has not seen."""
        known = db.execute("SELECT 1 FROM job_ranks WHERE job = ? LIMIT 1", (report.job,))
        if known.fetchone() is None:
            if max_jobs is not None:
                self._make_room(db, report, max_jobs, max_age_s)
            return
        if stale_s is not None:
            db.execute(
                "DELETE FROM job_ranks WHERE job = ? AND rank = ? AND reporter != ? "
                "AND json_extract(state, '$.last_at') < ?",
                (report.job, report.rank, report.reporter, report.received_at - stale_s),
            )
        if max_reporters is not None:
            rows = db.execute("SELECT COUNT(*) FROM job_ranks WHERE job = ?", (report.job,))
            if int(rows.fetchone()[0]) >= max_reporters:
                raise JobLimitError(
                    f"expected at most {max_reporters} reporting processes per job (this "
                    f"service's job_max_ranks), got another for job {report.job!r} rank "
                    f"{report.rank}; processes silent for {stale_s} s make room"
                )

    def _make_room(
        self, db: sqlite3.Connection, report: JobReport, max_jobs: int, max_age_s: float | None
    ) -> None:
        if max_age_s is not None:
            expired = [
                row[0]
                for row in db.execute(
                    "SELECT job FROM job_ranks GROUP BY job "
                    "HAVING MAX(json_extract(state, '$.last_at')) < ?",
                    (report.received_at - max_age_s,),
                )
            ]
            for job in expired:
                db.execute("DELETE FROM job_ranks WHERE job = ?", (job,))
                db.execute("DELETE FROM job_reports WHERE job = ?", (job,))
                self._inserts.pop(job, None)
        jobs = int(db.execute("SELECT COUNT(DISTINCT job) FROM job_ranks").fetchone()[0])
        if jobs >= max_jobs:
            raise JobLimitError(
                f"expected at most job_max_jobs={max_jobs} jobs, got a report for a new job "
                f"{report.job!r}; jobs silent for {max_age_s} s are dropped to make room"
            )

    def job_names(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT job FROM job_ranks ORDER BY job").fetchall()
        return [row[0] for row in rows]

    def job_ranks(self, job: str) -> list[RankState]:
        """The latest state of every process of ``job`` (empty for an unknown job), by rank."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state FROM job_ranks WHERE job = ? ORDER BY rank, reporter", (job,)
            ).fetchall()
        return [RankState.from_json(row[0]) for row in rows]

    def job_seen(self, job: str) -> list[tuple[RankState, bytes]]:
        """The processes of ``job`` that sent an id bitmap: their state and the bitmap as sent
        (``loader.tracker.pack_seen``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, seen FROM job_ranks WHERE job = ? AND seen IS NOT NULL "
                "ORDER BY rank, reporter",
                (job,),
            ).fetchall()
        return [(RankState.from_json(row[0]), bytes(row[1])) for row in rows]

    def job_deltas(self, job: str, since: float) -> list[tuple[float, float, int, int, float]]:
        """``(received_at, dt, samples, bytes, blocked_s)`` of each report after ``since``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT received_at, dt, d_samples, d_bytes, d_blocked_s FROM job_reports "
                "WHERE job = ? AND received_at > ? ORDER BY id",
                (job, since),
            ).fetchall()
        return [(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in rows]
