"""``shardfeed shard``: scan, plan, write shards in parallel, merge into ``manifest.json``.

Invariants:
- The plan (which file goes to which shard, and its key) depends only on the scan and the
  options that change bytes (seed, sizing, verify, re-encode), never on ``workers`` or
  ``part``; it is stored whole, with its hash, in ``OUT/.build/plan.json`` (``shards.planfile``),
  and a part build that finds it there uses it instead of listing the source again.
- Every shard report names the plan it was written from; ``--merge`` refuses shards of
  another plan and names their parts.
- Each shard is written by one process; parallel writers share nothing but the output folder.
- A shard is complete once its report exists (see ``shards.writer``); ``--resume`` keeps complete
  shards and rewrites the rest, which gives the same bytes as an uninterrupted build.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shards._progress import Progress
from shards.dedup import duplicate_report, hash_folder
from shards.format import MANIFEST_NAME, index_name, shard_name
from shards.manifest import Manifest, ShardEntry
from shards.plan import SizingOptions, plan_shards
from shards.planfile import (
    PLAN_FILE,
    SavedPlan,
    check_config,
    check_reports,
    check_sources,
    plan_doc,
    read_plan_doc,
    write_plan,
)
from shards.scan import scan_folder
from shards.validate import VERIFY_LEVELS
from shards.verify import inspect_build
from shards.writer import (
    BUILD_DIR,
    ShardJob,
    WriteOptions,
    report_path,
    shard_matches_report,
    write_shard,
)

__all__ = ["BuildError", "BuildOptions", "build_shards", "merge_build"]

log = logging.getLogger("shardfeed.shard")


class BuildError(ValueError):
    """A build that cannot go on as asked; the message says what to do."""


@dataclass(frozen=True)
class BuildOptions:
    sizing: SizingOptions = field(default_factory=lambda: SizingOptions(max_bytes=256 << 20))
    seed: int = 0
    workers: int = 1
    verify: str = "decode"
    resize_max_side: int | None = None
    quality: int = 90
    part: tuple[int, int] | None = None
    resume: bool = False
    against: str | None = None
    show_progress: bool = True
    plan_only: bool = False

    def byte_config(self) -> dict[str, Any]:
        """The options that decide the shards' bytes (not workers, part or resume)."""
        return {
            "seed": self.seed,
            "sizing": asdict(self.sizing),
            "verify": self.verify,
            "resize_max_side": self.resize_max_side,
            "quality": self.quality if self.resize_max_side else None,
        }


def build_shards(
    src: str | os.PathLike[str] | None, out: str | os.PathLike[str], options: BuildOptions
) -> dict[str, Any]:
    """Build the shards of ``src`` (or of one ``--part``) into ``out``; returns the summary.

    Without ``part`` the build ends by writing the manifest (``merge_build``). With
    ``plan_only`` it lists, plans and saves the plan, and writes no shard. A ``part`` build of a
    folder that already holds a plan uses that plan without listing the source (``src`` may then
    be None: the plan names it) and stops with ``SourceChanged`` when a file of the part is gone
    or changed size since planning.
    """
    started = time.monotonic()
    saved = None
    if options.part is not None and not options.plan_only:
        saved = _stored_plan(Path(out))
    if src is None:
        if saved is None:
            raise BuildError(
                f"expected SRC OUT: {out} holds no build plan to take the source from; "
                "run 'shardfeed shard SRC OUT --plan-only' first"
            )
        src = str(saved.doc["source"])
    root, dest = _check_paths(Path(src), Path(out), options)
    if saved is not None:
        check_config(saved.doc, options.byte_config())
        candidates, plan, doc = saved.candidates, saved.plan, saved.doc
        plan_hash = saved.hash
    else:
        scan = scan_folder(root)
        plan = plan_shards(scan.candidates, options.seed, options.sizing)
        candidates = scan.candidates
        doc = plan_doc(scan, plan, options.byte_config(), root)
        plan_hash = _claim_output(dest, doc, options)
    if options.plan_only:
        return {
            "out": str(dest),
            "plan": str(dest / BUILD_DIR / PLAN_FILE),
            "plan_hash": plan_hash,
            "shards": len(plan.shards),
            "candidates": len(candidates),
            "skipped": len(doc["scan_skipped"]),
            "elapsed_s": round(time.monotonic() - started, 3),
        }
    part, parts = options.part or (1, 1)
    stamp = {"plan": plan_hash, "part": f"{part}/{parts}" if options.part else ""}
    total = len(candidates)
    jobs = []
    kept = 0
    for i, members in enumerate(plan.shards):
        if i % parts != part - 1:
            continue
        if options.resume and _is_complete(dest, i, plan_hash):
            kept += 1
            continue
        positions = plan.positions(i)
        items = [(p, candidates[int(c)]) for p, c in zip(positions, members, strict=True)]
        jobs.append(ShardJob(i, items, total, doc["classes"], stamp))
    if saved is not None:
        for job in jobs:
            check_sources(root, job.items)
    for job in jobs:
        _remove_temporaries(dest, job.index)
    log.info(
        "%d image files in %d classes -> %d shards; writing %d%s%s",
        total,
        len(doc["classes"]),
        len(plan.shards),
        len(jobs),
        f" (kept {kept} complete from an earlier run)" if kept else "",
        f" of part {part}/{parts}, plan {plan_hash[:12]}" if options.part else "",
    )
    todo = sum(len(j.items) for j in jobs)
    wopts = WriteOptions(options.verify, options.resize_max_side, options.quality)
    with Progress(todo, "shard", enabled=options.show_progress) as progress:
        _run_jobs(root, dest, jobs, wopts, options.workers, progress.update)
        written_bytes = progress.bytes
    elapsed = time.monotonic() - started
    summary: dict[str, Any] = {
        "out": str(dest),
        "shards_written": len(jobs),
        "shards_kept": kept,
        "images_read": todo,
        "bytes_read": written_bytes,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(todo / elapsed, 1) if elapsed else None,
        "mb_per_s": round(written_bytes / elapsed / 1e6, 2) if elapsed else None,
    }
    if options.part is None:
        summary.update(merge_build(dest, against=options.against, workers=options.workers))
    else:
        summary["part"] = f"{part}/{parts}"
        summary["plan_hash"] = plan_hash
    return summary


