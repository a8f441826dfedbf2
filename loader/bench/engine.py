"""The benchmark engine: all modes against the raw limit (docs/architecture.md, "Benchmark").

``run_bench(config)`` runs, for each of ``config.repeat`` rounds, the limit and the modes
interleaved (``L m1 L m2 L ...``), because a shared machine's speed drifts: each mode's
``ratio_to_limit`` is its rate over the mean of the limit runs just before and just after it.
One unrecorded limit run comes first, so that the first recorded one, like the rest, finds
the limit's processes started and their shards mapped.
Per mode the top-level figures are totals over epochs and, over rounds, medians (with
``samples_per_s_min``/``_max`` and a short ``rounds`` list); per-epoch figures (of the median
round) sit under ``"epochs"``. See ``loader.bench.measure`` for how each figure is measured
and ``loader.bench.modes``/``loader.bench.peers`` for what each mode runs.

``run_bench`` calls ``on_event`` from the calling thread and checks ``cancel`` between batches
(and while the limit runs); when it is set, it stops every worker and raises ``BenchCancelled``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import statistics
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

from loader.bench.http_server import serve_http
from loader.bench.limit import MIN_RUN_S, LimitRun, LimitRunner
from loader.bench.measure import (
    NET,
    BenchCancelled,
    combine_rounds,
    measure_epoch,
    summarize_epochs,
)
from loader.bench.modes import DEFAULT_MODES, MODE_NAMES, build_mode
from loader.bench.report import machine_info
from loader.bench.setup import ModeSetup, ModeUnavailable
from loader.dataloader import stop_workers
from loader.jsonsafe import json_safe
from loader.remote.netstats import NetCounters
from loader.sources import resolve_source
from loader.tracker import DuplicateTracker
from shards.format import MANIFEST_NAME

__all__ = ["BenchCancelled", "BenchConfig", "BenchEvent", "run_bench"]

log = logging.getLogger("shardfeed.bench")

BenchEvent = dict[str, Any]

_LIMITS: dict[str, tuple[float, float]] = {
    "workers": (0, 64),
    "batch_size": (1, 65536),
    "epochs": (1, 1000),
    "image_size": (1, 4096),
    "latency_ms": (0, 60000),
    "fault_rate": (0, 0.5),
    "repeat": (1, 100),
    "seed": (0, 2**63 - 1),
}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. ``folder``: the source image folder (``map`` reads it); ``shards``: the
    shard folder, its ``manifest.json``, or a manifest URL (not with ``http``).

    With ``http``: ``fault_rate`` of the requests fail (a 503 or a dropped connection);
    ``cache`` gives each ``tar-aware`` run a fresh node-local shard cache, so epoch 1 fills it
    and later epochs read it (per-epoch figures under ``"epochs"``); ``limit_local`` measures
    the limit on the local shard files (no latency) instead of over HTTP."""

    folder: str | None
    shards: str
    modes: tuple[str, ...] = DEFAULT_MODES
    workers: int = 2
    batch_size: int = 64
    epochs: int = 1
    image_size: int = 224
    latency_ms: float = 0.0
    decode: bool = True
    repeat: int = 1
    http: bool = False
    seed: int = 0
    fault_rate: float = 0.0
    cache: bool = False
    limit_local: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (``expected ..., got name=value``)."""
        for name, (lo, hi) in _LIMITS.items():
            value = getattr(self, name)
            kinds = (int, float) if name in ("latency_ms", "fault_rate") else (int,)
            ok = isinstance(value, kinds) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or not lo <= value <= hi:
                raise ValueError(f"expected {name} between {lo:g} and {hi:g}, got {name}={value!r}")
        if not isinstance(self.modes, tuple | list) or not self.modes:
            raise ValueError(f"expected at least one mode of {', '.join(MODE_NAMES)}, got modes=()")
        for mode in self.modes:
            if mode not in MODE_NAMES:
                raise ValueError(f"expected modes from {', '.join(MODE_NAMES)}, got mode={mode!r}")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"expected each mode once, got modes={','.join(self.modes)}")
        if not isinstance(self.shards, str) or not self.shards:
            raise ValueError(f"expected a shard folder or manifest, got shards={self.shards!r}")
        if self.folder is not None and (not isinstance(self.folder, str) or not self.folder):
            raise ValueError(f"expected a source folder or None, got folder={self.folder!r}")
        for flag in ("decode", "http", "cache", "limit_local"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"expected true or false, got {flag}={getattr(self, flag)!r}")
        for flag in ("cache", "limit_local", "fault_rate"):
            if getattr(self, flag) and not self.http:
                raise ValueError(f"expected http with {flag}, got {flag}={getattr(self, flag)!r}")


class _Progress:
    """Sends events with ``progress`` = planned units done / planned units."""

    def __init__(self, on_event: Callable[[BenchEvent], None] | None, total: int) -> None:
        self.on_event, self.total, self.done = on_event, max(total, 1), 0

    def emit(self, kind: str, mode: str | None, round: int, advance: int = 0, **data: Any) -> None:
        self.done = min(self.done + advance, self.total)
        if self.on_event is not None:
            event: BenchEvent = {"type": kind, "mode": mode, "round": round}
            event.update(progress=self.done / self.total, **data)
            self.on_event(json_safe(event))


def _local_dirs(config: BenchConfig) -> tuple[str | None, str | None]:
    """(shard folder, manifest file name) for a local ``shards``, else (None, None)."""
    if "://" in config.shards and not config.shards.startswith("file://"):
        return None, None
    path = config.shards.removeprefix("file://")
    if os.path.isdir(path):
        return path, MANIFEST_NAME
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    raise FileNotFoundError(f"expected a shard folder or manifest, got shards={config.shards}")


def _setup(config: BenchConfig, stack: ExitStack) -> ModeSetup:
    shards_dir, manifest = _local_dirs(config)
    if config.folder is not None and not os.path.isdir(config.folder):
        raise FileNotFoundError(f"expected a source image folder, got folder={config.folder}")
    shards, folder_url = config.shards, None
    if config.http:
        if shards_dir is None:
            raise ValueError(f"expected a local shard folder to serve, got shards={config.shards}")
        roots = {"shards": shards_dir} | ({"folder": config.folder} if config.folder else {})
        base = stack.enter_context(
            serve_http(roots, fault_rate=config.fault_rate, seed=config.seed)
        )
        shards = f"{base}shards/{manifest}"
        folder_url = f"{base}folder/" if config.folder else None
    return ModeSetup(
        shards=shards,
        source=resolve_source(shards),
        folder=config.folder,
        folder_url=folder_url,
        shards_dir=shards_dir,
        workers=config.workers,
        batch_size=config.batch_size,
        image_size=config.image_size,
        decode=config.decode,
        seed=config.seed,
        latency_ms=float(config.latency_ms),
        http=config.http,
        cache_root=(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="shardfeed-bench-cache-"))
            if config.cache
            else None
        ),
    )


def _run_mode(
    name: str,
    setup: ModeSetup,
    config: BenchConfig,
    progress: _Progress,
    round: int,
    cancel: threading.Event | None,
) -> tuple[list[dict[str, Any]], str]:
    built = build_mode(name, setup)
    tracker = DuplicateTracker(built.num_ids)
    epochs = []
    net = getattr(getattr(built.loader, "dataset", None), "net", None)
    try:
        for epoch in range(config.epochs):
            before = net.totals() if isinstance(net, NetCounters) else None
            figures = measure_epoch(built.loader, tracker, epoch, cancel)
            extra = getattr(built.loader, "epoch_figures", None)
            if callable(extra):
                figures.update(extra())
            if before is not None and isinstance(net, NetCounters):
                after = net.totals()
                figures.update({k: after[k] - before[k] for k in NET})
            epochs.append(figures)
            shown = {k: v for k, v in figures.items() if not k.startswith("_")}
            progress.emit("epoch", name, round, 1, **shown)
    finally:
        stop_workers(built.loader)
        if built.cache_dir is not None:
            shutil.rmtree(built.cache_dir, ignore_errors=True)
    return epochs, built.storage


def _one_line(exc: BaseException) -> str:
    """The error's type, first line and (for a worker's traceback) last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(lines) > 1:
        text += f" ... {lines[-1]}"
    return f"{type(exc).__name__}: {text}"


