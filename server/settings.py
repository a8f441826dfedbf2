"""Service settings: one pydantic-settings class, every field also read from ``SHARDFEED_<NAME>``.

``SHARDFEED_DATA_ROOTS`` takes either a JSON list or paths separated by ``os.pathsep`` (``:`` on
POSIX, like ``PATH``); ``SHARDFEED_ALLOWED_HOSTS`` takes names separated by commas;
``SHARDFEED_TOKEN`` is the bearer token that every POST and DELETE needs when it is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings"]

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class Settings(BaseSettings):
    """Everything the service can be told; defaults bind to 127.0.0.1 and read no data at all.

    The ``max_*`` fields are the limits a request is checked against (422 naming the field);
    they cannot exceed the bench engine's own bounds, which the request models enforce too.
    """

    model_config = SettingsConfigDict(env_prefix="SHARDFEED_", extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", min_length=1, description="interface to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0 picks a free one)")
    db: Path = Field(
        default=Path("shardfeed.db"), description="SQLite file that keeps runs and stats"
    )
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders benchmarks may read; everything else is refused with 403",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names accepted besides the bound host and localhost (against "
        "DNS rebinding); '*' accepts any",
    )
    token: SecretStr | None = Field(default=None, description="bearer token for POST and DELETE")
    max_workers: int = Field(default=16, ge=0, le=64, description="most DataLoader workers per run")
    max_epochs: int = Field(default=20, ge=1, le=1000, description="most epochs per run")
    max_repeat: int = Field(default=10, ge=1, le=100, description="most rounds per run")
    max_buffer_bytes: int = Field(
        default=16 << 30,
        ge=1 << 20,
        le=1 << 40,
        description="most bytes of batch buffers per run: batch_size x image_size^2 x 3 x "
        "buffers per worker x workers",
    )
    max_run_s: int = Field(
        default=3600, ge=1, le=7 * 86400, description="longest deadline (timeout_s) a run may ask"
    )
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, le=64 << 20, description="largest request body accepted"
    )
    max_queued: int = Field(default=32, ge=1, le=10_000, description="most runs waiting at once")
    cancel_grace_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="how long a cancelled run may take to stop before a kill",
    )
    job_stale_s: float = Field(
        default=30.0, gt=0, description="a rank silent this long counts as stopped (rate 0)"
    )
    job_max_reports: int = Field(
        default=20_000, ge=10, description="reports kept per job; older ones are pruned"
    )
    job_max_ranks: int = Field(
        default=4096, ge=1, le=1_000_000, description="ranks per job: rank must be below this"
    )
    job_max_samples: int = Field(
        default=200_000_000,
        ge=1,
        le=2**40,
        description="largest dataset whose id bitmaps a job's reports may carry (bytes/8 each)",
    )
    job_max_jobs: int = Field(default=256, ge=1, le=100_000, description="jobs kept at once")
    job_retention_s: float = Field(
        default=7 * 86400,
        gt=0,
        description="reports older than this are pruned; jobs silent this long are dropped",
    )
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, le=300, description="SSE keep-alive interval"
    )

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("data_roots")
    @classmethod
    def _resolve_roots(cls, value: list[Path]) -> list[Path]:
        resolved = []
        for root in value:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"expected an existing folder as data root, got {str(root)!r}")
            resolved.append(path)
        return resolved

    def host_allowlist(self) -> list[str]:
        """``Host`` header names the service answers: the bound host (unless it is a wildcard
        address), ``localhost``, the loopback addresses and ``allowed_hosts``. A page on another
        name that resolves to this machine (DNS rebinding) gets 400."""
        names = ["localhost", "127.0.0.1", "[::1]", *self.allowed_hosts]
        if self.host not in _WILDCARDS:
            names.append(self.host if ":" not in self.host else f"[{self.host}]")
        return sorted(set(names))

    def token_value(self) -> str | None:
        """The configured token in clear, or None when the service is open."""
        return self.token.get_secret_value() if self.token is not None else None
