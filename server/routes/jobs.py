"""``/api/jobs``: stats reports from training jobs and their time series across ranks."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.exceptions import RequestValidationError

from server.coverage import CoverageError, job_summary, read_coverage
from server.deps import Service, get_service, require_token
from server.jobs import MAX_BUCKETS, JobReport, series
from server.models import JOB_PATTERN, StatsAccepted, StatsReport
from server.ranks import rank_spread
from server.store import JobLimitError

__all__ = ["router"]

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

JobName = Annotated[
    str, Path(pattern=JOB_PATTERN, description="job name: letters, digits, '_', '.', '-'")
]


@router.post(
    "/{job}/stats",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StatsAccepted,
    dependencies=[Depends(require_token)],
    responses={401: {}, 413: {}, 422: {}, 429: {}},
)
def post_stats(
    job: JobName, report: StatsReport, service: Annotated[Service, Depends(get_service)]
) -> StatsAccepted:
    """Take one rank's cumulative counters (``loader.StatsReporter`` sends them).

    Bounded: ``rank`` must be below ``job_max_ranks`` (else 422), a new job needs room
    under ``job_max_jobs`` (else 429; jobs silent for ``job_retention_s`` make room), and a
    job keeps at most ``job_max_ranks`` reporting processes (else 429). ``coverage`` (the
    process's id bitmap) is checked here: 422 naming ``coverage`` when it is not one.
    """
    settings = service.settings
    _check_rank(report.rank, settings.job_max_ranks)
    seen = None
    if report.coverage is not None:
        try:
            seen = read_coverage(report.coverage.model_dump(), settings.job_max_samples)
        except CoverageError as exc:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("body", "coverage"), "msg": str(exc)}]
            ) from exc
    try:
        state = service.store.add_report(
            JobReport(
                job=job,
                rank=report.rank,
                received_at=service.clock(),
                samples=report.samples,
                bytes=report.bytes,
                blocked_s=report.blocked_s,
                elapsed_s=report.elapsed_s,
                epoch=report.epoch,
                tracker=report.tracker,
                failed_sends=report.failed_sends,
                resumed_at_step=report.resumed_at_step,
                loading=report.loading(),
                reporter=report.reporter,
                coverage=(
                    None
                    if report.coverage is None
                    else report.coverage.model_dump(exclude={"seen"})
                ),
                seen=seen,
                decode=report.decode,
                evals=[e.model_dump() for e in report.evals],
                sources={name: row.counts() for name, row in report.sources.items()},
                sources_scope=report.sources_scope,
            ),
            keep=settings.job_max_reports,
            max_jobs=settings.job_max_jobs,
            max_age_s=settings.job_retention_s,
            stale_s=settings.job_stale_s,
            max_reporters=settings.job_max_ranks,
        )
    except JobLimitError as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc)) from exc
    service.metrics.reports.inc()
    service.bus.publish(
        {
            "type": "job",
            "job": job,
            "rank": state.rank,
            "samples": state.samples,
            "samples_per_s": state.samples_per_s,
            "epoch": state.epoch,
            "tracker": state.tracker,
        }
    )
    return StatsAccepted(job=job, rank=state.rank, samples_per_s=state.samples_per_s)


def _check_rank(rank: int, limit: int) -> None:
    if rank >= limit:
        message = f"expected rank < {limit} (this service's job_max_ranks), got rank={rank}"
        raise RequestValidationError(
            [{"type": "less_than", "loc": ("body", "rank"), "msg": message, "input": rank}]
        )


@router.get("")
def list_jobs(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    """Every job that ever reported, with its current figures across ranks."""
    now = service.clock()
    stale = service.settings.job_stale_s
    jobs = []
    for name in service.store.job_names():
        ranks = service.store.job_ranks(name)
        doc = job_summary(service.store, name, now=now, stale_s=stale)
        doc.pop("ranks")
        doc["slowest_rank"] = rank_spread(ranks, now=now, stale_s=stale)["slowest_rank"]
        jobs.append(doc)
    return {"jobs": jobs}


@router.get("/{job}", responses={404: {}})
def get_job(
    job: JobName,
    service: Annotated[Service, Depends(get_service)],
    window_s: Annotated[float, Query(gt=0, le=7 * 86400, allow_inf_nan=False)] = 600.0,
    bucket_s: Annotated[float, Query(ge=0.1, le=86400, allow_inf_nan=False)] = 2.0,
) -> dict[str, Any]:
    """A job's figures per rank and in total, and its rates over the last ``window_s``.

    ``loading`` compares the ranks' exposed data-loading time (``server.ranks.rank_spread``):
    the slowest rank and the spread across ranks.

    ``series`` holds one point per ``bucket_s`` (wider when the window would need more than
    2000), summed across ranks; the bucket still filling is left out.
    """
    ranks = service.store.job_ranks(job)
    if not ranks:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job named {job!r} has reported")
    now = service.clock()
    doc = job_summary(service.store, job, now=now, stale_s=service.settings.job_stale_s)
    doc["loading"] = rank_spread(ranks, now=now, stale_s=service.settings.job_stale_s)
    width = max(bucket_s, window_s / MAX_BUCKETS)
    start = now - window_s
    end = math.floor(now / width) * width
    doc["window_s"] = window_s
    doc["bucket_s"] = width
    doc["series"] = series(
        service.store.job_deltas(job, start), start=start, end=end, bucket_s=width
    )
    return doc
