"""``shardfeed shard SRC OUT --ray [ADDRESS]``: plan once, build the parts as Ray tasks, merge.

Invariants:
- The driver lists and plans once (``--plan-only``) into ``OUT``; every task is one
  ``--part I/K`` build from that plan, so no task lists the source. ``SRC`` and ``OUT`` must be
  at the same paths on every node (a shared file system), as for any multi-machine build.
- A task whose process dies (node lost, killed for memory) is run again, up to ``retries``
  times. A part is deterministic and every file it writes appears by rename, so a rerun gives
  the same bytes; it keeps the shards the dead attempt finished (``resume``, checked against the
  plan hash) and rewrites the rest.
- Errors a user has to fix (a source changed since planning, bad options) are not retried:
  the first one stops the build, cancels the other tasks and reaches the caller as raised.
- Progress is counted by the driver from the shard reports appearing in ``OUT/.build``, so it
  covers every part wherever it runs.
See docs/architecture.md, section "Builds".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards._progress import Progress
from shards.build import build_shards
from shards.merge import merge_build
from shards.options import BuildError, BuildOptions
from shards.planfile import PLAN_FILE, SavedPlan
from shards.writer import BUILD_DIR, report_path

if TYPE_CHECKING:
    from ray import ObjectRef

__all__ = ["build_on_ray"]

log = logging.getLogger("shardfeed.ray")

AttemptHook = Callable[[tuple[int, int]], None]


def _build_part(
    src: str, out: str, options: BuildOptions, on_attempt: AttemptHook | None
) -> dict[str, Any]:
    """One Ray task: one part of the plan in ``out``."""
    assert options.part is not None
    if on_attempt is not None:
        on_attempt(options.part)
    return build_shards(src, out, options)


def build_on_ray(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: BuildOptions,
    *,
    address: str | None = None,
    parts: int | None = None,
    retries: int = 3,
    poll_s: float = 1.0,
    on_attempt: AttemptHook | None = None,
) -> dict[str, Any]:
    """Build ``src`` into ``out`` as ``parts`` Ray tasks; returns the merged summary.

    Connects to the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``), starts a local
    one when None, or uses the Ray already initialised in this process. ``parts`` defaults to
    the cluster's CPUs divided by ``options.workers`` (each task asks for ``workers`` CPUs),
    at most the number of shards. ``on_attempt(part)`` runs in the task before each attempt
    builds (tests kill an attempt from it).
    """
    try:
        import ray
    except ImportError:
        raise BuildError(
            "expected Ray for --ray, got no module named 'ray': pip install 'shardfeed[ray]'"
        ) from None
    if retries < 0:
        raise ValueError(f"expected retries >= 0, got retries={retries}")
    if parts is not None and parts < 1:
        raise ValueError(f"expected --ray-parts >= 1, got --ray-parts={parts}")
    started = time.monotonic()
    plan_options = dataclasses.replace(options, plan_only=True, part=None, resume=False)
    planned = build_shards(src, out, plan_options)
    dest = Path(planned["out"])
    plan = SavedPlan.load(dest / BUILD_DIR / PLAN_FILE)
    own = not ray.is_initialized()
    if own:
        ray.init(address=address or None, include_dashboard=False)
    try:
        if parts is None:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            parts = max(1, cpus // options.workers)
        parts = min(parts, len(plan.plan.shards))
        task = ray.remote(_build_part).options(
            num_cpus=options.workers, max_retries=retries, retry_exceptions=False
        )
        pending: dict[ObjectRef[dict[str, Any]], int] = {}
        for i in range(1, parts + 1):
            part_options = dataclasses.replace(
                options, part=(i, parts), resume=True, show_progress=False, plan_only=False
            )
            pending[task.remote(str(src), str(dest), part_options, on_attempt)] = i
        log.info(
            "plan %s: %d shards in %d Ray tasks (retries %d)",
            plan.hash[:12],
            len(plan.plan.shards),
            parts,
            retries,
        )
        _wait(ray, pending, dest, plan, parts, options.show_progress, poll_s)
    finally:
        if own:
            ray.shutdown()
    summary = merge_build(dest, against=options.against, workers=options.workers)
    summary.update(plan_hash=plan.hash, parts=parts, elapsed_s=round(time.monotonic() - started, 3))
    return summary


def _wait(
    ray: Any,
    pending: dict[ObjectRef[dict[str, Any]], int],
    dest: Path,
    plan: SavedPlan,
    parts: int,
    show: bool,
    poll_s: float,
) -> None:
    """Wait for every task, showing shards done across all parts; the first error stops all."""
    sizes = [len(s) for s in plan.plan.shards]
    counted = [False] * len(sizes)
    with Progress(sum(sizes), "ray shard", enabled=show) as progress:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            for ref in done:
                part = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:
                    for other in pending:
                        ray.cancel(other, force=True)
                    raise _user_error(exc, part, parts) from None
                log.info(
                    "part %d/%d done: %d shards written, %d kept",
                    part,
                    parts,
                    result["shards_written"],
                    result["shards_kept"],
                )
            for i, seen in enumerate(counted):
                path = report_path(dest, i)
                if not seen and path.is_file():
                    counted[i] = True
                    progress.update(sizes[i], _filesize(path))


def _filesize(report: Path) -> int:
    try:
        return int(json.loads(report.read_text(encoding="utf-8"))["filesize"])
    except (OSError, ValueError, KeyError):
        return 0


def _user_error(exc: Exception, part: int, parts: int) -> Exception:
    """The task's own error when it is one a user fixes (one line), else a ``BuildError``."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ValueError | FileNotFoundError | PermissionError):
        return cause
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return BuildError(f"part {part}/{parts} failed on Ray after its retries: {first}")
