"""Health, Prometheus metrics, server-sent events, service info and the dashboard page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from loader.bench.modes import DECODES, DEFAULT_MODES, MODE_NAMES
from loader.jsonsafe import dumps
from server.deps import Service, get_service
from server.metrics import CONTENT_TYPE
from server.runs import FINISHED, STATUSES

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()

_DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _version() -> str:
    try:
        return version("shardfeed")
    except PackageNotFoundError:
        return "unknown"


@router.get("/", include_in_schema=False)
def dashboard() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": _DASHBOARD_CSP, "Cache-Control": "no-cache"},
    )


@router.get("/healthz", tags=["system"])
def healthz(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    """Liveness: the store answers and the runner says what it is doing."""
    counts = service.store.count_runs()
    return {
        "status": "ok",
        "version": _version(),
        "schema_version": service.store.schema_version(),
        "current_run": service.runner.current_run,
        "queued": counts["queued"],
    }


@router.get("/api/info", tags=["system"])
def info(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    """What a client needs to build a request: roots, limits, modes, decodes, run statuses
    (``finished_statuses``: those a run never leaves), whether a token is set."""
    settings = service.settings
    return {
        "version": _version(),
        "data_roots": [str(root) for root in settings.data_roots],
        "token_required": settings.token_value() is not None,
        "modes": list(MODE_NAMES),
        "default_modes": list(DEFAULT_MODES),
        "decodes": list(DECODES),
        "statuses": list(STATUSES),
        "finished_statuses": [s for s in STATUSES if s in FINISHED],
        "limits": {
            "max_workers": settings.max_workers,
            "max_epochs": settings.max_epochs,
            "max_repeat": settings.max_repeat,
            "max_body_bytes": settings.max_body_bytes,
            "max_queued": settings.max_queued,
        },
    }


@router.get(
    "/metrics",
    tags=["system"],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}},
)
def metrics(service: Annotated[Service, Depends(get_service)]) -> Response:
    """Prometheus text exposition; every metric is named ``shardfeed_...``."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


@router.get(
    "/api/events",
    tags=["system"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    service: Annotated[Service, Depends(get_service)],
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> StreamingResponse:
    """Server-sent events: ``benchmark`` (status changes), ``benchmark_event`` (progress) and
    ``job`` (a stats report). ``limit`` closes the stream after that many events. The first
    lines (``: connected``) arrive once the subscription exists: every event published after
    a client has read them reaches it."""

    async def stream() -> AsyncIterator[str]:
        subscription = service.bus.subscribe(service.settings.sse_heartbeat_s)
        try:
            yield "retry: 3000\n: connected\n\n"
            sent = 0
            async for event in subscription:
                if await request.is_disconnected():
                    return
                if event is None:
                    yield ": ping\n\n"
                    continue
                kind = event.get("type", "message")
                yield f"id: {event['id']}\nevent: {kind}\ndata: {dumps(event)}\n\n"
                sent += 1
                if limit is not None and sent >= limit:
                    return
        finally:
            subscription.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
