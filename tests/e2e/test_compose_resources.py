"""``docker-compose.yml`` gives the services that run DataLoader workers enough shared memory
for their default batches (Docker's own default, 64 MB, is not), and lets the training job
reach the service by its compose name past the Host allowlist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from loader.worker.pools import CAPACITY

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20}
UNITS |= {"g": 1 << 30, "gb": 1 << 30}


def _bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", str(text).strip().lower())
    assert match is not None, text
    return int(match.group(1)) * UNITS[match.group(2)]


def _batch_buffers(batch: int, side: int, workers: int) -> int:
    """What ``server.routes.benchmarks`` bounds: one pool of ``CAPACITY`` batch buffers per
    worker."""
    return batch * side * side * 3 * CAPACITY * workers


def test_services_with_workers_have_shared_memory_for_their_default_batches() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    train = services["train"]
    command = train["command"]
    batch = int(command[command.index("--batch-size") + 1])
    workers = int(command[command.index("--workers") + 1])
    side = int(command[command.index("--image-size") + 1]) if "--image-size" in command else 64
    assert _bytes(train["shm_size"]) >= 2 * _batch_buffers(batch, side, workers)
    # the service's benchmarks default to 2 workers, batch 64, 224 px
    assert _bytes(services["server"]["shm_size"]) >= 2 * _batch_buffers(64, 224, 2)


def test_the_training_job_may_call_the_service_by_its_compose_name() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "http://server:8000" in services["train"]["command"]
    allowed = services["server"]["environment"]["SHARDFEED_ALLOWED_HOSTS"]
    assert "server" in allowed.split(",")


def test_the_dockerfile_and_readme_say_how_much_shared_memory() -> None:
    assert "--shm-size" in (ROOT / "Dockerfile").read_text()
    assert "shm_size" in (ROOT / "README.md").read_text()
