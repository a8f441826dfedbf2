"""``shardfeed shard --merge``: the manifest of a finished build, from its plan and reports.

Every shard of the plan must have its report (a finished ``--part``); reports written from
another plan are refused with their parts named (``shards.planfile.check_reports``). The
manifest takes the classes, the scan's skips and the labelling report from the plan, and the
samples, hashes and per-class counts from the reports (docs/architecture.md, "Format").
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from shards.dedup import duplicate_report, hash_folder
from shards.format import MANIFEST_NAME, shard_name
from shards.manifest import Manifest, ShardEntry
from shards.options import BuildError
from shards.planfile import PLAN_FILE, check_reports, read_plan_doc
from shards.verify import inspect_build
from shards.writer import BUILD_DIR, report_path

__all__ = ["merge_build"]

log = logging.getLogger("shardfeed.shard")


def merge_build(
    out: str | os.PathLike[str], against: str | None = None, workers: int = 1
) -> dict[str, Any]:
    """Write ``manifest.json`` from the plan and every shard's report; returns the summary
    (``inspect_build`` without ``build`` and ``class_counts``).

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
    samples = [s for r in reports for s in r["samples"]]
    counts = Counter(label for _key, _rel, label, _sha in samples)
    manifest = Manifest(
        shards=entries,
        classes=plan["classes"],
        name=Path(plan["source"]).name,
        skipped=skipped,
        empty_classes=plan["empty_classes"],
        duplicates=duplicate_report(samples, plan["classes"], other, against),
        build={**plan["config"], "fingerprint": plan["fingerprint"], "source": plan["source"]},
        class_counts=[counts[i] for i in range(len(plan["classes"]))],
        labels=plan.get("labels") or {},
    )
    manifest.save(dest / MANIFEST_NAME)
    summary = inspect_build(dest)
    del summary["build"], summary["class_counts"]
    return summary
