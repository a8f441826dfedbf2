"""Bounded benchmark requests (docs/architecture.md, section "Service"): a memory bound on the
batch buffers and a run deadline, each refused with 422 naming the field, and a deadline the
runner enforces on a real child process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import create_app
from server.events import EventBus
from server.runner import Runner
from server.store import Store
from tests.server.helpers import TestClient, TinyData, make_settings, slow_config, wait_until


@pytest.fixture
def client(tmp_path: Path, tiny_data: TinyData) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, [tiny_data.root], max_buffer_bytes=1 << 30, max_run_s=600)
    with TestClient(create_app(settings)) as c:
        yield c


def _post(client: TestClient, tiny: TinyData, **body: Any) -> Any:
    doc = {"shards": str(tiny.shards), "modes": ["tar-aware"], **body}
    return client.post("/api/benchmarks", json=doc)


def _fields(answer: Any) -> list[str]:
    return [".".join(str(p) for p in d["loc"]) for d in answer.json()["detail"]]


def test_batch_buffers_beyond_the_memory_bound_are_422(
    client: TestClient, tiny_data: TinyData
) -> None:
    answer = _post(client, tiny_data, batch_size=4096, image_size=2048, workers=2)
    assert answer.status_code == 422, answer.text
    assert "body.batch_size" in _fields(answer)
    assert "max_buffer_bytes" in answer.text
    ok = _post(client, tiny_data, batch_size=8, image_size=32, workers=2)
    assert ok.status_code == 202, ok.text
    undecoded = _post(client, tiny_data, batch_size=4096, image_size=2048, decode=False)
    assert undecoded.status_code == 202, "without decoding there are no image buffers"


def test_a_deadline_beyond_the_services_is_422(client: TestClient, tiny_data: TinyData) -> None:
    answer = _post(client, tiny_data, timeout_s=601)
    assert answer.status_code == 422 and "body.timeout_s" in _fields(answer)
    assert "max_run_s" in answer.text
    assert _post(client, tiny_data, timeout_s=0).status_code == 422
    assert _post(client, tiny_data, timeout_s=600).status_code == 202


@pytest.mark.timeout(120)
def test_the_runner_stops_a_run_at_its_deadline(tmp_path: Path, tiny_data: TinyData) -> None:
    store = Store(tmp_path / "runs.db")
    runner = Runner(store, EventBus(), roots=[tiny_data.root], cancel_grace_s=2.0, poll_s=0.05)
    runner.start()
    try:
        run = store.create_run({**slow_config(tiny_data), "timeout_s": 3})
        record = wait_until(store, run.id, lambda r: r.status not in {"queued", "running"}, 90)
        assert record.status == "failed", record
        assert record.error is not None and "timeout_s=3" in record.error
    finally:
        runner.stop()
        store.close()


def test_concurrent_posts_never_exceed_max_queued(tmp_path: Path, tiny_data: TinyData) -> None:
    store = Store(tmp_path / "runs.db")
    try:
        accepted: list[bool] = []
        barrier = threading.Barrier(8)

        def post() -> None:
            barrier.wait()
            for _ in range(5):
                accepted.append(store.create_run_if_room({"shards": "x"}, max_queued=7) is not None)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sum(accepted) == 7 and store.count_runs()["queued"] == 7
    finally:
        store.close()
