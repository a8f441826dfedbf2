"""Benchmark runs in the store: their record, the one list of statuses, and their life cycle.

A run is ``queued`` when created, ``running`` once the runner claims it, and ends ``done``,
``failed``, ``cancelled`` or ``interrupted`` (the service stopped while it ran); a finished run
never changes again. ``STATUSES`` and ``FINISHED`` are the one list of these: the request
models, the runner, the demo and the dashboard (through ``/api/info``) take them from here.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from loader.jsonsafe import dumps
from loader.remote.redact import redact
from server._schema import StoreError
from server._sqlite import Database

__all__ = ["FINISHED", "STATUSES", "RunRecord", "RunStatus", "RunStore"]

RunStatus = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]
STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
FINISHED: frozenset[RunStatus] = frozenset({"done", "failed", "cancelled", "interrupted"})


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


class RunStore(Database):
    """The ``runs`` table: create, claim, advance, finish, cancel and list benchmark runs."""

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
                (run_id, dumps(dict(config)), self._clock()),
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
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
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
                    None if last_event is None else dumps(dict(last_event)),
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
                    None if result is None else dumps(dict(result)),
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