def merge_build(
    out: str | os.PathLike[str], against: str | None = None, workers: int = 1
) -> dict[str, Any]:
    """Write ``manifest.json`` from the plan and every shard's report; returns the summary.

    Raises ``BuildError`` listing the shards whose part builds have not finished.
    """
    dest = Path(out)
    plan_file = dest / BUILD_DIR / PLAN_FILE
    if not plan_file.is_file():
        raise FileNotFoundError(
            f"{dest} holds no build plan ({plan_file}): run 'shardfeed shard' first"
        )
    plan = read_plan_doc(plan_file)
    reports = []
    missing = []
    for i in range(plan["num_shards"]):
        path = report_path(dest, i)
        if path.is_file():
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            missing.append(shard_name(i))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise BuildError(
            f"cannot merge {dest}: {len(missing)} shard(s) not built yet ({shown}); "
            "run the remaining --part builds first"
        )
    check_reports(dest, plan["plan_hash"], reports)
    first = 0
    entries = []
    for r in reports:
        entries.append(
            ShardEntry(
                r["url"],
                r["nsamples"],
                r["filesize"],
                r["sha256"],
                first,
                r["index_url"],
                r["index_sha256"],
            )
        )
        first += r["nsamples"]
    skipped = list(plan["scan_skipped"]) + [s for r in reports for s in r["skipped"]]
    skipped.sort(key=lambda s: s["path"])
    other = None
    if against is not None:
        log.info("hashing %s to find images that also occur there", against)
        other = hash_folder(against, workers=max(4, workers))
    samples = (s for r in reports for s in r["samples"])
    duplicates = duplicate_report(samples, plan["classes"], other, against)
    manifest = Manifest(
        shards=entries,
        classes=plan["classes"],
        name=Path(plan["source"]).name,
        skipped=skipped,
        empty_classes=plan["empty_classes"],
        duplicates=duplicates,
        build={**plan["config"], "fingerprint": plan["fingerprint"], "source": plan["source"]},
    )
    manifest.save(dest / MANIFEST_NAME)
    summary = inspect_build(dest)
    del summary["build"]
    return summary


def _check_paths(src: Path, out: Path, options: BuildOptions) -> tuple[Path, Path]:
    if options.verify not in VERIFY_LEVELS:
        raise ValueError(
            f"expected --verify one of {', '.join(VERIFY_LEVELS)}, got --verify={options.verify!r}"
        )
    if options.workers < 1:
        raise ValueError(f"expected --workers >= 1, got --workers={options.workers}")
    if options.resize_max_side is not None and options.resize_max_side < 1:
        raise ValueError(
            f"expected --resize-max-side >= 1, got --resize-max-side={options.resize_max_side}"
        )
    if not 1 <= options.quality <= 100:
        raise ValueError(f"expected --quality between 1 and 100, got --quality={options.quality}")
    if not src.exists():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise NotADirectoryError(f"source {src} is not a folder")
    root = src.resolve()
    dest = out.resolve()
    if dest == root or dest.is_relative_to(root):
        raise ValueError(f"output {out} is inside the source {src}: choose a folder outside it")
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder")
    if options.against is not None and not Path(options.against).is_dir():
        raise FileNotFoundError(
            f"--against folder {options.against} does not exist or is not a folder"
        )
    if dest.is_dir() and not (dest / BUILD_DIR).is_dir():
        others = sorted(p.name for p in dest.iterdir())
        if others:
            raise BuildError(
                f"output {dest} is not empty (holds {others[0]!r}): choose an empty folder"
            )
    try:
        (dest / BUILD_DIR).mkdir(parents=True, exist_ok=True)
        probe = dest / BUILD_DIR / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to output {out}: {exc.strerror}") from None
    return root, dest


