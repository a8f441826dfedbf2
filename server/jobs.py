"""Training-job stats: per-rank state from cumulative reports, and aggregation across ranks.

A reporter sends cumulative counters (samples, bytes, seconds blocked on data) plus its own
monotonic ``elapsed_s``. From two consecutive reports of a rank we derive the work done in
between (a :class:`Delta`); counters going backwards mean the reporter restarted, and the new
report then counts from zero. A job's time series is the sum of all its ranks' deltas, each
spread evenly over the interval it covers. A job's duplicates and missing samples are never a
sum of per-rank counts (two ranks reading the same samples would sum to no duplicates): they
come from the union of the processes' id bitmaps (``server.coverage``), or from the one
process's own counts when only one reports.
Device-decode row counts (``decode``: rows decoded on the device, or on the CPU by reason) are
summed over the reporting processes, each row being decoded by one of them, with the share not
decoded on the device as ``decode_fallback_fraction``.
"""

from __future__ import annotations

import builtins
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loader.jsonsafe import dumps

__all__ = [
    "MAX_BUCKETS",
    "Delta",
    "JobReport",
    "RankState",
    "advance_rank",
    "job_tracker",
    "series",
    "summarize",
]

MAX_BUCKETS = 2000


@dataclass(frozen=True)
class JobReport:
    """One report of one rank, as received (counters cumulative since the reporter started)."""

    job: str
    rank: int
    received_at: float
    samples: int
    bytes: int
    blocked_s: float
    elapsed_s: float | None = None
    epoch: int | None = None
    tracker: Mapping[str, int] = field(default_factory=dict)
    failed_sends: int = 0
    resumed_at_step: int | None = None
    loading: Mapping[str, float | int | None] = field(default_factory=dict)
    reporter: str = ""
    coverage: Mapping[str, int] | None = None
    seen: builtins.bytes | None = None
    decode: Mapping[str, int] = field(default_factory=dict)
    evals: Sequence[Mapping[str, float | int]] = ()
    sources: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    sources_scope: str = "rank"


@dataclass(frozen=True)
class Delta:
    """Work one rank did between two reports, over ``dt`` seconds (0 when unknown)."""

    dt: float
    samples: int
    bytes: int
    blocked_s: float


@dataclass(frozen=True)
class RankState:
    """The latest report of a rank plus its rates over the last interval."""

    rank: int
    first_at: float
    last_at: float
    samples: int
    bytes: int
    blocked_s: float
    elapsed_s: float | None
    epoch: int | None
    tracker: dict[str, int]
    failed_sends: int
    reports: int
    samples_per_s: float
    mb_per_s: float
    resumed_at_step: int | None = None
    loading: dict[str, float | int | None] = field(default_factory=dict)
    reporter: str = ""
    coverage: dict[str, int] | None = None
    decode: dict[str, int] = field(default_factory=dict)
    evals: list[dict[str, float | int]] = field(default_factory=list)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    sources_scope: str = "rank"

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RankState:
        return cls(**json.loads(text))


