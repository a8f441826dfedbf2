"""Ranks compared: which rank of a job waits on data most, and how far apart the ranks are.

A job of many ranks runs at the speed of its slowest rank, so sums across ranks hide the one
that waits. Each rank's **exposed data-loading time** is the share of its recent wall time the
training loop spent blocked on the next batch (time prefetching did not hide):
``window_blocked_s / window_s`` over the reporter's window, or, from a reporter that sends no
window, ``blocked_s / elapsed_s`` over its lifetime. Only ranks that reported within
``stale_s`` take part; ties go to the lower rank.

Metrics (``rank_families``) keep label cardinality bounded whatever the number of ranks:
per job, one ``slowest_rank`` gauge, the slowest rank's exposed fraction, p99 wait and queue
depth, and the exposed fraction's min/median/max across ranks (label ``stat``). No series is
labelled by rank. See docs/architecture.md, section "Service".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from loader.percentile import percentile
from server.jobs import RankState

__all__ = ["exposed_fraction", "rank_families", "rank_spread"]


def exposed_fraction(rank: RankState) -> float | None:
    """The rank's share of wall time blocked on data (0..1), recent window first."""
    window = rank.loading.get("window_s")
    blocked = rank.loading.get("window_blocked_s")
    if window and blocked is not None and window > 0:
        return min(max(float(blocked) / float(window), 0.0), 1.0)
    if rank.elapsed_s:
        return min(max(rank.blocked_s / rank.elapsed_s, 0.0), 1.0)
    return None


def rank_spread(ranks: Sequence[RankState], *, now: float, stale_s: float) -> dict[str, Any]:
    """Per rank: exposed fraction, wait percentiles and queue depth; and the slowest rank.

    ``slowest_rank`` is None until an active rank has a figure; ``spread`` holds min, median
    and max of the active ranks' exposed fractions and ``max_over_median``.
    """
    rows = []
    scored: list[tuple[float, int]] = []
    for r in ranks:
        fraction = exposed_fraction(r)
        active = now - r.last_at <= stale_s
        if active and fraction is not None:
            scored.append((fraction, r.rank))
        rows.append(
            {
                "rank": r.rank,
                "active": active,
                "exposed_fraction": None if fraction is None else round(fraction, 6),
                "exposed_s": r.loading.get("window_blocked_s"),
                "window_s": r.loading.get("window_s"),
                "steps": r.loading.get("window_steps"),
                "blocked_p50_s": r.loading.get("blocked_p50_s"),
                "blocked_p95_s": r.loading.get("blocked_p95_s"),
                "blocked_p99_s": r.loading.get("blocked_p99_s"),
                "queue_depth": r.loading.get("queue_depth"),
            }
        )
    slowest = min(scored, key=lambda s: (-s[0], s[1]))[1] if scored else None
    for row in rows:
        row["slowest"] = row["rank"] == slowest
    spread: dict[str, float | None] = {"min": None, "median": None, "max": None}
    spread["max_over_median"] = None
    if scored:
        values = [s[0] for s in scored]
        median = percentile(values, 50) or 0.0
        spread.update(min=round(min(values), 6), median=round(median, 6), max=round(max(values), 6))
        spread["max_over_median"] = round(max(values) / median, 3) if median > 0 else None
    return {"slowest_rank": slowest, "spread": spread, "ranks": rows}


def rank_families(
    jobs: Iterable[tuple[str, Sequence[RankState]]], *, now: float, stale_s: float
) -> Iterator[Metric]:
    """The bounded per-job gauges described in the module docstring."""
    slowest = GaugeMetricFamily(
        "shardfeed_job_slowest_rank",
        "the rank that waits on data most (exposed data-loading time over its window)",
        labels=["job"],
    )
    slow_fraction = GaugeMetricFamily(
        "shardfeed_job_slowest_rank_exposed_fraction",
        "share of the slowest rank's wall time blocked on data",
        labels=["job"],
    )
    slow_p99 = GaugeMetricFamily(
        "shardfeed_job_slowest_rank_blocked_p99_seconds",
        "99th percentile of the slowest rank's per-step wait for data",
        labels=["job"],
    )
    slow_depth = GaugeMetricFamily(
        "shardfeed_job_slowest_rank_queue_depth",
        "batches ready in the slowest rank's loader when it last reported",
        labels=["job"],
    )
    spread = GaugeMetricFamily(
        "shardfeed_job_exposed_loading_fraction",
        "share of wall time blocked on data across the job's active ranks (min, median, max)",
        labels=["job", "stat"],
    )
    for job, ranks in jobs:
        doc = rank_spread(ranks, now=now, stale_s=stale_s)
        if doc["slowest_rank"] is None:
            continue
        row = next(r for r in doc["ranks"] if r["slowest"])
        slowest.add_metric([job], doc["slowest_rank"])
        slow_fraction.add_metric([job], row["exposed_fraction"])
        if row["blocked_p99_s"] is not None:
            slow_p99.add_metric([job], row["blocked_p99_s"])
        if row["queue_depth"] is not None:
            slow_depth.add_metric([job], row["queue_depth"])
        for stat in ("min", "median", "max"):
            spread.add_metric([job, stat], doc["spread"][stat])
    yield from (slowest, slow_fraction, slow_p99, slow_depth, spread)
