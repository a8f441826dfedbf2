"""``shardfeed shard``: scan, plan, write shards in parallel, merge into ``manifest.json``.

Invariants:
- The plan (which file goes to which shard, and its key) depends only on the scan (the source
  listing, and the labels file and class list when given) and the options that change bytes
  (seed, sizing, verify, re-encode), never on ``workers`` or ``part``; it is stored whole, with
  its hash, in ``OUT/.build/plan.json`` (``shards.planfile``), and a part build that finds it
  there uses it instead of listing the source again.
- Every shard report names the plan it was written from; ``--merge`` refuses shards of
  another plan and names their parts.
- Each shard is written by one process (``shards._pool``); parallel writers share nothing but
  the output folder.
- A shard is complete once its report exists (see ``shards.writer``); ``--resume`` keeps complete
  shards and rewrites the rest, which gives the same bytes as an uninterrupted build.
- ``--strict`` stops a build whose labelling left an image or a labels-file row out before any
  shard is written, on the part that plans and on every part that reads the plan.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from shards._output import check_paths, claim_output, is_complete, remove_temporaries, stored_plan
from shards._pool import run_jobs
from shards._progress import Progress
from shards.labelreport import check_strict, problems
from shards.merge import merge_build
from shards.options import BuildError, BuildOptions
from shards.plan import plan_shards
from shards.planfile import PLAN_FILE, check_config, check_sources, plan_doc
from shards.source import scan_source
from shards.writer import BUILD_DIR, ShardJob, WriteOptions

__all__ = ["BuildError", "BuildOptions", "build_shards", "merge_build"]

log = logging.getLogger("shardfeed.shard")


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
        saved = stored_plan(Path(out))
    if src is None:
        if saved is None:
            raise BuildError(
                f"expected SRC OUT: {out} holds no build plan to take the source from; "
                "run 'shardfeed shard SRC OUT --plan-only' first"
            )
        src = str(saved.doc["source"])
    root, dest = check_paths(Path(src), Path(out), options)
    if saved is not None:
        check_config(saved.doc, options.byte_config())
        candidates, plan, doc = saved.candidates, saved.plan, saved.doc
        if options.strict:
            check_strict(doc.get("labels"))
        plan_hash = saved.hash
    else:
        scan = scan_source(root, options.labels, options.classes_from)
        labels = scan.labels.to_dict() if scan.labels is not None else None
        if options.strict:
            check_strict(labels)
        for line in problems(labels):
            log.warning("labelling left out %s", line)
        plan = plan_shards(scan.candidates, options.seed, options.sizing)
        candidates = scan.candidates
        doc = plan_doc(scan, plan, options.byte_config(), root)
        plan_hash = claim_output(dest, doc, options)
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
        if options.resume and is_complete(dest, i, plan_hash):
            kept += 1
            continue
        positions = plan.positions(i)
        items = [(p, candidates[int(c)]) for p, c in zip(positions, members, strict=True)]
        jobs.append(ShardJob(i, items, total, doc["classes"], stamp))
    if saved is not None:
        for job in jobs:
            check_sources(root, job.items)
    for job in jobs:
        remove_temporaries(dest, job.index)
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
        run_jobs(root, dest, jobs, wopts, options.workers, progress.update)
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
