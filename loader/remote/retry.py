"""Retries of remote requests: which failures are transient, and the backoff within a budget.

A request is retried when it fails in a way the next attempt may not: a connection reset or
refused, a timeout, a body cut short, or HTTP 408, 425, 429 or 5xx. Anything else (404, 403,
416, a server that ignores Range, a size or checksum that does not match the manifest) is
permanent and fails at once. Attempt ``n`` (from 1) waits a random time in
``[0, min(max_backoff_s, backoff_s * 2**(n-1))]`` first ("full jitter"), and no attempt starts
once ``budget_s`` has passed since the first (docs/architecture.md, section "Remote reads").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from loader._checks import check_int, check_non_negative
from loader.remote.errors import RemoteReadError

__all__ = ["TRANSIENT_STATUS", "RetryPolicy", "ShortReadError", "is_transient", "status_of"]

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
_PERMANENT_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an error carries (aiohttp's ``status``, botocore's response), if any."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether the next attempt of a request that raised ``exc`` may succeed."""
    import aiohttp

    if isinstance(exc, RemoteReadError):
        return False
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status in TRANSIENT_STATUS
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return True
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError | ShortReadError):
        return True
    status = status_of(exc)
    if status is not None:
        return status in TRANSIENT_STATUS
    if isinstance(exc, _PERMANENT_OS):
        return False
    return isinstance(exc, OSError) or type(exc).__name__ in ("FSTimeoutError",)


class ShortReadError(OSError):
    """A response body shorter than the bytes it promised (raised by ``loader.remote.files``)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a remote request is retried (see the module docstring).

    ``attempts``: the most attempts per request, the first included (1: no retry).
    ``budget_s``: no new attempt starts this long after the first began.
    ``timeout_s``: each attempt's own limit (connect and every read of the body), so a stalled
    server counts as a transient failure instead of a hang.
    """

    attempts: int = 8
    budget_s: float = 120.0
    backoff_s: float = 0.1
    max_backoff_s: float = 10.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        check_int("attempts", self.attempts, 1)
        for name in ("budget_s", "backoff_s", "max_backoff_s", "timeout_s"):
            check_non_negative(name, getattr(self, name))
        if self.timeout_s == 0:
            raise ValueError("expected timeout_s > 0, got timeout_s=0")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before attempt ``attempt + 1`` after ``attempt`` failures."""
        return rng.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1)))

    def call(
        self,
        request: Callable[[], T],
        *,
        url: str,
        byte_range: tuple[int, int] | None,
        rng: random.Random,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """``request()``, retried on transient failures; raises ``RemoteReadError`` naming
        ``url``, ``byte_range`` and the last cause when it fails for good. A
        ``FileNotFoundError`` passes through unchanged (callers turn it into their own)."""
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return request()
            except FileNotFoundError:
                raise
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}".strip()
                where = _describe(url, byte_range)
                if not is_transient(exc):
                    if isinstance(exc, RemoteReadError):
                        raise
                    raise RemoteReadError(
                        f"{where} failed (not retried: a permanent error): {cause}",
                        url=url, byte_range=byte_range, attempts=attempt, cause=cause,
                    ) from exc  # fmt: skip
                wait = self.delay(attempt, rng)
                spent = time.monotonic() - start
                if attempt >= self.attempts or spent + wait > self.budget_s:
                    raise RemoteReadError(
                        f"{where} failed after {attempt} attempts in {spent:.1f} s (retry budget: "
                        f"attempts={self.attempts}, budget_s={self.budget_s:g}); last cause: "
                        f"{cause}. Check the server, or raise the budget (RetryPolicy)",
                        url=url, byte_range=byte_range, attempts=attempt, cause=cause,
                    ) from exc  # fmt: skip
                if on_retry is not None:
                    on_retry(exc)
                time.sleep(wait)


def _describe(url: str, byte_range: tuple[int, int] | None) -> str:
    if byte_range is None:
        return f"reading {url} (size or whole file)"
    return f"reading {url} bytes {byte_range[0]}-{byte_range[1]}"
