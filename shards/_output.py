"""The output folder of a build: checked before anything is written, claimed by its plan,
and which of its shards are complete (docs/architecture.md, "Builds").

A folder holds one build: it is empty, or holds ``.build/`` with the plan of this input and
these options. A shard counts as complete only when its report names the plan in force and
the shard matches the report (``shards.writer.shard_matches_report``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from shards.format import index_name, shard_name
from shards.options import BuildError, BuildOptions
from shards.planfile import PLAN_FILE, SavedPlan, read_plan_doc, write_plan
from shards.writer import BUILD_DIR, report_path, shard_matches_report

__all__ = ["check_paths", "claim_output", "is_complete", "remove_temporaries", "stored_plan"]

log = logging.getLogger("shardfeed.shard")


def check_paths(src: Path, out: Path, options: BuildOptions) -> tuple[Path, Path]:
    """Check the options, SRC, OUT and the files the options name; create ``OUT/.build``.
    Returns the resolved (SRC, OUT). Raises before any shard is written."""
    options.check()
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


def claim_output(dest: Path, plan_doc: dict[str, Any], options: BuildOptions) -> str:
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


def stored_plan(out: Path) -> SavedPlan | None:
    path = out / BUILD_DIR / PLAN_FILE
    return SavedPlan.load(path) if path.is_file() else None


def is_complete(dest: Path, index: int, plan_hash: str) -> bool:
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


def remove_temporaries(dest: Path, index: int) -> None:
    """Remove what a killed writer of shard ``index`` left: temporary files and its report."""
    name = shard_name(index)
    for folder in (dest, dest / BUILD_DIR):
        for prefix in (f".{name}.", f".{index_name(name)}."):
            for p in folder.glob(f"{prefix}*.tmp"):
                p.unlink(missing_ok=True)
    report_path(dest, index).unlink(missing_ok=True)
