"""The per-app service objects and the request dependencies that reach them."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.events import EventBus
from server.metrics import ServiceMetrics
from server.runner import Runner
from server.settings import Settings
from server.store import Store

__all__ = ["Service", "get_service", "require_token"]

_bearer = HTTPBearer(auto_error=False, description="required for POST and DELETE when set")


@dataclass
class Service:
    """What the lifespan builds for one app; routes reach it through ``get_service``."""

    settings: Settings
    store: Store
    bus: EventBus
    runner: Runner
    metrics: ServiceMetrics
    clock: Callable[[], float] = field(default=time.time)


def get_service(request: Request) -> Service:
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return service


def require_token(
    service: Annotated[Service, Depends(get_service)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless no token is configured or the request carries ``Bearer <token>``."""
    expected = service.settings.token_value()
    if expected is None:
        return
    if credentials is None:
        service.metrics.rejected.labels("auth").inc()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this service needs 'Authorization: Bearer <token>' for POST and DELETE",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        service.metrics.rejected.labels("auth").inc()
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the bearer token is wrong",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
