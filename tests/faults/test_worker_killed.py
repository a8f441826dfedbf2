"""A DataLoader worker killed with SIGKILL mid-epoch (docs/architecture.md, section "Loader"):
the training loop gets an error naming the worker within a bounded time, does not hang, and
leaves no shared memory behind."""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from loader.dataloader import make_loader
from tests.loader.helpers import write_test_shards

SHM = Path("/dev/shm")


def _jpeg(gid: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((24, 24, 3), gid % 256, np.uint8))
    assert ok
    return data.tobytes()


def _shm_entries() -> set[str]:
    return {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()


@pytest.mark.timeout(120)
def test_a_killed_worker_is_named_within_bounded_time_and_leaves_no_shared_memory(
    tmp_path: Path,
) -> None:
    manifest = write_test_shards(tmp_path, [200, 200], image_bytes=_jpeg)
    before = _shm_entries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = make_loader(
            manifest, batch_size=4, image_size=16, num_workers=2, prefetch_factor=1
        )
    iterator = iter(loader)
    next(iterator)
    workers = iterator._iterator._workers  # type: ignore[attr-defined]
    victim = workers[1].pid
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        for _ in iterator:
            pass
    waited = time.monotonic() - started
    assert str(victim) in str(info.value) and "worker" in str(info.value).lower()
    assert waited < 60, f"the error took {waited:.0f} s"
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()
    del iterator, loader
    left = _shm_entries() - before
    assert not left, f"shared memory left behind: {sorted(left)}"


@pytest.mark.timeout(120)
def test_workers_forked_right_after_the_main_process_used_opencv_start(tmp_path: Path) -> None:
    """OpenCV's thread pool, busy in the main process just before the workers fork, must not
    deadlock them (it did in ``WorkerInit``'s ``cv2.setNumThreads(1)``, about a third of the
    forks here)."""
    manifest = write_test_shards(tmp_path, [16, 16], image_bytes=_jpeg)
    busy = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = make_loader(
            manifest, batch_size=4, image_size=16, num_workers=2, prefetch_factor=1
        )
        for _ in range(8):
            for _ in range(3):
                cv2.GaussianBlur(busy, (0, 0), 0.6)
                cv2.resize(busy, (900, 900), interpolation=cv2.INTER_CUBIC)
            started = time.monotonic()
            assert sum(len(batch.ids) for batch in loader) == 32
            assert time.monotonic() - started < 30
