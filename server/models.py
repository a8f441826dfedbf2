"""Request and response bodies of the HTTP API (pydantic), with their hard limits.

The bounds here are the widest the service ever accepts; a service's own, tighter limits
(``Settings.max_workers``, ``max_epochs``, ``max_repeat``, ``max_run_s`` and the buffer bound
``max_buffer_bytes``) are checked by the routes with the same 422 shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from loader.bench.modes import DECODES, DEFAULT_MODES, MODE_NAMES
from loader.mix.report import MAX_SOURCES, SOURCE_NAME_PATTERN
from server.runs import RunStatus

__all__ = [
    "JOB_PATTERN",
    "BenchmarkRequest",
    "Coverage",
    "RunCreated",
    "RunList",
    "RunOut",
    "RunSummary",
    "SourceCountsIn",
    "StatsAccepted",
    "StatsReport",
]

JOB_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
MAX_COUNT = 2**62


def _known_mode(value: str) -> str:
    if value not in MODE_NAMES:
        raise ValueError(f"expected a mode of {', '.join(MODE_NAMES)}, got mode={value!r}")
    return value


Mode = Annotated[
    str, AfterValidator(_known_mode), WithJsonSchema({"type": "string", "enum": list(MODE_NAMES)})
]
Status = RunStatus
PathText = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
TrackerKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Seconds = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]
LOADING_FIELDS = (
    "window_s",
    "window_steps",
    "window_blocked_s",
    "blocked_p50_s",
    "blocked_p95_s",
    "blocked_p99_s",
    "queue_depth",
)


class BenchmarkRequest(BaseModel):
    """The options of ``shardfeed bench``, by their flag names in snake case."""

    model_config = ConfigDict(extra="forbid")

    folder: PathText | None = Field(
        default=None, description="source image folder (map mode), under a data root"
    )
    shards: PathText = Field(description="shard folder with manifest.json, under a data root")
    modes: list[Mode] = Field(
        default_factory=lambda: list(DEFAULT_MODES), min_length=1, max_length=len(MODE_NAMES)
    )
    workers: int = Field(default=2, ge=0, le=64, description="DataLoader workers")
    batch_size: int = Field(default=64, ge=1, le=4096)
    epochs: int = Field(default=1, ge=1, le=1000)
    image_size: int = Field(default=224, ge=8, le=2048)
    latency_ms: float = Field(
        default=0.0, ge=0, le=10_000, allow_inf_nan=False, description="simulated per-open latency"
    )
    decode: Literal["opencv", "none"] = Field(
        default="opencv",
        description="as shardfeed bench --decode: opencv decodes, none reads bytes only "
        "(true and false are still taken for opencv and none)",
    )
    repeat: int = Field(default=1, ge=1, le=100, description="rounds; figures are medians")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    timeout_s: int | None = Field(
        default=None,
        ge=1,
        le=7 * 86400,
        description="deadline: the run is stopped and failed after this many seconds "
        "(default: the service's max_run_s)",
    )

    @field_validator("decode", mode="before")
    @classmethod
    def _decode_value(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return DECODES[0] if value else "none"
        if value not in DECODES:
            hint = (
                "; the bench decodes on the CPU, device decode is compared by "
                "python -m loader.bench.decodecompare"
                if value == "device"
                else ""
            )
            raise ValueError(
                f"expected decode {' or '.join(DECODES)} (as shardfeed bench --decode), "
                f"got decode={value!r}{hint}"
            )
        return value

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"expected each mode once, got modes={value}")
        return value

    def to_config(self) -> dict[str, Any]:
        """Keyword arguments for ``loader.bench.BenchConfig`` (``timeout_s`` is the runner's,
        not the engine's, and is left out)."""
        doc = self.model_dump(exclude={"timeout_s"})
        doc["modes"] = list(self.modes)
        doc["decode"] = self.decode != "none"
        return doc


class RunCreated(BaseModel):
    id: str
    status: Status


class _RunBase(BaseModel):
    id: str
    status: Status
    progress: float
    error: str | None
    config: dict[str, Any]
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    last_event: dict[str, Any] | None


class RunOut(_RunBase):
    """A benchmark run; ``result`` is the bench JSON once the run is done, else null."""

    result: dict[str, Any] | None


class RunSummary(_RunBase):
    """A run in a listing: no full result, but the headline figures of each mode."""

    modes: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RunList(BaseModel):
    runs: list[RunSummary]
    counts: dict[str, int]


class Coverage(BaseModel):
    """The ids one process delivered in its current epoch (``server.coverage``)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=0, le=2**31)
    num_samples: int = Field(ge=0, le=2**40)
    delivered: Count
    padded: Count = 0
    seen: str = Field(
        max_length=64 << 20,
        description="base64 of the zlib-compressed bitmap of ids delivered (numpy packbits)",
    )


class EvalEntry(BaseModel):
    """One epoch's validation result as ``loader.train`` sends it (``StatsReporter.record_eval``):
    an exact top-1 over ``samples`` samples."""

    model_config = ConfigDict(extra="ignore")

    epoch: int = Field(ge=0, le=2**31)
    top1: float = Field(ge=0, le=1, allow_inf_nan=False)
    samples: Count


SourceName = Annotated[str, StringConstraints(pattern=SOURCE_NAME_PATTERN)]


class SourceCountsIn(BaseModel):
    """One source's counts in a mix's current epoch (``loader.mix.MixTracker``): delivered
    rows, and where the process knows them, its quota and the unique ids, duplicates and
    missing samples against the plan."""

    model_config = ConfigDict(extra="ignore")

    quota: Count | None = None
    delivered: Count
    unique: Count | None = None
    duplicates: Count | None = None
    missing: Count | None = None
    padded: Count = 0

    @model_validator(mode="after")
    def _unique_within_delivered(self) -> SourceCountsIn:
        if self.unique is not None and self.unique > self.delivered:
            raise ValueError(
                f"expected unique <= delivered, got unique={self.unique} delivered={self.delivered}"
            )
        return self

    def counts(self) -> dict[str, int]:
        """The counts that were sent (None left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class StatsReport(BaseModel):
    """One rank's cumulative counters, as ``loader.StatsReporter`` sends them."""

    model_config = ConfigDict(extra="ignore")

    reporter: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.\-]{0,64}$",
        description="the reporting process's id: two processes claiming one rank are two rows",
    )
    rank: int = Field(default=0, ge=0, le=1_000_000)
    samples: Count
    bytes: Count = 0
    blocked_s: float = Field(default=0.0, ge=0, le=1e12, allow_inf_nan=False)
    elapsed_s: float | None = Field(default=None, ge=0, le=1e12, allow_inf_nan=False)
    epoch: int | None = Field(default=None, ge=0, le=2**31)
    tracker: dict[TrackerKey, Count] = Field(default_factory=dict, max_length=32)
    failed_sends: Count = 0
    resumed_at_step: int | None = Field(default=None, ge=0, le=2**62)
    window_s: Seconds | None = Field(default=None, description="span of the loading window")
    window_steps: Count | None = None
    window_blocked_s: Seconds | None = Field(
        default=None, description="time blocked on data within the window (exposed loading)"
    )
    blocked_p50_s: Seconds | None = None
    blocked_p95_s: Seconds | None = None
    blocked_p99_s: Seconds | None = None
    queue_depth: Count | None = Field(default=None, description="batches ready when asked")
    coverage: Coverage | None = None
    decode: dict[TrackerKey, Count] = Field(
        default_factory=dict,
        max_length=16,
        description="device decode: rows by where they were decoded so far (device, or the "
        "reason they went to the CPU)",
    )
    evals: list[EvalEntry] = Field(
        default_factory=list, max_length=100, description="validation top-1 per epoch"
    )
    sources: dict[SourceName, SourceCountsIn] = Field(
        default_factory=dict,
        max_length=MAX_SOURCES,
        description="a mix: each source's counts in the current epoch, by source name",
    )
    sources_scope: Literal["rank", "merged"] = Field(
        default="rank",
        description="whether ``sources`` are this process's own counts or over every rank",
    )

    def loading(self) -> dict[str, float | int | None]:
        """The recent-window loading figures that were sent (see ``server.ranks``)."""
        return {k: v for k in LOADING_FIELDS if (v := getattr(self, k)) is not None}


class StatsAccepted(BaseModel):
    job: str
    rank: int
    samples_per_s: float
