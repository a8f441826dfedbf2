"""The SQLite schema of the store, its version, and the migrations between versions."""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_VERSION", "StoreError", "migrate"]

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    last_event TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX runs_status ON runs (status, seq);
CREATE TABLE job_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    rank INTEGER NOT NULL,
    received_at REAL NOT NULL,
    dt REAL NOT NULL,
    d_samples INTEGER NOT NULL,
    d_bytes INTEGER NOT NULL,
    d_blocked_s REAL NOT NULL
);
CREATE INDEX job_reports_job ON job_reports (job, id);
CREATE TABLE job_ranks (
    job TEXT NOT NULL,
    rank INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (job, rank)
);
"""

_MIGRATIONS: dict[int, str] = {
    # 2: a rank's state is kept per reporting process (two processes may claim one rank), with
    # the compressed bitmap of the ids that process delivered in its current epoch.
    2: """
CREATE TABLE job_ranks_v2 (
    job TEXT NOT NULL,
    rank INTEGER NOT NULL,
    reporter TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    seen BLOB,
    PRIMARY KEY (job, rank, reporter)
);
INSERT INTO job_ranks_v2 (job, rank, reporter, state) SELECT job, rank, '', state FROM job_ranks;
DROP TABLE job_ranks;
ALTER TABLE job_ranks_v2 RENAME TO job_ranks;
""",
}
"""``_MIGRATIONS[v]`` turns a version ``v - 1`` file into version ``v``."""


class StoreError(RuntimeError):
    """The database file cannot be used by this release."""


def _run_script(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the file behind ``db`` (inside an open transaction) to ``SCHEMA_VERSION``.

    A new file gets the first schema and then, like an older file, each migration in turn; a
    newer one raises StoreError, since this release cannot know what changed.
    """
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not exists:
        _run_script(db, _SCHEMA_V1)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
    row = db.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"expected a store of schema version <= {SCHEMA_VERSION}, got version={version} "
            f"in {path}; use the newer shardfeed or another --db"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        _run_script(db, _MIGRATIONS[step])
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