def advance_rank(previous: RankState | None, report: JobReport) -> tuple[RankState, Delta]:
    """The rank's state after ``report`` and the work done since ``previous``."""
    restarted = (
        previous is None or report.samples < previous.samples or report.bytes < (previous.bytes)
    )
    if (
        previous is not None
        and report.elapsed_s is not None
        and previous.elapsed_s is not None
        and report.elapsed_s < previous.elapsed_s
    ):
        restarted = True
    if restarted or previous is None:
        dt = report.elapsed_s if report.elapsed_s and report.elapsed_s > 0 else 0.0
        delta = Delta(dt, report.samples, report.bytes, report.blocked_s)
        first_at, reports = report.received_at, 1
    else:
        if report.elapsed_s is not None and previous.elapsed_s is not None:
            dt = report.elapsed_s - previous.elapsed_s
        else:
            dt = max(report.received_at - previous.last_at, 0.0)
        delta = Delta(
            dt,
            report.samples - previous.samples,
            report.bytes - previous.bytes,
            max(report.blocked_s - previous.blocked_s, 0.0),
        )
        first_at, reports = previous.first_at, previous.reports + 1
    if dt > 0:
        samples_per_s = delta.samples / dt
        mb_per_s = delta.bytes / dt / 1e6
    elif previous is not None and not restarted:
        samples_per_s, mb_per_s = previous.samples_per_s, previous.mb_per_s
    else:
        samples_per_s = mb_per_s = 0.0
    state = RankState(
        rank=report.rank,
        first_at=first_at,
        last_at=report.received_at,
        samples=report.samples,
        bytes=report.bytes,
        blocked_s=report.blocked_s,
        elapsed_s=report.elapsed_s,
        epoch=report.epoch,
        tracker=dict(report.tracker),
        failed_sends=report.failed_sends,
        reports=reports,
        samples_per_s=round(samples_per_s, 3),
        mb_per_s=round(mb_per_s, 4),
        resumed_at_step=report.resumed_at_step,
        loading=dict(report.loading),
        reporter=report.reporter,
        coverage=None if report.coverage is None else dict(report.coverage),
        decode=dict(report.decode),
        evals=[dict(e) for e in report.evals],
        sources={name: dict(row) for name, row in report.sources.items()},
        sources_scope=report.sources_scope,
    )
    return state, delta


_ADDITIVE = ("delivered", "padded", "retries")


def job_tracker(ranks: Sequence[RankState], merged: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job's delivery counts: ``merged`` (the union of the processes' id bitmaps) when
    there is one; else the one reporting process's own counts; else, with several processes
    and no bitmaps, only the counts that add up across ranks (``delivered``, ``padded``,
    ``retries``): duplicates and missing cannot be told from per-rank counts."""
    if merged is not None:
        return dict(merged)
    counting = [r for r in ranks if r.tracker]
    if len(counting) == 1:
        return {**counting[0].tracker, "scope": "rank"}
    tracker: dict[str, Any] = {}
    for rank in counting:
        for key in _ADDITIVE:
            if key in rank.tracker:
                tracker[key] = tracker.get(key, 0) + int(rank.tracker[key])
    return {**tracker, "scope": "unmerged"} if counting else {}


def summarize(
    job: str,
    ranks: Sequence[RankState],
    *,
    now: float,
    stale_s: float,
    merged: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A job's figures across its reporting processes; one silent for ``stale_s`` adds no
    rate. Costs O(ranks): no rank is compared with another. ``merged``: the job's delivery
    counts over all ranks (``server.coverage.merge_seen``), see ``job_tracker``.

    ``duplicates`` and ``missing`` are None when they cannot be known: no process sent tracker
    counts, or several did without id bitmaps.
    """
    live = [now - r.last_at <= stale_s for r in ranks]
    active = [r for r, on in zip(ranks, live, strict=True) if on]
    tracker = job_tracker(ranks, merged)
    decode: dict[str, int] = {}
    for rank in ranks:
        for key, value in rank.decode.items():
            decode[key] = decode.get(key, 0) + int(value)
    rows = sum(decode.values())
    epochs = [r.epoch for r in ranks if r.epoch is not None]
    resumed = [r.resumed_at_step for r in ranks if r.resumed_at_step is not None]
    return {
        "job": job,
        "ranks": [dict(asdict(r), active=on) for r, on in zip(ranks, live, strict=True)],
        "active_ranks": len(active),
        "samples": sum(r.samples for r in ranks),
        "bytes": sum(r.bytes for r in ranks),
        "blocked_s": round(sum(r.blocked_s for r in ranks), 6),
        "samples_per_s": round(sum(r.samples_per_s for r in active), 3),
        "mb_per_s": round(sum(r.mb_per_s for r in active), 4),
        "epoch": max(epochs) if epochs else None,
        "tracker": tracker,
        "duplicates": tracker.get("duplicates") if tracker else None,
        "missing": tracker.get("missing") if tracker else None,
        "decode": decode,
        "decode_fallback_fraction": (
            round(1 - decode.get("device", 0) / rows, 6) if rows else None
        ),
        "failed_sends": sum(r.failed_sends for r in ranks),
        "resumed_at_step": max(resumed) if resumed else None,
        "evals": _evals(ranks),
        "first_at": min((r.first_at for r in ranks), default=None),
        "last_at": max((r.last_at for r in ranks), default=None),
    }


