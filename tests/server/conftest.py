"""Fixtures of the service tests; the helpers they use are in ``tests.server.helpers``.

``tiny_data`` is built once per session with the real sample generator and shard builder
(40 tiny JPEGs, 4 classes, 2 shards).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from shards.build import BuildOptions, build_shards
from shards.plan import SizingOptions
from shards.sample import make_sample
from tests.server.helpers import (
    TINY_IMAGES,
    LiveServer,
    ServedRun,
    TestClient,
    TinyData,
    make_settings,
    wait_for_status,
)
from tests.server.rankjob import run_ranks


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    root = tmp_path_factory.mktemp("data-root")
    src, shards = root / "src", root / "shards"
    make_sample(src, images=TINY_IMAGES, classes=4, seed=0, size="tiny")
    build_shards(
        src,
        shards,
        BuildOptions(sizing=SizingOptions(num_shards=2), show_progress=False, verify="none"),
    )
    return TinyData(root.resolve(), src.resolve(), shards.resolve(), TINY_IMAGES)


@pytest.fixture
def client(tmp_path: Path, tiny_data: TinyData) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, [tiny_data.root]))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def served_run(
    tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedRun]:
    """A live server (token ``secret``) holding one finished run of tar-naive and tar-aware."""
    home = tmp_path_factory.mktemp("served")
    server = LiveServer(
        home / "service.db",
        [tiny_data.root],
        home / "serve.log",
        token="secret",
        env={"SHARDFEED_JOB_STALE_S": str(NEVER_STALE_S)},
    )
    server.start()
    try:
        body = {
            "folder": str(tiny_data.src),
            "shards": str(tiny_data.shards),
            "modes": ["map", "tar-naive", "tar-aware"],
            "workers": 2,
            "batch_size": 8,
            "epochs": 1,
            "image_size": 32,
        }
        answer = httpx.post(
            f"{server.url}/api/benchmarks", json=body, headers=server.headers(), timeout=10.0
        )
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["id"]
        # A deadline, not a race: a shared 2-core machine may take minutes.
        run = wait_for_status(
            server.url, run_id, {"done", "failed", "cancelled", "interrupted"}, timeout=300
        )
        assert run["status"] == "done", (run, server.output())
        yield ServedRun(server, run_id, run)
    finally:
        server.stop()


SLOW_RANK = 2
NEVER_STALE_S = 10 * 86400
"""The served run's ranks never go stale while a test reads them, however slow the machine."""


@pytest.fixture(scope="session")
def slow_rank_job(served_run: ServedRun, tiny_data: TinyData) -> tuple[str, int]:
    """Job ``four-ranks`` on the served run's server: four reporting ranks, rank 2 waiting
    ``SLOW_WAIT_S`` per step on its step clock (``tests.server.rankjob``). Returns (job, slow
    rank)."""
    server = served_run.server
    run_ranks(
        server.url,
        server.token or "",
        "four-ranks",
        tiny_data.shards,
        world=4,
        slow_rank=SLOW_RANK,
    )
    return "four-ranks", SLOW_RANK
