"""Reporting ranks for the service tests: each reads its part of the tiny shards through a real
DataLoader (one worker process) and reports with ``StatsReporter``, ids included.

What the service compares is decided by the test, never by how busy the machine is: each
step's wait for data is a fixed figure (``SLOW_WAIT_S`` for the rank slowed on purpose,
``FAST_WAIT_S`` for the others), and the reporter's clock is a step clock that advances by
the step's work plus that wait. ``run_ranks`` starts the ranks as separate processes with
``RANK``/``WORLD_SIZE`` set, as torchrun would, and waits for them; ``claims`` lets two
processes claim the same rank. ``python -m tests.server.rankjob URL TOKEN JOB SHARDS SLOW`` is
one rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["EPOCHS", "FAST_WAIT_S", "SLOW_WAIT_S", "STEP_S", "StepClock", "run_ranks"]

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 4
STEP_S = 0.02
SLOW_WAIT_S = 0.5
FAST_WAIT_S = 0.001


class StepClock:
    """A clock the rank advances by hand: one step's wait, then its work."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rank_main(url: str, token: str, job: str, shards: str, slow: bool) -> None:
    from loader.dataloader import make_loader, stop_workers
    from loader.reporter import StatsReporter, queue_depth

    loader = make_loader(shards, batch_size=2, num_workers=1, image_size=16, seed=0)
    clock = StepClock()
    wait = SLOW_WAIT_S if slow else FAST_WAIT_S
    num_samples = loader.dataset.num_samples
    with StatsReporter(
        url, job, token=token, interval_s=0.2, num_samples=num_samples, clock=clock
    ) as reporter:
        try:
            for epoch in range(EPOCHS):
                batches = iter(loader)
                for batch in batches:
                    clock.now += wait + STEP_S
                    reporter.record(
                        samples=len(batch.ids),
                        bytes=int(batch.nbytes.sum()),
                        blocked_s=wait,
                        epoch=epoch,
                        queue_depth=queue_depth(batches),
                        ids=batch.ids,
                        padded=batch.padded,
                    )
        finally:
            stop_workers(loader)
    if reporter.failed_sends:
        raise SystemExit(f"rank could not report: {reporter.last_error}")


def run_ranks(
    url: str,
    token: str,
    job: str,
    shards: Path,
    *,
    world: int,
    slow_rank: int | None = None,
    claims: list[int] | None = None,
) -> None:
    """Run one reporting process per entry of ``claims`` (default: ranks 0..world-1) to the
    end; the process of rank ``slow_rank`` waits ``SLOW_WAIT_S`` per step."""
    procs = []
    for rank in claims if claims is not None else range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), PYTHONPATH=str(ROOT))
        slow = "1" if rank == slow_rank else "0"
        args = [sys.executable, "-m", "tests.server.rankjob", url, token, job, str(shards), slow]
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True))
    errors = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            errors.append(f"process {i} exited {proc.returncode}: {err[-2000:]}")
    assert not errors, errors


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1")
