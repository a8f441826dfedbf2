"""Parallel shard writers: one process per shard job, progress gathered in the caller.

Invariants: each shard is written by one process; writers share nothing but the output
folder. The first failure stops the build: jobs not started are cancelled (a full disk fails
them all anyway) and its error is raised once the shards already going have ended.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from shards.writer import ShardJob, WriteOptions, write_shard

__all__ = ["run_jobs"]


def run_jobs(
    root: Path,
    dest: Path,
    jobs: list[ShardJob],
    options: WriteOptions,
    workers: int,
    progress: Callable[[int, int], None],
) -> None:
    """Write ``jobs``, in ``workers`` processes when more than one; ``progress(images,
    bytes)`` is called in the calling thread only."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            write_shard(root, dest, job, options, progress)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with (
        ctx.Manager() as manager,
        ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool,
    ):
        events = manager.Queue()
        stop = manager.Event()
        pending: set[Future[None]] = {
            pool.submit(_write_in_worker, root, dest, job, options, events, stop) for job in jobs
        }
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(events, progress)
            for fut in done:
                if fut.exception() is not None:
                    stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    fut.result()
        _drain(events, progress)


def _write_in_worker(
    root: Path, dest: Path, job: ShardJob, options: WriteOptions, events: Any, stop: Any
) -> None:
    """One job in a pool worker; a job handed over after ``stop`` was set writes nothing
    (the pool queues a few jobs ahead, past the reach of ``cancel_futures``)."""
    if stop.is_set():
        return
    pending = [0, 0, time.monotonic()]

    def report(items: int, nbytes: int) -> None:
        pending[0] += items
        pending[1] += nbytes
        if time.monotonic() - pending[2] > 0.2:
            events.put((pending[0], pending[1]))
            pending[:] = [0, 0, time.monotonic()]

    write_shard(root, dest, job, options, report)
    events.put((pending[0], pending[1]))


def _drain(events: Any, progress: Callable[[int, int], None]) -> None:
    while True:
        try:
            items, nbytes = events.get_nowait()
        except queue.Empty:
            return
        progress(items, nbytes)
