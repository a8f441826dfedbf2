"""``shardfeed serve``: run the HTTP service (API, Prometheus metrics, dashboard) with uvicorn.

Every option also comes from the environment (``SHARDFEED_HOST``, ``SHARDFEED_PORT``,
``SHARDFEED_DB``, ``SHARDFEED_DATA_ROOTS``, ``SHARDFEED_TOKEN``); a flag wins over its
variable. Prefer ``SHARDFEED_TOKEN`` to ``--token``: other users can read command lines.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.settings import Settings

from pydantic import ValidationError

__all__ = ["register", "settings_from_args"]

log = logging.getLogger(__name__)

_GRACEFUL_SHUTDOWN_S = 3
_DESCRIPTION = """Run the HTTP service: benchmark runs, training-job stats, Prometheus metrics
at /metrics, the dashboard at / and API docs at /docs.

Every option also comes from the environment: SHARDFEED_HOST, SHARDFEED_PORT, SHARDFEED_DB,
SHARDFEED_DATA_ROOTS (paths separated by ':' or a JSON list), SHARDFEED_TOKEN; a flag wins
over its variable. Prefer SHARDFEED_TOKEN to --token: other users can read command lines."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``shardfeed`` subcommands."""
    parser = sub.add_parser(
        "serve",
        help="run the HTTP service: benchmarks, training-job stats, metrics, dashboard",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument("--db", help="SQLite file for runs and stats (default shardfeed.db)")
    parser.add_argument(
        "--data-root",
        dest="data_roots",
        action="append",
        metavar="DIR",
        help="folder benchmarks may read (repeat for several); nothing else is read",
    )
    parser.add_argument("--token", help="bearer token required for POST and DELETE")
    parser.add_argument(
        "--allowed-host",
        dest="allowed_hosts",
        action="append",
        metavar="NAME",
        help="Host header name accepted besides the bound host and localhost (repeat for several)",
    )
    parser.set_defaults(func=_serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The ``Settings`` for ``args`` over the environment; ValueError naming a bad option."""
    from server.settings import Settings

    given = {
        name: getattr(args, name)
        for name in ("host", "port", "db", "data_roots", "token", "allowed_hosts")
        if getattr(args, name, None) is not None
    }
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"expected valid serve options, got {problems}") from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_store(path: Any) -> None:
    """Fail with one line now, not as a uvicorn startup error, when ``--db`` is unusable."""
    import sqlite3

    from server.store import Store, StoreError

    try:
        Store(path).close()
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise ValueError(f"expected a usable SQLite file, got db={str(path)!r}: {exc}") from exc


def _serve(args: argparse.Namespace) -> int:
    from server._dblock import DatabaseInUse, hold_database

    settings = settings_from_args(args)
    try:
        with hold_database(settings.db):
            return _serve_holding(settings)
    except DatabaseInUse as exc:
        raise ValueError(str(exc)) from None


def _serve_holding(settings: Any) -> int:
    """Serve while this process holds the database's lock: opening the store (which marks
    ``running`` runs ``interrupted``) must never happen beside a live service."""
    import uvicorn

    from server.app import create_app

    _check_store(settings.db)
    if not _is_loopback(settings.host) and settings.token_value() is None:
        log.warning(
            "serving on %s without a token: anyone who can reach it can start benchmarks",
            settings.host,
        )
    if not settings.data_roots:
        log.warning("no --data-root given: every benchmark request will be refused")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    log.info("dashboard at http://%s:%d/  (API docs at /docs)", settings.host, settings.port)
    uvicorn.Server(config).run()
    return 0
