"""SQLite store of benchmark runs and training-job reports; what it holds survives a restart.

The file carries a ``schema_version`` table. Opening a file written by a newer release raises
:class:`StoreError`; an older one is migrated step by step (there is one version so far).
Opening also marks every run still ``running`` as ``interrupted``: the process that ran it is
gone.

Concurrency: one connection, shared by the threads of one process and guarded by a lock, so
every method is atomic with respect to the others. Two processes on one file are safe (SQLite
locks, WAL journal) but only one of them should run benchmarks.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loader.remote.redact import redact
from server._schema import SCHEMA_VERSION, StoreError, migrate
from server.jobs import JobReport, RankState, advance_rank

__all__ = [
    "FINISHED",
    "SCHEMA_VERSION",
    "STATUSES",
    "JobLimitError",
    "RunRecord",
    "Store",
    "StoreError",
]

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = frozenset({"done", "failed", "cancelled", "interrupted"})

_INTERRUPTED = "the service stopped while this run was going"
_PRUNE_EVERY = 64
"""A job's old reports are pruned after every this many of its own reports (not the store's:
jobs reporting in lockstep would otherwise always leave the same job unpruned)."""


class JobLimitError(RuntimeError):
    """A report for a new job when ``max_jobs`` jobs are already kept (none old enough to
    drop); the message names the limit."""


@dataclass(frozen=True)
class RunRecord:
    """One benchmark run as stored."""

    id: str
    status: str
    config: dict[str, Any]
    progress: float
    result: dict[str, Any] | None
    error: str | None
    last_event: dict[str, Any] | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None

    def to_dict(self, *, with_result: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "progress": self.progress,
            "error": self.error,
            "config": {k: redact(v) if isinstance(v, str) else v for k, v in self.config.items()},
            "cancel_requested": self.cancel_requested,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "last_event": self.last_event,
        }
        if with_result:
            doc["result"] = self.result
        return doc


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _run_from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        status=row["status"],
        config=json.loads(row["config"]),
        progress=float(row["progress"]),
        result=_loads(row["result"]),
        error=row["error"],
        last_event=_loads(row["last_event"]),
        cancel_requested=bool(row["cancel_requested"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


class Store:
    """Runs and job reports in one SQLite file (``":memory:"`` for a throwaway store)."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 5000")
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        self._inserts: dict[str, int] = {}
        try:
            self._migrate()
            self.interrupted_at_open = self.mark_running_interrupted(_INTERRUPTED)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as db:
            migrate(db, self.path)

    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    # -- benchmark runs ---------------------------------------------------------------------

    def create_run(self, config: Mapping[str, Any]) -> RunRecord:
        """Queue a new run of ``config``; ids are random, 12 hex digits."""
        record = self.create_run_if_room(config, max_queued=None)
        assert record is not None
        return record

    def create_run_if_room(
        self, config: Mapping[str, Any], *, max_queued: int | None
    ) -> RunRecord | None:
        """Queue a new run unless ``max_queued`` runs are queued already (then ``None``).

        The count and the insert are one ``BEGIN IMMEDIATE`` transaction, so concurrent
        callers, in this process or another on the same file, never exceed ``max_queued``.
        """
        run_id = uuid.uuid4().hex[:12]
        with self._transaction() as db:
            if max_queued is not None:
                row = db.execute("SELECT COUNT(*) FROM runs WHERE status = 'queued'").fetchone()
                if int(row[0]) >= max_queued:
                    return None
            db.execute(
                "INSERT INTO runs (id, status, config, created_at) VALUES (?, 'queued', ?, ?)",
                (run_id, json.dumps(dict(config)), self._clock()),
            )
        record = self.get_run(run_id)
        if record is None:
            raise StoreError(f"run {run_id} vanished right after it was created")
        return record

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run_from_row(row)

    def list_runs(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRecord]:
        """Newest first."""
        query = "SELECT * FROM runs"
        params: list[Any] = []
        if status is not None:
            query += " WHERE status = ?"
            params.append(status)
        query += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        params += [limit, offset]
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [_run_from_row(row) for row in rows]

    def count_runs(self) -> dict[str, int]:
        """Number of runs in each status (every status present, zero or not)."""
        counts = dict.fromkeys(STATUSES, 0)
        with self._lock:
            for row in self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status"):
                counts[row[0]] = int(row[1])
        return counts

    def next_queued(self) -> RunRecord | None:
        """The oldest queued run, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM runs WHERE status = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
        return None if row is None else _run_from_row(row)

    def claim_run(self, run_id: str) -> bool:
        """Move a queued run to running; False when it is no longer queued (cancelled)."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET status = 'running', started_at = ?, progress = 0 "
                "WHERE id = ? AND status = 'queued'",
                (self._clock(), run_id),
            )
        return cursor.rowcount == 1

    def update_progress(
        self, run_id: str, progress: float, last_event: Mapping[str, Any] | None
    ) -> None:
        """Record how far a running run is; progress only moves forward."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET progress = MAX(progress, ?), last_event = ? "
                "WHERE id = ? AND status = 'running'",
                (
                    min(max(float(progress), 0.0), 1.0),
                    None if last_event is None else json.dumps(dict(last_event)),
                    run_id,
                ),
            )

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> RunRecord | None:
        """End a queued or running run with a final ``status``; a finished run is left as is."""
        if status not in FINISHED:
            raise ValueError(f"expected a final status in {sorted(FINISHED)}, got {status=}")
        error = None if error is None else redact(error)
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, finished_at = ?, "
                "progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (
                    status,
                    None if result is None else json.dumps(dict(result)),
                    error,
                    self._clock(),
                    status,
                    run_id,
                ),
            )
        return self.get_run(run_id)

    def request_cancel(self, run_id: str) -> RunRecord | None:
        """Cancel a queued run at once; flag a running one for the runner to stop.

        Returns the record after the change, or None for an unknown id. A finished run is
        returned unchanged.
        """
        now = self._clock()
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET status = 'cancelled', cancel_requested = 1, finished_at = ?, "
                "error = 'cancelled before it started' WHERE id = ? AND status = 'queued'",
                (now, run_id),
            )
            db.execute(
                "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = 'running'",
                (run_id,),
            )
        return self.get_run(run_id)

    def latest_done_run(self) -> RunRecord | None:
        runs = self.list_runs(status="done", limit=1)
        return runs[0] if runs else None

    def mark_running_interrupted(self, reason: str) -> int:
        """Mark every running run interrupted; returns how many there were."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? "
                "WHERE status = 'running'",
                (reason, self._clock()),
            )
        return cursor.rowcount

    # -- training-job reports ---------------------------------------------------------------

    def add_report(
        self,
        report: JobReport,
        *,
        keep: int,
        max_jobs: int | None = None,
        max_age_s: float | None = None,
    ) -> RankState:
        """Store one rank's cumulative report and return the rank's new state.

        The per-report deltas (work since the rank's previous report) are derived here, so a
        time series is a sum of deltas. Retention is per job: after every ``_PRUNE_EVERY`` of
        its reports, a job keeps its newest ``keep`` reports, none older than ``max_age_s``
        before this report. A new job when ``max_jobs`` are kept first drops the jobs silent
        for ``max_age_s``, then raises ``JobLimitError`` if there is still no room.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT state FROM job_ranks WHERE job = ? AND rank = ?",
                (report.job, report.rank),
            ).fetchone()
            if row is None and max_jobs is not None:
                self._make_room(db, report, max_jobs, max_age_s)
            previous = None if row is None else RankState.from_json(row[0])
            state, delta = advance_rank(previous, report)
            db.execute(
                "INSERT INTO job_ranks (job, rank, state) VALUES (?, ?, ?) "
                "ON CONFLICT (job, rank) DO UPDATE SET state = excluded.state",
                (report.job, report.rank, state.to_json()),
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

    def _make_room(
        self, db: sqlite3.Connection, report: JobReport, max_jobs: int, max_age_s: float | None
    ) -> None:
        """Called inside ``add_report``'s transaction for a rank the store has not seen."""
        if db.execute("SELECT 1 FROM job_ranks WHERE job = ? LIMIT 1", (report.job,)).fetchone():
            return
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
        """The latest state of every rank of ``job`` (empty for an unknown job), by rank."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state FROM job_ranks WHERE job = ? ORDER BY rank", (job,)
            ).fetchall()
        return [RankState.from_json(row[0]) for row in rows]

    def job_deltas(self, job: str, since: float) -> list[tuple[float, float, int, int, float]]:
        """``(received_at, dt, samples, bytes, blocked_s)`` of each report after ``since``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT received_at, dt, d_samples, d_bytes, d_blocked_s FROM job_reports "
                "WHERE job = ? AND received_at > ? ORDER BY id",
                (job, since),
            ).fetchall()
        return [(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in rows]
