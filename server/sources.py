"""A mixed job's counts per source across its reporting processes (docs/architecture.md,
"Service").

Each process may send its current epoch's counts per source name (``StatsReport.sources``),
either its own (``sources_scope: "rank"``) or over every rank (``"merged"``: rank 0 sending
``MixTracker.all_ranks().counts()``). Of the processes in the newest epoch any of them reports:

- when one sent a merged view, the job's counts are that one's (the newest such report; the
  lowest rank on a tie): ``scope: "merged"``, ``from_rank`` names it;
- else, when one process reports, they are its own: ``scope: "rank"``;
- else only what adds up across ranks is given: per source ``delivered`` and ``padded`` summed,
  and ``quota`` (the epoch's, the same on every rank) when all agree: ``scope: "unmerged"``.
  ``unique``, ``duplicates`` and ``missing`` are left out there: summed per-rank counts would
  hide two ranks reading the same samples and count every other rank's share as missing.

Prometheus series are labelled by job and source; a report holds at most
``loader.mix.report.MAX_SOURCES`` sources, which bounds the cardinality per job.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from server.jobs import RankState

__all__ = ["job_sources", "source_families"]

_ADDITIVE = ("delivered", "padded")
_GAUGES = (
    ("delivered", "rows of the source delivered in the job's current epoch (padding not counted)"),
    ("quota", "the source's quota of the job's current epoch"),
    ("duplicates", "deliveries of the source beyond its plan in the current epoch (merged view)"),
    ("missing", "planned samples of the source not yet delivered in the current epoch"),
)


def job_sources(ranks: Sequence[RankState]) -> dict[str, Any] | None:
    """The job's counts per source (module docstring); None when no process sent any."""
    counting = [r for r in ranks if r.sources]
    if not counting:
        return None
    epochs = [r.epoch for r in counting if r.epoch is not None]
    epoch = max(epochs) if epochs else None
    current = [r for r in counting if r.epoch == epoch]
    merged = [r for r in current if r.sources_scope == "merged"]
    if merged:
        chosen = max(merged, key=lambda r: (r.last_at, -r.rank))
        return _doc("merged", epoch, [chosen], _copy(chosen), from_rank=chosen.rank)
    if len(current) == 1:
        return _doc("rank", epoch, current, _copy(current[0]), from_rank=current[0].rank)
    counts: dict[str, dict[str, int]] = {}
    quotas: dict[str, set[int]] = {}
    for rank in current:
        for name, row in rank.sources.items():
            total = counts.setdefault(name, dict.fromkeys(_ADDITIVE, 0))
            for key in _ADDITIVE:
                total[key] += int(row.get(key, 0))
            quotas.setdefault(name, set()).add(row.get("quota", -1))
    for name, seen in quotas.items():
        if len(seen) == 1 and (quota := seen.pop()) >= 0:
            counts[name] = {"quota": quota, **counts[name]}
    return _doc("unmerged", epoch, current, counts, from_rank=None)


def _copy(rank: RankState) -> dict[str, dict[str, int]]:
    return {name: dict(row) for name, row in rank.sources.items()}


def _doc(
    scope: str,
    epoch: int | None,
    ranks: Sequence[RankState],
    counts: dict[str, dict[str, int]],
    *,
    from_rank: int | None,
) -> dict[str, Any]:
    return {
        "scope": scope,
        "epoch": epoch,
        "reporters": len(ranks),
        "from_rank": from_rank,
        "counts": counts,
    }


def source_families(jobs: Iterable[tuple[str, dict[str, Any] | None]]) -> Iterator[Metric]:
    """Gauges ``shardfeed_job_source_<figure>{job, source}`` from each job's ``job_sources``
    document; a figure the document does not give (duplicates of an unmerged job) has no
    series."""
    families = {
        key: GaugeMetricFamily(f"shardfeed_job_source_{key}", doc, labels=["job", "source"])
        for key, doc in _GAUGES
    }
    for job, doc in jobs:
        if doc is None:
            continue
        for name, row in doc["counts"].items():
            for key, family in families.items():
                if key in row:
                    family.add_metric([job, name], row[key])
    yield from families.values()