def _limit_doc(runs: list[LimitRun], processes: int, decode: bool, n: int) -> dict[str, Any]:
    rates = [r.samples_per_s for r in runs]
    return {
        "samples_per_s": statistics.median(rates) if rates else None,
        "samples_per_s_min": min(rates, default=None),
        "samples_per_s_max": max(rates, default=None),
        "mb_per_s": statistics.median([r.mb_per_s for r in runs]) if runs else None,
        "processes": processes,
        "samples": n,
        "min_run_s": MIN_RUN_S,
        "decode": decode,
        "runs": rates,
    }


def run_bench(
    config: BenchConfig,
    on_event: Callable[[BenchEvent], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its JSON document (docs/architecture.md, "Benchmark").

    Raises ``ValueError``/``FileNotFoundError`` for a bad config or missing data before anything
    runs, and ``BenchCancelled`` when ``cancel`` is set. A mode that fails is reported with
    ``status: "failed"`` and its error as ``reason``; the others still run.
    """
    config.validate()
    modes = list(config.modes)
    units = config.repeat * (len(modes) * (config.epochs + 1) + 1)
    progress = _Progress(on_event, units)
    results: dict[str, dict[str, Any]] = {m: {"status": "ok", "reason": None} for m in modes}
    rounds: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    runs: list[LimitRun] = []
    with ExitStack() as stack:
        setup = _setup(config, stack)
        processes = max(config.workers, 1)
        limit_source, limit_latency = setup.source, config.latency_ms / 1000
        if config.limit_local and setup.shards_dir is not None:
            local = os.path.join(setup.shards_dir, _local_dirs(config)[1] or MANIFEST_NAME)
            limit_source, limit_latency = resolve_source(local), 0.0
        limit = stack.enter_context(
            LimitRunner(
                limit_source,
                processes,
                decode=config.decode,
                image_size=config.image_size,
                batch_size=config.batch_size,
                seed=config.seed,
                latency_s=limit_latency,
            )
        )
        progress.emit("start", None, 0, config=asdict(config), modes=modes, rounds=config.repeat)
        warmup = limit.run(cancel)
        progress.emit(
            "log", None, 0, message=f"limit warm-up: {warmup.samples_per_s:.0f} samples/s"
        )

        def measure_limit(round: int) -> float:
            run = limit.run(cancel)
            runs.append(run)
            progress.emit(
                "limit", None, round, 1, samples_per_s=run.samples_per_s, mb_per_s=run.mb_per_s
            )
            return run.samples_per_s

        for r in range(config.repeat):
            before = measure_limit(r)
            for name in modes:
                if results[name]["status"] != "ok":
                    progress.emit("mode_done", name, r, config.epochs + 1, **results[name])
                    continue
                progress.emit("mode_start", name, r)
                try:
                    epochs, storage = _run_mode(name, setup, config, progress, r, cancel)
                except ModeUnavailable as exc:
                    results[name].update(status=exc.status, reason=exc.reason)
                    progress.emit("mode_done", name, r, config.epochs + 1, **results[name])
                    continue
                except BenchCancelled:
                    raise
                except Exception as exc:
                    results[name].update(status="failed", reason=_one_line(exc))
                    log.warning("mode %s failed: %s", name, results[name]["reason"])
                    log.debug("mode %s failed", name, exc_info=True)
                    progress.emit("mode_done", name, r, config.epochs + 1, **results[name])
                    continue
                after = measure_limit(r)
                summary = summarize_epochs(epochs, (before, after))
                rounds[name].append(summary)
                results[name]["storage"] = storage
                before = after
                progress.emit(
                    "mode_done",
                    name,
                    r,
                    0,
                    status="ok",
                    reason=None,
                    samples_per_s=summary["samples_per_s"],
                    ratio_to_limit=summary["ratio_to_limit"],
                    limit_samples_per_s=summary["limit_samples_per_s"],
                    noisy=summary["noisy"],
                )
    for name in modes:
        if results[name]["status"] == "ok" and rounds[name]:
            results[name].update(combine_rounds(rounds[name]))
    doc = json_safe(
        {
            "machine": machine_info(),
            "config": {**asdict(config), "modes": modes},
            "limit": _limit_doc(runs, processes, config.decode, setup.source.num_samples),
            "modes": results,
        }
    )
    progress.emit("done", None, config.repeat - 1, units, result=doc)
    return doc
