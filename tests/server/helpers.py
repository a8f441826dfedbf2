"""Service test helpers: a tiny real dataset, app settings, and a real ``shardfeed serve``.

``LiveServer`` runs ``python -m server.cli serve`` as a subprocess on 127.0.0.1 and a free
port, so tests can stop it gracefully or kill it hard and start it again on the same ``--db``.
Test modules import these by name; ``conftest.py`` holds only the fixtures built on them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's "use httpx2" deprecation notice on import
    from fastapi.testclient import TestClient

from server.models import BenchmarkRequest
from server.settings import Settings
from server.store import RunRecord, Store

__all__ = ["TestClient"]

TINY_IMAGES = 40


@dataclass(frozen=True)
class TinyData:
    root: Path
    src: Path
    shards: Path
    images: int


def make_settings(tmp_path: Path, roots: list[Path], **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db": tmp_path / "service.db",
        "data_roots": roots,
        "allowed_hosts": ["testserver"],  # TestClient's Host header
    }
    values.update(overrides)
    return Settings(**values)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFEED_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LiveServer:
    """``shardfeed serve`` in a subprocess; ``start`` waits until ``/healthz`` answers."""

    def __init__(
        self,
        db: Path,
        roots: list[Path],
        log: Path,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.db = db
        self.env = dict(env or {})
        self.roots = roots
        self.log = log
        self.token = token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LiveServer:
        args = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--db", str(self.db)]
        for root in self.roots:
            args += ["--data-root", str(root)]
        if self.token is not None:
            args += ["--token", self.token]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=clean_env() | self.env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not answer within {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait: the graceful path (lifespan shutdown runs; uvicorn then re-raises
        the signal, so the exit code is -15)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: the service dies without any shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def wait_for_status(
    url: str, run_id: str, wanted: set[str], timeout: float = 90.0
) -> dict[str, Any]:
    """Poll ``GET /api/benchmarks/{id}`` until its status is in ``wanted``."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = httpx.get(f"{url}/api/benchmarks/{run_id}", timeout=5.0).json()
        if doc["status"] in wanted:
            return doc
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {doc.get('status')!r} after {timeout} s: {doc}")


@dataclass(frozen=True)
class ServedRun:
    server: LiveServer
    run_id: str
    run: dict[str, Any]


def config(tiny: TinyData, **overrides: Any) -> dict[str, Any]:
    """A validated bench config over ``tiny`` (the service's own request model makes it)."""
    values: dict[str, Any] = {"folder": str(tiny.src), "shards": str(tiny.shards)}
    values.update(overrides)
    return BenchmarkRequest(**values).to_config()


def slow_config(tiny: TinyData) -> dict[str, Any]:
    """A config that runs for many seconds (300 ms per open, 20 epochs): for cancel tests."""
    return config(
        tiny,
        modes=["tar-naive", "tar-aware"],
        workers=2,
        batch_size=2,
        epochs=20,
        image_size=32,
        latency_ms=300.0,
    )


def wait_until(store: Store, run_id: str, ok: Any, timeout: float = 60.0) -> RunRecord:
    """Poll ``store`` until run ``run_id``'s record satisfies ``ok``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        record = store.get_run(run_id)
        assert record is not None
        if ok(record):
            return record
        assert time.monotonic() < deadline, f"timed out waiting on {record}"
        time.sleep(0.05)