def _claim_output(dest: Path, plan_doc: dict[str, Any], options: BuildOptions) -> str:
    """Save the plan in ``dest`` unless it holds the same one; returns the plan hash in force."""
    plan_file = dest / BUILD_DIR / PLAN_FILE
    if plan_file.is_file():
        old = read_plan_doc(plan_file)
        if (
            old.get("fingerprint") != plan_doc["fingerprint"]
            or old.get("config") != plan_doc["config"]
        ):
            raise BuildError(
                f"{dest} holds a build of other input or options; "
                "use an empty output folder (or the original source and options)"
            )
        if not options.resume and options.part is None and not options.plan_only:
            raise BuildError(f"{dest} already holds this build: pass --resume to finish it")
        return str(old["plan_hash"])
    others = [p.name for p in dest.iterdir() if p.name != BUILD_DIR]
    if others:
        raise BuildError(
            f"output {dest} is not empty (holds {others[0]!r}): choose an empty folder"
        )
    write_plan(plan_file, plan_doc)
    return str(plan_doc["plan_hash"])


def _stored_plan(out: Path) -> SavedPlan | None:
    path = out / BUILD_DIR / PLAN_FILE
    return SavedPlan.load(path) if path.is_file() else None


def _is_complete(dest: Path, index: int, plan_hash: str) -> bool:
    """Shard ``index`` is whole (``shard_matches_report``) and was written from the plan
    ``plan_hash``."""
    path = report_path(dest, index)
    if not path.is_file():
        return False
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("plan") != plan_hash:
            return False
    except (OSError, ValueError):
        return False
    if shard_matches_report(dest, index):
        return True
    log.warning("%s does not match its build report; writing it again", dest / shard_name(index))
    return False


def _remove_temporaries(dest: Path, index: int) -> None:
    name = shard_name(index)
    for folder in (dest, dest / BUILD_DIR):
        for prefix in (f".{name}.", f".{index_name(name)}."):
            for p in folder.glob(f"{prefix}*.tmp"):
                p.unlink(missing_ok=True)
    report_path(dest, index).unlink(missing_ok=True)


def _run_jobs(
    root: Path,
    dest: Path,
    jobs: list[ShardJob],
    options: WriteOptions,
    workers: int,
    progress: Callable[[int, int], None],
) -> None:
    """Write ``jobs``, in ``workers`` processes when more than one. The first failure stops
    the build: shards not started yet are cancelled (a full disk fails them all anyway) and
    its error is raised once the shards already going have ended."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            write_shard(root, dest, job, options, progress)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with (
        ctx.Manager() as manager,
        ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool,
    ):
        events = manager.Queue()
        stop = manager.Event()
        pending: set[Future[None]] = {
            pool.submit(_write_in_worker, root, dest, job, options, events, stop) for job in jobs
        }
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            _drain(events, progress)
            for fut in done:
                if fut.exception() is not None:
                    stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    fut.result()
        _drain(events, progress)


def _write_in_worker(
    root: Path, dest: Path, job: ShardJob, options: WriteOptions, events: Any, stop: Any
) -> None:
    """One job in a pool worker; a job handed over after ``stop`` was set writes nothing
    (the pool queues a few jobs ahead, past the reach of ``cancel_futures``)."""
    if stop.is_set():
        return
    pending = [0, 0, time.monotonic()]

    def report(items: int, nbytes: int) -> None:
        pending[0] += items
        pending[1] += nbytes
        if time.monotonic() - pending[2] > 0.2:
            events.put((pending[0], pending[1]))
            pending[:] = [0, 0, time.monotonic()]

    write_shard(root, dest, job, options, report)
    events.put((pending[0], pending[1]))


def _drain(events: Any, progress: Callable[[int, int], None]) -> None:
    while True:
        try:
            items, nbytes = events.get_nowait()
        except queue.Empty:
            return
        progress(items, nbytes)
