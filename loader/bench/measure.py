"""Measuring one epoch of a loader, and folding epochs and rounds into the report's figures.

An epoch is timed from ``iter(loader)`` to its end. Rates are steady-state, so worker start-up
is left out of them and reported on its own as ``first_batch_s``: the clock starts once every
worker has handed over its first DataLoader item, and only the samples that arrive after that
count. (Starting at the first batch would credit a loader with what it made during start-up:
the other workers' first items, made in parallel, and the rest of a ``BatchGroup`` that arrives
with the first batch.) Items are counted by the iterator's ``items_received`` where it has one
(``ClosingDataLoader``), else one per batch; the number of workers is the loader's
``num_workers`` (at least one item). ``blocked_s`` is the time spent inside
``next()`` waiting for batches; batch latency is the duration of each such wait after the first.
Main-process CPU is ``time.process_time()`` over the epoch (every thread of the process) minus
the CPU the measurement's own bookkeeping took, per 1,000 samples delivered
(``main_cpu_s_per_1k``) and per 1,000 distinct samples (``main_cpu_s_per_1k_unique``: what a
mode that delivers duplicates costs per sample the epoch actually needed).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from loader.batch import Batch
from loader.bench.noise import judge
from loader.percentile import percentile
from loader.tracker import DuplicateTracker

__all__ = [
    "COUNTS",
    "EVAL",
    "FIGURES",
    "NET",
    "BenchCancelled",
    "combine_rounds",
    "measure_epoch",
    "summarize_epochs",
]

COUNTS = ("samples", "unique", "duplicates", "missing", "padded")
NET = ("retries", "requests", "bytes_fetched", "cache_hits", "cache_fills", "cache_evictions")
"""Remote-read counts per epoch (``loader.remote.netstats``), for loaders that keep them."""
EVAL = ("eval_s", "eval_overhead")
"""Time inside ``ExactEval`` and its share of the pass (``tar-aware-eval``,
``loader.bench.evalmode``)."""
FIGURES = (
    "samples_per_s",
    "mb_per_s",
    "ratio_to_limit",
    "blocked_s",
    "p50_batch_ms",
    "p99_batch_ms",
    "main_cpu_s_per_1k",
    "main_cpu_s_per_1k_unique",
    "first_batch_s",
)


class BenchCancelled(Exception):
    """The benchmark was cancelled (its ``cancel`` event was set)."""


def measure_epoch(
    loader: Iterable[Batch],
    tracker: DuplicateTracker,
    epoch: int,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Iterate ``loader`` once and return the epoch's figures (``ratio_to_limit`` left ``None``).

    Checks ``cancel`` between batches and raises ``BenchCancelled`` when it is set.
    """
    tracker.start_epoch(epoch)
    warmup_items = max(int(getattr(loader, "num_workers", 0) or 0), 1)
    waits: list[float] = []
    nbytes = steady_bytes = steady_samples = batches = items = 0
    bookkeeping = 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    it = iter(loader)
    first = last = steady_from = t0
    steady = False
    while True:
        before = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        now = time.perf_counter()
        book0 = time.thread_time()
        waits.append(now - before)
        size, got = len(batch.ids), int(batch.nbytes.sum())
        tracker.update(batch.ids, batch.padded)
        items = getattr(it, "items_received", items + 1)
        if batches == 0:
            first = now
        if not steady and items > warmup_items:
            steady, steady_from = True, last
        if steady:
            steady_samples, steady_bytes = steady_samples + size, steady_bytes + got
        batches, nbytes, last = batches + 1, nbytes + got, now
        bookkeeping += time.thread_time() - book0
        if cancel is not None and cancel.is_set():
            raise BenchCancelled(f"cancelled during epoch {epoch}")
    end = time.perf_counter()
    cpu = max(time.process_time() - cpu0 - bookkeeping, 0.0)
    counts = tracker.end_epoch()
    delivered = counts.delivered + counts.padded
    if steady and last > steady_from:
        span, rate_samples, rate_bytes = last - steady_from, steady_samples, steady_bytes
    else:
        span, rate_samples, rate_bytes = max(end - t0, 1e-9), delivered, nbytes
    latencies = [w * 1000 for w in waits[1:]] or [w * 1000 for w in waits]
    return {
        "epoch": epoch,
        "samples": counts.delivered,
        "unique": counts.unique,
        "duplicates": counts.duplicates,
        "missing": counts.missing,
        "padded": counts.padded,
        "batches": batches,
        "bytes": nbytes,
        "seconds": end - t0,
        "steady_samples": rate_samples,
        "steady_bytes": rate_bytes,
        "steady_s": span,
        "samples_per_s": rate_samples / span,
        "mb_per_s": rate_bytes / 1e6 / span,
        "ratio_to_limit": None,
        "blocked_s": sum(waits),
        "p50_batch_ms": percentile(latencies, 50),
        "p99_batch_ms": percentile(latencies, 99),
        "main_cpu_s": cpu,
        "main_cpu_s_per_1k": cpu / delivered * 1000 if delivered else None,
        "main_cpu_s_per_1k_unique": cpu / counts.unique * 1000 if counts.unique else None,
        "first_batch_s": (first - t0) if batches else None,
        "_latencies": latencies,
    }


