"""``create_app(settings)``: the FastAPI app; its lifespan opens the store and runs the runner.

Each app owns its store connection, event bus, runner and Prometheus registry, so two apps in
one process (tests) share nothing. Request bodies larger than ``settings.max_body_bytes`` are
refused with 413 before any route sees them. A ``Host`` header outside
``settings.host_allowlist()`` gets 400 (DNS rebinding), JSON bodies need a JSON content type
(FastAPI's ``strict_content_type``), and ``/docs`` needs no CDN.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loader.jsonsafe import dumps
from server.deps import Service
from server.events import EventBus
from server.metrics import ServiceMetrics
from server.routes import benchmarks, docs, jobs, system
from server.runner import Runner
from server.settings import Settings
from server.store import Store

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class _BodyLimit:
    """ASGI middleware: buffer request bodies up to ``limit`` bytes, answer 413 beyond it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:
            service.metrics.rejected.labels("body_size").inc()
        payload = dumps(
            {"detail": f"request body larger than {self.limit} bytes (max_body_bytes)"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class _SafeJSONResponse(JSONResponse):
    """Every JSON body of the API goes through the one JSON policy (``loader.jsonsafe``): a
    figure that is NaN or infinite reads as ``null`` rather than failing the response."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


async def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 body, made JSON-safe (an echoed ``1e999`` input would crash it)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return _SafeJSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


def _warm_engine() -> None:
    """Import the bench engine (torch and all) ahead of the first POST, which validates with it."""
    try:
        import loader.bench  # noqa: F401
    except Exception:
        log.warning("the bench engine cannot be imported; benchmarks will fail", exc_info=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service as an ASGI app; nothing is opened until the lifespan starts. ``shardfeed
    serve`` holds the database's lock around it (one service per ``settings.db``:
    ``server._dblock``)."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store(settings.db)
        if store.interrupted_at_open:
            log.warning(
                "marked %d run(s) interrupted: they were running when the service stopped",
                store.interrupted_at_open,
            )
        bus = EventBus()
        bus.bind(asyncio.get_running_loop())
        runner = Runner(
            store, bus, roots=settings.data_roots, cancel_grace_s=settings.cancel_grace_s
        )
        metrics = ServiceMetrics(store, stale_s=settings.job_stale_s)
        app.state.service = Service(settings, store, bus, runner, metrics)
        runner.start()
        threading.Thread(target=_warm_engine, name="bench-import", daemon=True).start()
        try:
            yield
        finally:
            bus.close()
            await run_in_threadpool(runner.stop)
            app.state.service = None
            store.close()

    app = FastAPI(
        title="shardfeed",
        summary="Exactly-once tar-shard loading: benchmarks, training-job stats, dashboard.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        strict_content_type=True,
        default_response_class=_SafeJSONResponse,
    )
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    allowed = settings.host_allowlist()
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["*"] if "*" in allowed else allowed)
    app.include_router(benchmarks.router)
    app.include_router(jobs.router)
    app.include_router(system.router)
    app.include_router(docs.router)
    app.mount("/static", StaticFiles(directory=system.STATIC_DIR), name="static")
    app.mount(docs.ASSETS_URL, StaticFiles(directory=docs.ASSETS_DIR), name="docs-assets")
    return app
