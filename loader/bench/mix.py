"""``shardfeed bench --mix``: a mixed loader against the single-source loader in the same run,
and the cost of planning a large mix (docs/architecture.md, "Mixing").

The shards of ``--shards`` are read three ways, each by one ``make_loader`` (persistent
workers) whose first epoch is timed apart, then in interleaved rounds of one epoch each
(``single``, ``mix2``, ``mix5``, then ``mix2``, ``mix5``, ``single``, ...: on a shared machine
whose speed drifts each run takes each slot in turn): the dataset as it is; a two-source mix
(its shards dealt round-robin into 2 sources); a five-source mix (into 5). Each source has
``repeat=1``, so a mixed epoch decodes exactly the samples of the single one, only in the mix's
order: the rates compare the same work (weights that drew some images twice and others never
would compare different images). Each mix's rate is reported as a ratio to the median
single-source rate (``ratio_to_single``, the >= 0.97 target), with its per-source counts from
``MixTracker`` (duplicates and missing against the plan).

``plan`` times, on synthetic shard sizes (no data read), what every worker of a large job
computes: 1.3 million samples in 3 sources, 64 ranks x 16 workers, the whole epoch's plans
(``plan_ms``: the mix plan, the partition over all ranks, and per worker its slots' sources and
its sources' shard runs) and one worker's (``worker_ms``); ``state_bytes`` is the size of the
resume state half-way through that epoch (``_state_bytes``).
"""

from __future__ import annotations

import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from loader.dataloader import make_loader, stop_workers
from loader.mix.dataset import MixedDataset
from loader.mix.plan import MixPlan
from loader.mix.source import Source
from loader.mix.tracker import MixTracker
from loader.plan.partition import plan_epoch, plan_rank
from loader.plan.shuffle import emission_order
from loader.resume.state import LoaderState, Topology
from loader.sources import resolve_source

__all__ = ["MIXES", "bench_mix", "time_plan"]

MIXES: dict[str, int] = {"mix2": 2, "mix5": 5}  # sources per mix
PLAN_SAMPLES = (800_000, 400_000, 100_000)  # 1.3 million in 3 sources
PLAN_SHARD = 1_000  # samples per synthetic shard
PLAN_RANKS, PLAN_WORKERS, PLAN_BATCH = 64, 16, 256
SHUFFLE = 1_000  # the default shuffle buffer


def _mix_sources(urls: list[str], parts: int) -> list[Source]:
    """``urls`` dealt round-robin into ``parts`` sources, each drawn once per epoch."""
    if len(urls) < parts:
        raise ValueError(
            f"expected at least {parts} shards for a {parts}-source mix, got {len(urls)}: "
            "build the shards with more of them (shardfeed shard --num-shards)"
        )
    return [Source(urls[i::parts], repeat=1, name=f"part{i}") for i in range(parts)]


def _epoch(loader: Any, tracker: MixTracker | None) -> tuple[int, float]:
    """Samples delivered (padding aside) and seconds of the next epoch of ``loader``; the
    tracker counts the batches after the clock stops, so every run times the same loop."""
    if tracker is not None:
        tracker.start_epoch(loader.dataset.next_epoch)
    start = time.perf_counter()
    samples = 0
    kept = []
    for batch in loader:
        samples += int((~batch.padded).sum())
        if tracker is not None:
            kept.append((batch.source, batch.ids, batch.padded))
    seconds = time.perf_counter() - start
    if tracker is not None:
        for columns in kept:
            tracker.update(*columns)
    return samples, seconds