def summarize_epochs(epochs: list[dict[str, Any]], limits: Sequence[float]) -> dict[str, Any]:
    """One round of a mode: counts and times summed over epochs, rates over the summed steady
    spans, percentiles over all batches, ``first_batch_s`` from the first epoch (start-up).

    ``limits`` are the limit runs just before and after the mode; its ratio is taken against
    their mean (``limit_samples_per_s``), and ``loader.bench.noise.judge`` says whether that
    ratio is noise. Sets each epoch's ``ratio_to_limit`` and drops the epochs' raw latency
    lists (the returned epochs are JSON-ready)."""
    limit_rate = sum(limits) / len(limits) if limits else None
    latencies = [x for e in epochs for x in e.pop("_latencies", [])]
    span = sum(e["steady_s"] for e in epochs)
    rate = sum(e["steady_samples"] for e in epochs) / span if span > 0 else 0.0
    delivered = sum(e["samples"] + e["padded"] for e in epochs)
    cpu = sum(e["main_cpu_s"] for e in epochs)
    unique = sum(e["unique"] for e in epochs)
    for e in epochs:
        e["ratio_to_limit"] = _ratio(e["samples_per_s"], limit_rate)
    summary: dict[str, Any] = {k: sum(e[k] for e in epochs) for k in COUNTS}
    if epochs and all("eval_s" in e for e in epochs):
        eval_s, seconds = sum(e["eval_s"] for e in epochs), sum(e["seconds"] for e in epochs)
        summary.update(eval_s=eval_s, eval_overhead=eval_s / seconds if seconds else None)
    summary.update({k: sum(e[k] for e in epochs) for k in NET if epochs and k in epochs[0]})
    summary.update(
        samples_per_s=rate,
        mb_per_s=sum(e["steady_bytes"] for e in epochs) / 1e6 / span if span > 0 else 0.0,
        ratio_to_limit=_ratio(rate, limit_rate),
        blocked_s=sum(e["blocked_s"] for e in epochs),
        p50_batch_ms=percentile(latencies, 50),
        p99_batch_ms=percentile(latencies, 99),
        main_cpu_s_per_1k=cpu / delivered * 1000 if delivered else None,
        main_cpu_s_per_1k_unique=cpu / unique * 1000 if unique else None,
        first_batch_s=epochs[0]["first_batch_s"] if epochs else None,
        seconds=sum(e["seconds"] for e in epochs),
        limit_samples_per_s=limit_rate,
        limit_runs_samples_per_s=list(limits),
        epochs=epochs,
    )
    summary.update(judge(summary["ratio_to_limit"], limits))
    return summary


def _ratio(rate: float, limit: float | None) -> float | None:
    return rate / limit if limit else None


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level figures of a mode over ``--repeat`` rounds: the median of each figure
    (counts: the lower median, so they stay integers), ``samples_per_s_min``/``_max``, the
    per-epoch figures of the round whose rate is the median, and a short list of ``rounds``.

    ``ratio_to_limit`` and the limit it used (``limit_samples_per_s``, the two runs in
    ``limit_runs_samples_per_s``) come from one round, the one of the lower median ratio, so
    the limit shown is the one its ratio was taken against. The mode is ``noisy`` when any
    round is; ``limit_spread`` is the widest round's, ``noise`` says which and why."""
    if not rounds:
        raise ValueError("expected at least one round, got none")
    out: dict[str, Any] = {k: statistics.median_low([r[k] for r in rounds]) for k in COUNTS}
    for key in (*FIGURES, "seconds", "limit_samples_per_s"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    for key in NET:
        if all(key in r for r in rounds):
            out[key] = statistics.median_low([r[key] for r in rounds])
    for key in EVAL:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    rates = [r["samples_per_s"] for r in rounds]
    out["samples_per_s_min"], out["samples_per_s_max"] = min(rates), max(rates)
    median_round = min(rounds, key=lambda r: abs(r["samples_per_s"] - out["samples_per_s"]))
    out["epochs"] = median_round["epochs"]
    rated = sorted(
        (r for r in rounds if r.get("ratio_to_limit") is not None),
        key=lambda r: r["ratio_to_limit"],
    )
    ratio_round = rated[(len(rated) - 1) // 2] if rated else rounds[0]  # the lower median
    for key in ("ratio_to_limit", "limit_samples_per_s", "limit_runs_samples_per_s"):
        out[key] = ratio_round.get(key)
    spreads = [r["limit_spread"] for r in rounds if r.get("limit_spread") is not None]
    noisy = [(i, r) for i, r in enumerate(rounds) if r.get("noisy")]
    out["noisy"] = bool(noisy)
    out["limit_spread"] = max(spreads) if spreads else None
    out["noise"] = (
        "; ".join(r["noise"] if len(rounds) == 1 else f"round {i}: {r['noise']}" for i, r in noisy)
        or None
    )
    out["rounds"] = [
        {
            "round": i,
            "samples_per_s": r["samples_per_s"],
            "ratio_to_limit": r["ratio_to_limit"],
            "limit_samples_per_s": r["limit_samples_per_s"],
            "limit_runs_samples_per_s": r.get("limit_runs_samples_per_s"),
            "noisy": r.get("noisy", False),
            "main_cpu_s_per_1k": r["main_cpu_s_per_1k"],
        }
        for i, r in enumerate(rounds)
    ]
    return out
