"""The raw limit of this machine: W processes reading and decoding the shards, no loader around.

Process ``p`` of ``W`` takes the ``p``-th contiguous part of the concatenated sample sequence,
reads it with ``ShardReader`` (memory-map slices locally, ranged requests over HTTP, with the
same simulated per-open latency) and decodes every sample with the loader's decoder into one
preallocated ``[B, S, S, 3]`` array, slot after slot. No DataLoader, no queues, no batches
handed anywhere: what is left is the cost of reading and decoding. A process whose part takes
less than ``MIN_RUN_S`` reads it again until that much time has passed, so a run with decoding
off is long enough to time.

The processes are forked once and kept, like persistent DataLoader workers, and so are their
open shard readers (``loader.worker.reuse``): a run after the first reads warm memory maps, as the
loader does from its second epoch on. Each run starts all processes together at a barrier and
ends when the last one is done, so it excludes process start-up, as the modes' steady-state
rates do.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from loader.bench.measure import BenchCancelled
from loader.decode import Decoder, ImageDecoder, NoDecode
from loader.sources import DatasetSource
from loader.worker.reuse import Reuse

__all__ = ["LimitRun", "LimitRunner", "split_ranges"]

_POLL_S = 0.1
MIN_RUN_S = 0.25  # a run repeats its part until it has taken this long (fast --decode none)
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LimitRun:
    """One measurement of the limit."""

    samples: int
    nbytes: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def split_ranges(sizes: list[int], parts: int) -> list[list[tuple[int, int, int]]]:
    """Cut the concatenation of shards of ``sizes`` samples into ``parts`` contiguous pieces
    whose lengths differ by at most one; each piece is a list of ``(shard, start, stop)``."""
    if parts < 1:
        raise ValueError(f"expected parts >= 1, got parts={parts}")
    total = sum(sizes)
    bounds = [total * p // parts for p in range(parts + 1)]
    firsts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    pieces: list[list[tuple[int, int, int]]] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        piece = []
        for shard, size in enumerate(sizes):
            start, stop = max(lo - firsts[shard], 0), min(hi - firsts[shard], size)
            if start < stop:
                piece.append((shard, start, stop))
        pieces.append(piece)
    return pieces


def _read_and_decode(
    source: DatasetSource,
    piece: list[tuple[int, int, int]],
    decoder: Decoder,
    out: np.ndarray,
    rng: np.random.Generator,
    readers: Reuse,
) -> tuple[int, int]:
    n = nbytes = 0
    slots = len(out)
    for shard, start, stop in piece:
        for sample in readers.reader(source.shards[shard]).read(start, stop):
            nbytes += decoder(sample.data, out[n % slots], rng)
            n += 1
    return n, nbytes


def _child(
    args: dict[str, Any], piece: list[tuple[int, int, int]], conn: Any, barrier: Any
) -> None:
    """Serve runs until told to stop: wait for ``"run"``, meet at the barrier, read the part
    (again, until ``MIN_RUN_S`` has passed), report ``("ok", samples, bytes, end time)`` or
    ``("error", message, 0, 0.0)``."""
    cv2.setNumThreads(1)
    side = args["image_size"] if args["decode"] else 0
    decoder: Decoder = ImageDecoder(side, train=True) if side else NoDecode()
    out = np.zeros((args["batch_size"], side, side, 3), dtype=np.uint8)
    rng = np.random.default_rng([args["seed"], args["process"]])
    readers = Reuse(args["latency_s"])
    while conn.recv() == "run":
        try:
            barrier.wait(_START_TIMEOUT_S)
            start, n, nbytes = time.perf_counter(), 0, 0
            while n == 0 or time.perf_counter() - start < MIN_RUN_S:
                got, got_bytes = _read_and_decode(args["source"], piece, decoder, out, rng, readers)
                n, nbytes = n + got, nbytes + got_bytes
                if got == 0:
                    break
            conn.send(("ok", n, nbytes, time.perf_counter()))
        except BaseException as exc:  # reported to the parent, which raises it
            conn.send(("error", f"{type(exc).__name__}: {exc}", 0, 0.0))


class LimitRunner:
    """Measures the limit on demand with ``processes`` persistent processes (forked on the
    first ``run()``; ``close()`` stops them). Not thread-safe: one ``run()`` at a time.
    """

    def __init__(
        self,
        source: DatasetSource,
        processes: int,
        *,
        decode: bool,
        image_size: int,
        batch_size: int,
        seed: int,
        latency_s: float,
    ) -> None:
        if processes < 1:
            raise ValueError(f"expected processes >= 1, got processes={processes}")
        self.source = source
        self.processes = processes
        sizes = [s.nsamples for s in source.shards]
        self._pieces = split_ranges(sizes, processes)
        self._args = {
            "source": source,
            "decode": decode and image_size > 0,
            "image_size": image_size,
            "batch_size": batch_size,
            "seed": seed,
            "latency_s": latency_s,
        }
        self._children: list[tuple[Any, Any]] = []
        self._barrier: Any = None

    def __enter__(self) -> LimitRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self._barrier = ctx.Barrier(self.processes + 1)
        for p, piece in enumerate(self._pieces):
            parent, child = ctx.Pipe()
            args = {**self._args, "process": p}
            process = ctx.Process(
                target=_child, args=(args, piece, child, self._barrier), daemon=True
            )
            process.start()
            child.close()
            self._children.append((process, parent))

    def run(self, cancel: threading.Event | None = None) -> LimitRun:
        """Measure once. Raises ``BenchCancelled`` when ``cancel`` is set meanwhile, and
        ``RuntimeError`` naming the first failure of a process; either way the processes are
        stopped (a later ``run()`` starts new ones)."""
        if not self._children:
            self._start()
        try:
            for _, conn in self._children:
                conn.send("run")
            self._barrier.wait(_START_TIMEOUT_S)
            start = time.perf_counter()
            samples = nbytes = 0
            end = start
            for process, conn in self._children:
                status, n, b, finished = self._result(process, conn, cancel)
                if status != "ok":
                    raise RuntimeError(f"limit process failed: {n}")
                samples, nbytes, end = samples + n, nbytes + b, max(end, finished)
        except BaseException:
            self.close()
            raise
        return LimitRun(samples, nbytes, end - start)

    @staticmethod
    def _result(
        process: Any, conn: Any, cancel: threading.Event | None
    ) -> tuple[str, Any, int, float]:
        while not conn.poll(_POLL_S):
            if cancel is not None and cancel.is_set():
                raise BenchCancelled("cancelled while measuring the limit")
            if not process.is_alive():
                raise RuntimeError("a limit process died without reporting")
        item: tuple[str, Any, int, float] = conn.recv()
        return item

    def close(self) -> None:
        """Stop the processes (idempotent)."""
        children, self._children = self._children, []
        for _, conn in children:
            try:
                conn.send("stop")
            except OSError:
                pass
        for process, conn in children:
            process.join(_POLL_S * 10)
            if process.is_alive():
                process.terminate()
                process.join()
            conn.close()