def bench_mix(
    shards: str,
    *,
    workers: int,
    batch_size: int,
    image_size: int,
    decode: bool,
    repeat: int,
    seed: int,
    on_round: Callable[[str, int, float], None] | None = None,
) -> dict[str, Any]:
    """The ``--mix`` document (module doc): per run its median samples/s over ``repeat``
    epochs after a first one (worker start-up, files opened; ``first_epoch_samples_per_s``),
    and per mix its ratio to the single-source rate and per-source counts."""
    source = resolve_source(shards)
    urls = [s.url for s in source.shards]
    total = source.num_samples
    options: dict[str, Any] = {
        "num_workers": workers,
        "batch_size": batch_size,
        "image_size": image_size,
        "decode": decode,
        "seed": seed,
    }
    loaders: dict[str, Any] = {"single": make_loader(shards, **options)}
    trackers: dict[str, MixTracker | None] = {"single": None}
    for name, parts in MIXES.items():
        loaders[name] = make_loader(_mix_sources(urls, parts), epoch_size=total, **options)
        dataset = loaders[name].dataset
        if not isinstance(dataset, MixedDataset):
            raise TypeError(f"expected a MixedDataset, got {type(dataset).__name__}")
        trackers[name] = MixTracker(dataset.mix)
    runs: dict[str, list[float]] = {name: [] for name in loaders}
    first: dict[str, float] = {}
    names = list(loaders)
    try:
        for name in names:
            samples, seconds = _epoch(loaders[name], trackers[name])
            first[name] = samples / seconds
        for round_ in range(repeat):
            for name in names[round_ % 3 :] + names[: round_ % 3]:  # each run takes each slot
                samples, seconds = _epoch(loaders[name], trackers[name])
                runs[name].append(samples / seconds)
                if on_round is not None:
                    on_round(name, round_, samples / seconds)
    finally:
        for loader in loaders.values():
            stop_workers(loader)
    single = statistics.median(runs["single"])
    results: dict[str, Any] = {}
    for name, rates in runs.items():
        rate = statistics.median(rates)
        results[name] = {
            "samples_per_s": rate,
            "rounds": rates,
            "first_epoch_samples_per_s": first[name],
        }
        tracker = trackers[name]
        if tracker is not None:
            results[name]["ratio_to_single"] = rate / single
            results[name]["sources"] = [c.to_dict() for c in tracker.counts()]
    return {
        "kind": "shardfeed-bench-mix",
        "shards": shards,
        "samples": total,
        "config": {**options, "repeat": repeat},
        "results": results,
        "plan": time_plan(seed),
    }


def time_plan(seed: int = 0, epoch: int = 1) -> dict[str, Any]:
    """The ``plan`` figures of the module doc (best of three, to see past a busy machine)."""
    shard_sizes = [[PLAN_SHARD] * (n // PLAN_SHARD) for n in PLAN_SAMPLES]
    quotas = list(PLAN_SAMPLES)

    def whole() -> None:
        plan = MixPlan(shard_sizes, quotas, seed=seed)
        plans = plan_epoch([plan.epoch_size], seed=seed, epoch=epoch, world_size=PLAN_RANKS,
                           num_workers=PLAN_WORKERS, batch_size=PLAN_BATCH)  # fmt: skip
        inter = plan.interleave(epoch)
        for rank in plans:
            for worker in rank:
                runs = [(s.first_id, s.first_id + len(s)) for s in worker.segments]
                for a, b in runs:
                    inter.sources(a, b)
                plan.reads(epoch, runs)

    def one() -> None:
        plan = MixPlan(shard_sizes, quotas, seed=seed)
        (worker, *_) = plan_rank([plan.epoch_size], seed=seed, epoch=epoch, rank=PLAN_RANKS - 1,
                                 world_size=PLAN_RANKS, num_workers=PLAN_WORKERS,
                                 batch_size=PLAN_BATCH)  # fmt: skip
        runs = [(s.first_id, s.first_id + len(s)) for s in worker.segments]
        for a, b in runs:
            plan.interleave(epoch).sources(a, b)
        plan.reads(epoch, runs)

    return {
        "samples": sum(PLAN_SAMPLES),
        "sources": len(PLAN_SAMPLES),
        "ranks": PLAN_RANKS,
        "workers": PLAN_WORKERS,
        "plan_ms": _best_ms(whole),
        "worker_ms": _best_ms(one),
        "state_bytes": _state_bytes(sum(PLAN_SAMPLES), seed, epoch),
    }


def _best_ms(fn: Callable[[], None], times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def _state_bytes(total: int, seed: int, epoch: int) -> int:
    """Pickled size of the state every rank holds under ``torch.distributed`` half-way through
    the epoch: each of the 64 x 16 workers has handed over the first half of its samples in the
    order of a 1,000-slot shuffle buffer (so the bitmap is ragged at every worker's front)."""
    topology = Topology(PLAN_RANKS, PLAN_WORKERS, PLAN_BATCH, "pad", SHUFFLE)
    taken = np.zeros(total, dtype=bool)
    plans = plan_epoch([total], seed=seed, epoch=epoch, world_size=PLAN_RANKS,
                       num_workers=PLAN_WORKERS, batch_size=PLAN_BATCH)  # fmt: skip
    rng = np.random.default_rng(seed)
    for rank in plans:
        for worker in rank:
            positions = np.concatenate([np.arange(s.first_id, s.stop) for s in worker.segments])
            half = len(positions) // 2
            order = np.fromiter(emission_order(len(positions), SHUFFLE, rng), np.int64)
            taken[positions[order[:half]]] = True
    state = LoaderState(
        fingerprint="f" * 64, num_samples=total, seed=seed, epoch=epoch, topology=topology,
        ranks=tuple(range(PLAN_RANKS)), batches={r: [0] * PLAN_WORKERS for r in range(PLAN_RANKS)},
        base=np.zeros(total, dtype=bool), taken=taken,
    )  # fmt: skip
    return len(pickle.dumps(state.to_dict()))
