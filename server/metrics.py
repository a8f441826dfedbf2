"""Prometheus metrics of one app, in its own registry (never the global one).

Job and benchmark figures are read from the store at scrape time, so they are the same
numbers the JSON API shows and survive a restart. Benchmark series describe the newest
finished run only (labels ``run`` and ``mode``), which keeps their cardinality bounded.
Ranks are never a label: per job, ``server.ranks`` adds the slowest rank as a gauge's value
and the spread across ranks as three series. A mixed job's per-source gauges carry a
``source`` label, at most ``loader.mix.report.MAX_SOURCES`` per job (``server.sources``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.coverage import job_summary
from server.ranks import rank_families
from server.sources import source_families
from server.store import Store

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_MODE_FIGURES = (
    ("samples_per_second", "samples_per_s", "samples per second of the mode"),
    ("ratio_to_limit", "ratio_to_limit", "samples per second relative to the raw read limit"),
    (
        "mode_limit_samples_per_second",
        "limit_samples_per_s",
        "the limit the mode's ratio was taken against (limit runs just before and after it)",
    ),
    ("noisy", "noisy", "1 when the mode's ratio is noise, not a result (loader.bench.noise)"),
    ("duplicates", "duplicates", "samples delivered more than once"),
    ("missing", "missing", "samples never delivered"),
)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, int | float):
        return None
    return float(value)


class _StoreCollector(Collector):
    def __init__(self, store: Store, stale_s: float, clock: Callable[[], float]) -> None:
        self._store = store
        self._stale_s = stale_s
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from rank_families(
            ((job, self._store.job_ranks(job)) for job in self._store.job_names()),
            now=self._clock(),
            stale_s=self._stale_s,
        )
        yield from self._benchmarks()

    def _jobs(self) -> Iterator[Metric]:
        labels = ["job"]
        rate = GaugeMetricFamily(
            "shardfeed_job_samples_per_second",
            "samples per second of a training job, summed over its active ranks",
            labels=labels,
        )
        samples = CounterMetricFamily(
            "shardfeed_job_samples", "samples a training job has loaded", labels=labels
        )
        nbytes = CounterMetricFamily(
            "shardfeed_job_bytes", "bytes a training job has loaded", labels=labels
        )
        blocked = CounterMetricFamily(
            "shardfeed_job_blocked_seconds",
            "seconds a training job waited for data, summed over ranks",
            labels=labels,
        )
        duplicates = GaugeMetricFamily(
            "shardfeed_job_duplicates",
            "duplicate deliveries in the job's current epoch, over the union of all ranks' ids",
            labels=labels,
        )
        missing = GaugeMetricFamily(
            "shardfeed_job_missing",
            "samples not yet delivered in the job's current epoch, by any rank",
            labels=labels,
        )
        ranks = GaugeMetricFamily(
            "shardfeed_job_active_ranks", "ranks that reported recently", labels=labels
        )
        failed = CounterMetricFamily(
            "shardfeed_job_failed_sends",
            "reports the job's reporters could not deliver",
            labels=labels,
        )
        decoded = CounterMetricFamily(
            "shardfeed_job_decoded_rows",
            "device decode: rows decoded on the device (where=device) or on the CPU by reason, "
            "summed over ranks",
            labels=["job", "where"],
        )
        fallback = GaugeMetricFamily(
            "shardfeed_job_decode_fallback_fraction",
            "device decode: share of rows not decoded on the device",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "shardfeed_job_last_report_age_seconds",
            "seconds since the job's newest report",
            labels=labels,
        )
        now = self._clock()
        sources = []
        for job in self._store.job_names():
            doc = job_summary(self._store, job, now=now, stale_s=self._stale_s)
            sources.append((job, doc["sources"]))
            rate.add_metric([job], doc["samples_per_s"])
            samples.add_metric([job], doc["samples"])
            nbytes.add_metric([job], doc["bytes"])
            blocked.add_metric([job], doc["blocked_s"])
            ranks.add_metric([job], doc["active_ranks"])
            failed.add_metric([job], doc["failed_sends"])
            if doc["last_at"] is not None:
                age.add_metric([job], max(now - doc["last_at"], 0.0))
            if doc["duplicates"] is not None:
                duplicates.add_metric([job], doc["duplicates"])
            if doc["missing"] is not None:
                missing.add_metric([job], doc["missing"])
            for where, rows in sorted(doc["decode"].items()):
                decoded.add_metric([job, where], rows)
            if doc["decode_fallback_fraction"] is not None:
                fallback.add_metric([job], doc["decode_fallback_fraction"])
        yield from (rate, samples, nbytes, blocked, duplicates, missing, ranks, failed, age)
        yield from (decoded, fallback)
        yield from source_families(sources)

    def _benchmarks(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "shardfeed_benchmark_runs", "benchmark runs by status", labels=["status"]
        )
        for status, count in self._store.count_runs().items():
            runs.add_metric([status], count)
        yield runs
        progress = GaugeMetricFamily(
            "shardfeed_benchmark_progress", "fraction done of running runs", labels=["run"]
        )
        for record in self._store.list_runs(status="running", limit=10):
            progress.add_metric([record.id], record.progress)
        yield progress
        families = {
            key: GaugeMetricFamily(
                f"shardfeed_benchmark_{name}",
                f"{doc}, per mode of the newest finished run",
                labels=["run", "mode"],
            )
            for name, key, doc in _MODE_FIGURES
        }
        limit = GaugeMetricFamily(
            "shardfeed_benchmark_limit_samples_per_second",
            "raw read-and-decode limit measured by the newest finished run",
            labels=["run"],
        )
        latest = self._store.latest_done_run()
        result = latest.result if latest is not None else None
        if latest is not None and isinstance(result, dict):
            limit_value = _number((result.get("limit") or {}).get("samples_per_s"))
            if limit_value is not None:
                limit.add_metric([latest.id], limit_value)
            modes = result.get("modes") or {}
            for mode, figures in sorted(modes.items()):
                if not isinstance(figures, dict) or figures.get("status", "ok") != "ok":
                    continue
                for key, family in families.items():
                    value = _number(figures.get(key))
                    if value is not None:
                        family.add_metric([latest.id, mode], value)
        yield from families.values()
        yield limit


class ServiceMetrics:
    """The app's registry plus the counters the request handlers bump."""

    def __init__(
        self, store: Store, *, stale_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StoreCollector(store, stale_s, clock))
        self.reports = Counter(
            "shardfeed_stats_reports",
            "training-job stats reports accepted",
            registry=self.registry,
        )
        self.rejected = Counter(
            "shardfeed_requests_rejected",
            "requests refused for auth, size or path reasons",
            ["reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
