"""One ``shardfeed serve`` per database (docs/architecture.md, section "Service"): a second one
refuses to start and leaves the first one's running run alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import LiveServer, TinyData, clean_env, free_port, wait_for_status


@pytest.mark.timeout(180)
def test_a_second_server_on_the_same_database_refuses_to_start(
    tmp_path: Path, tiny_data: TinyData
) -> None:
    db = tmp_path / "service.db"
    first = LiveServer(db, [tiny_data.root], tmp_path / "first.log").start()
    try:
        body = {
            "shards": str(tiny_data.shards),
            "modes": ["tar-naive", "tar-aware"],
            "batch_size": 2,
            "epochs": 20,
            "image_size": 16,
            "latency_ms": 300.0,
        }
        answer = httpx.post(f"{first.url}/api/benchmarks", json=body, timeout=10.0)
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["id"]
        wait_for_status(first.url, run_id, {"running"})
        args = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(free_port()), "--db", str(db)]
        second = subprocess.run(
            args, capture_output=True, text=True, timeout=60, env=clean_env(), check=False
        )
        assert second.returncode != 0, second.stderr
        assert "already" in second.stderr and str(db) in second.stderr
        assert "Traceback" not in second.stderr
        run = httpx.get(f"{first.url}/api/benchmarks/{run_id}", timeout=10.0).json()
        assert run["status"] == "running", run
    finally:
        first.stop()
