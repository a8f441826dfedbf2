"""The raw limit of this machine: W processes reading and decoding the shards, no loader around.

Process ``p`` of ``W`` takes the ``p``-th contiguous part of the concatenated sample sequence,
reads it with ``ShardReader`` (memory-map slices locally, ranged requests over HTTP, with the
same simulated per-open latency) and decodes every sample with the loader's decoder into one
preallocated ``[B, S, S, 3]`` array, slot after slot. No DataLoader, no queues, no batches
handed anywhere: what is left is the cost of reading and decoding. The processes are forked
for each run and start together at a barrier, so the figure excludes process start-up, as the
modes' steady-state rates do.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from loader._bench_measure import BenchCancelled
from loader.decode import Decoder, ImageDecoder, NoDecode
from loader.reader import ShardReader
from loader.sources import DatasetSource

__all__ = ["LimitRun", "LimitRunner", "split_ranges"]

_POLL_S = 0.1
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
    batch_size: int,
    rng: np.random.Generator,
    latency_s: float,
) -> tuple[int, int]:
    side = decoder.image_size
    out = np.zeros((batch_size, side, side, 3) if side else (batch_size, 0), dtype=np.uint8)
    n = nbytes = 0
    for shard, start, stop in piece:
        with ShardReader(source.shards[shard], latency_s=latency_s) as reader:
            for sample in reader.read(start, stop):
                nbytes += decoder(sample.data, out[n % batch_size], rng)
                n += 1
    return n, nbytes


def _child(args: dict[str, Any], barrier: Any, results: Any) -> None:
    try:
        cv2.setNumThreads(1)
        decoder: Decoder = (
            ImageDecoder(args["image_size"], train=True) if args["decode"] else NoDecode()
        )
        rng = np.random.default_rng([args["seed"], args["process"]])
        barrier.wait(_START_TIMEOUT_S)
        n, nbytes = _read_and_decode(
            args["source"], args["piece"], decoder, args["batch_size"], rng, args["latency_s"]
        )
        results.put(("ok", n, nbytes, time.perf_counter()))
    except BaseException as exc:  # reported to the parent, which raises it
        results.put(("error", f"{type(exc).__name__}: {exc}", 0, 0.0))


class LimitRunner:
    """Runs the limit on demand; each ``run()`` forks ``processes`` fresh processes.

    Not thread-safe: one ``run()`` at a time.
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

    def run(self, cancel: threading.Event | None = None) -> LimitRun:
        """Measure once. Raises ``BenchCancelled`` when ``cancel`` is set meanwhile, and
        ``RuntimeError`` naming the first failure of a child process."""
        ctx = multiprocessing.get_context("fork")
        barrier = ctx.Barrier(self.processes + 1)
        results = ctx.Queue()
        children = [
            ctx.Process(
                target=_child,
                args=({**self._args, "process": p, "piece": piece}, barrier, results),
                daemon=True,
            )
            for p, piece in enumerate(self._pieces)
        ]
        for child in children:
            child.start()
        try:
            barrier.wait(_START_TIMEOUT_S)
            start = time.perf_counter()
            samples = nbytes = 0
            end = start
            for _ in children:
                status, n, b, finished = self._next_result(results, children, cancel)
                if status != "ok":
                    raise RuntimeError(f"limit process failed: {n}")
                samples, nbytes, end = samples + n, nbytes + b, max(end, finished)
            return LimitRun(samples, nbytes, end - start)
        finally:
            for child in children:
                if child.is_alive():
                    child.terminate()
                child.join()
            results.close()

    @staticmethod
    def _next_result(
        results: Any, children: list[Any], cancel: threading.Event | None
    ) -> tuple[str, Any, int, float]:
        while True:
            if cancel is not None and cancel.is_set():
                raise BenchCancelled("cancelled while measuring the limit")
            try:
                item: tuple[str, Any, int, float] = results.get(timeout=_POLL_S)
                return item
            except queue.Empty:
                if not any(c.is_alive() for c in children) and results.empty():
                    raise RuntimeError("a limit process died without reporting") from None
