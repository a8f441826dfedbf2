"""``/api/benchmarks``: start, list, get and cancel benchmark runs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.exceptions import RequestValidationError

from loader.remote.redact import redact
from server.deps import Service, get_service, require_token
from server.models import BenchmarkRequest, RunCreated, RunList, RunOut, RunSummary, Status
from server.paths import MissingInput, PathRefused, check_bench_inputs
from server.store import FINISHED, RunRecord

__all__ = ["router"]

router = APIRouter(prefix="/api/benchmarks", tags=["benchmarks"])

RunId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="run id")]
_FIELD = re.compile(r"got (\w+)=")
_SUMMARY_KEYS = ("status", "samples_per_s", "ratio_to_limit", "duplicates", "missing", "padded")


def _invalid(field: str, message: str, value: Any, kind: str = "value_error") -> Exception:
    return RequestValidationError(
        [
            {
                "type": kind,
                "loc": ("body", field),
                "msg": redact(message),
                "input": redact(value) if isinstance(value, str) else value,
            }
        ]
    )


def _check_limits(body: BenchmarkRequest, service: Service) -> None:
    settings = service.settings
    for name, limit in (
        ("workers", settings.max_workers),
        ("epochs", settings.max_epochs),
        ("repeat", settings.max_repeat),
    ):
        value = getattr(body, name)
        if value > limit:
            raise _invalid(
                name,
                f"expected {name} <= {limit} (this service's max_{name}), got {name}={value}",
                value,
                "less_than_equal",
            )


def _buffer_bytes(body: BenchmarkRequest) -> int:
    """Worst-case bytes of a run's decoded batch buffers: one ``[batch, side, side, 3]`` uint8
    buffer, times the buffers a worker may hold (its pool, as ``ShardDataset`` sizes it:
    ``max(CAPACITY, IN_FLIGHT_ITEMS x transfer batches)``), times the workers (the main
    process decodes when there are none). No decoding, no buffers."""
    if body.decode == "none":
        return 0
    from loader.dataloader import transfer_batches_for
    from loader.worker.pools import CAPACITY
    from loader.worker.stream import IN_FLIGHT_ITEMS

    group = transfer_batches_for(body.batch_size, body.image_size)
    buffers = max(CAPACITY, IN_FLIGHT_ITEMS * group)
    return body.batch_size * body.image_size**2 * 3 * buffers * max(body.workers, 1)


def _check_budget(body: BenchmarkRequest, service: Service) -> None:
    settings = service.settings
    need = _buffer_bytes(body)
    if need > settings.max_buffer_bytes:
        raise _invalid(
            "batch_size",
            f"expected batch buffers of at most {settings.max_buffer_bytes} bytes (this "
            f"service's max_buffer_bytes), got {need} bytes = batch_size={body.batch_size} x "
            f"image_size={body.image_size}^2 x 3 x buffers per worker x workers={body.workers}; "
            "lower batch_size, image_size or workers",
            body.batch_size,
            "less_than_equal",
        )
    if body.timeout_s is not None and body.timeout_s > settings.max_run_s:
        raise _invalid(
            "timeout_s",
            f"expected timeout_s <= {settings.max_run_s} (this service's max_run_s), "
            f"got timeout_s={body.timeout_s}",
            body.timeout_s,
            "less_than_equal",
        )


def _validate_with_engine(config: dict[str, Any]) -> None:
    """Let the bench engine refuse combinations the models cannot see (422 naming the field)."""
    from loader.bench import BenchConfig

    try:
        BenchConfig(**{**config, "modes": tuple(config["modes"])}).validate()
    except ValueError as exc:
        match = _FIELD.search(str(exc))
        field = match.group(1) if match and match.group(1) in config else "body"
        raise _invalid(field, str(exc), config.get(field)) from exc


def _summary(record: RunRecord) -> RunSummary:
    modes: dict[str, dict[str, Any]] = {}
    if isinstance(record.result, dict):
        for mode, figures in (record.result.get("modes") or {}).items():
            if isinstance(figures, dict):
                modes[mode] = {k: figures.get(k) for k in _SUMMARY_KEYS}
    return RunSummary(**record.to_dict(with_result=False), modes=modes)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunCreated,
    dependencies=[Depends(require_token)],
    responses={401: {}, 403: {}, 422: {}, 429: {}},
)
def start_benchmark(
    body: BenchmarkRequest, service: Annotated[Service, Depends(get_service)]
) -> RunCreated:
    """Queue a benchmark run; it starts when the runs before it have finished."""
    _check_limits(body, service)
    _check_budget(body, service)
    try:
        folder, shards = check_bench_inputs(body.folder, body.shards, service.settings.data_roots)
    except PathRefused as exc:
        service.metrics.rejected.labels("path").inc()
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    except MissingInput as exc:
        raise _invalid(exc.field, exc.reason, getattr(body, exc.field)) from exc
    except ValueError as exc:
        raise _invalid("shards", str(exc), body.shards) from exc
    config = dict(body.to_config(), folder=folder, shards=shards)
    _validate_with_engine(config)
    record = service.store.create_run_if_room(
        {**config, "timeout_s": body.timeout_s or service.settings.max_run_s},
        max_queued=service.settings.max_queued,
    )
    if record is None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{service.settings.max_queued} runs are already queued; wait or cancel some",
        )
    service.bus.publish({"type": "benchmark", **record.to_dict(with_result=False)})
    service.runner.wake()
    return RunCreated(id=record.id, status="queued")


@router.get("", response_model=RunList)
def list_benchmarks(
    service: Annotated[Service, Depends(get_service)],
    status_: Annotated[Status | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> RunList:
    """Runs, newest first, with each mode's headline figures."""
    records = service.store.list_runs(status=status_, limit=limit, offset=offset)
    return RunList(runs=[_summary(r) for r in records], counts=service.store.count_runs())


@router.get("/{run_id}", response_model=RunOut, responses={404: {}})
def get_benchmark(run_id: RunId, service: Annotated[Service, Depends(get_service)]) -> RunOut:
    """One run: status, progress and, once done, the full bench result."""
    record = service.store.get_run(run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no benchmark run with id {run_id!r}")
    return RunOut(**record.to_dict())


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    dependencies=[Depends(require_token)],
    responses={401: {}, 404: {}, 409: {}},
)
def cancel_benchmark(run_id: RunId, service: Annotated[Service, Depends(get_service)]) -> RunOut:
    """Cancel a run: a queued one at once, a running one as soon as its child stops."""
    record = service.store.get_run(run_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no benchmark run with id {run_id!r}")
    if record.status in FINISHED:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"run {run_id} already ended with status {record.status!r}",
        )
    updated = service.runner.cancel(run_id)
    if updated is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no benchmark run with id {run_id!r}")
    return RunOut(**updated.to_dict())
