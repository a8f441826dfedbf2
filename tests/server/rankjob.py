"""Reporting ranks for the service tests: each reads its part of the tiny shards through a real
DataLoader (one worker process), takes a short simulated step per batch and reports with
``StatsReporter``; one rank's loader is slow on purpose (storage latency on every shard open).

``run_ranks`` starts the ranks as separate processes with ``RANK``/``WORLD_SIZE`` set, as
torchrun would, and waits for them. ``python -m tests.server.rankjob URL TOKEN JOB SHARDS
LATENCY_MS`` is one rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["run_ranks"]

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
STEP_S = 0.02


def rank_main(url: str, token: str, job: str, shards: str, latency_ms: float) -> None:
    from loader.dataloader import make_loader, stop_workers
    from loader.reporter import StatsReporter, queue_depth

    loader = make_loader(
        shards, batch_size=2, num_workers=1, image_size=16, latency_ms=latency_ms, seed=0
    )
    with StatsReporter(url, job, token=token, interval_s=0.2) as reporter:
        try:
            for epoch in range(EPOCHS):
                batches = iter(loader)
                while True:
                    asked = time.perf_counter()
                    batch = next(batches, None)
                    waited = time.perf_counter() - asked
                    if batch is None:
                        break
                    time.sleep(STEP_S)  # the training step
                    reporter.record(
                        samples=len(batch.ids),
                        bytes=int(batch.nbytes.sum()),
                        blocked_s=waited,
                        epoch=epoch,
                        queue_depth=queue_depth(batches),
                    )
        finally:
            stop_workers(loader)
    if reporter.failed_sends:
        raise SystemExit(f"rank could not report: {reporter.last_error}")


def run_ranks(
    url: str, token: str, job: str, shards: Path, *, world: int, slow_rank: int, latency_ms: float
) -> None:
    """Run ``world`` reporting ranks to the end; rank ``slow_rank`` gets ``latency_ms``."""
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), PYTHONPATH=str(ROOT))
        delay = str(latency_ms if rank == slow_rank else 0.0)
        args = [sys.executable, "-m", "tests.server.rankjob", url, token, job, str(shards), delay]
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True))
    errors = []
    for rank, proc in enumerate(procs):
        _, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            errors.append(f"rank {rank} exited {proc.returncode}: {err[-2000:]}")
    assert not errors, errors


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