def _evals(ranks: Sequence[RankState]) -> list[dict[str, float | int]]:
    """Validation results per epoch, oldest first; an epoch several ranks sent (each rank of a
    job computes the same exact figure) comes from the lowest of them."""
    by_epoch: dict[int, dict[str, float | int]] = {}
    for rank in sorted(ranks, key=lambda r: r.rank, reverse=True):
        for entry in rank.evals:
            by_epoch[int(entry["epoch"])] = dict(entry)
    return [by_epoch[e] for e in sorted(by_epoch)]


def series(
    deltas: Iterable[tuple[float, float, int, int, float]],
    *,
    start: float,
    end: float,
    bucket_s: float,
) -> list[dict[str, float]]:
    """Rates per time bucket in ``[start, end)``, buckets aligned to multiples of ``bucket_s``.

    Each delta ``(received_at, dt, samples, bytes, blocked_s)`` is spread evenly over
    ``[received_at - dt, received_at]``; with ``dt == 0`` it lands in the bucket of
    ``received_at``. The bucket width grows when needed to keep at most ``MAX_BUCKETS``.
    Costs O(deltas + buckets), however many buckets a delta spans.
    """
    if not (bucket_s > 0 and math.isfinite(bucket_s)):
        raise ValueError(f"expected a finite bucket_s > 0, got bucket_s={bucket_s}")
    if end <= start:
        return []
    bucket_s = max(bucket_s, (end - start) / MAX_BUCKETS)
    first = math.floor(start / bucket_s)
    count = max(math.ceil(end / bucket_s) - first, 1)
    sums = [[0.0, 0.0, 0.0] for _ in range(count)]
    # Buckets a delta covers fully get the same share: they are added through a difference
    # array (``steps``), so each delta costs O(1) and the whole series O(deltas + buckets).
    steps = [[0.0, 0.0, 0.0] for _ in range(count + 1)]
    for at, dt, samples, nbytes, blocked in deltas:
        lo, hi = (at - dt, at) if dt > 0 else (at, at)
        i_lo = max(math.floor(lo / bucket_s) - first, 0)
        i_hi = min(math.floor(hi / bucket_s) - first, count - 1)
        if i_hi < 0 or i_lo >= count:
            continue
        values = (samples, nbytes, blocked)
        for i in {i_lo, i_hi}:
            b_lo, b_hi = (first + i) * bucket_s, (first + i + 1) * bucket_s
            share = 1.0 if dt <= 0 else (min(hi, b_hi) - max(lo, b_lo)) / dt
            if share > 0:
                for k in range(3):
                    sums[i][k] += values[k] * share
        if i_hi - i_lo > 1:
            for k in range(3):
                full = values[k] * bucket_s / dt
                steps[i_lo + 1][k] += full
                steps[i_hi][k] -= full
    running = [0.0, 0.0, 0.0]
    for i in range(count):
        for k in range(3):
            running[k] += steps[i][k]
            sums[i][k] += running[k]
    return [
        {
            "t": round((first + i) * bucket_s, 3),
            "samples_per_s": round(s / bucket_s, 3),
            "mb_per_s": round(b / bucket_s / 1e6, 4),
            "blocked_s_per_s": round(w / bucket_s, 4),
        }
        for i, (s, b, w) in enumerate(sums)
    ]
